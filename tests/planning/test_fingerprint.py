"""`fingerprint()`: what `segcli plan` measures on a dataset before deciding anything."""

from __future__ import annotations

from segcli.planning.fingerprint import fingerprint
from tests.planning.test_plan_command import make_kind


def test_split_names_are_not_groups_of_files(tmp_path, monkeypatch):
    """Files named train_0.. and val_0.. are not two sequences: k-fold needs no --fold-groups for them."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    fp = fingerprint(make_kind(tmp_path / "data", "void"), workers=1)
    assert fp.groups is None
    assert fp.values == [0, 1, 2, 3, 4] and fp.masks_with(4) == 8  # the void row, in every training mask


def test_sequence_prefixes_are_groups(camvid_mini, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert fingerprint(camvid_mini, workers=1).groups == ("^[^_]+", 3)  # 0001TP, 0006R0, 0016E5
