"""segcli's files: atomic writes (permissions, failures), the background writer, safe and versioned reading."""

from __future__ import annotations

import collections
import os
import pickle
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from segcli.artifacts.checkpoints import read_checkpoint
from segcli.errors import CheckpointError, StorageError
from segcli.files import BackgroundWriter, atomic_write, save_torch, write_text
from tests.inference.support import TINY_CLASSES, make_checkpoint
from tests.support import fill_the_disk


def test_files_get_the_permissions_of_the_umask(tmp_path):
    """Colleagues on shared storage can read checkpoints: 0666 minus the umask, not mkstemp's 0600."""
    probe = (
        "import os, sys, pathlib, torch\n"
        "os.umask(0o022)\n"
        "from segcli.files import save_torch, write_text\n"
        "folder = pathlib.Path(sys.argv[1])\n"
        "write_text(folder / 'a.txt', 'x')\n"
        "save_torch({'x': torch.ones(1)}, folder / 'b.pth')\n"
    )
    subprocess.run([sys.executable, "-c", probe, str(tmp_path)], check=True)
    for name in ("a.txt", "b.pth"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name


def test_background_writer_keeps_one_write_per_file_and_the_newest(tmp_path):
    writer = BackgroundWriter()
    gate, written = threading.Event(), []

    def slow(value: int):
        def job() -> None:
            gate.wait(5)
            written.append(value)
            write_text(tmp_path / "file.txt", str(value))

        return job

    writer.submit(tmp_path / "file.txt", slow(1))  # starts and blocks on the gate
    time.sleep(0.1)
    for value in (2, 3, 4):  # queued behind it: each replaces the one before
        writer.submit(tmp_path / "file.txt", slow(value))
    gate.set()
    writer.wait()
    assert written == [1, 4] and (tmp_path / "file.txt").read_text() == "4"
    writer.close()


def test_a_failed_background_write_surfaces_as_the_same_error(tmp_path):
    writer = BackgroundWriter()

    def full() -> None:
        raise StorageError("disk full while writing x; the previous file is intact")

    writer.submit(tmp_path / "x", full)
    with pytest.raises(StorageError, match="disk full"):
        writer.wait()
    writer.close()


def test_a_checkpoint_of_another_format_version_is_refused_with_the_fix(tmp_path):
    """Files of the development format 1 (flat metadata, 0-based epoch) are named as such, not misread."""
    current = torch.load(make_checkpoint(tmp_path / "v2.pth"), weights_only=True)
    model = current["model"]
    old = {"format": "segcli-checkpoint", "format_version": 1, "kind": "best", "state_dict": current["state_dict"],
           **{key: model[key] for key in ("arch", "encoder_name", "in_channels", "classes", "class_names",
                                          "ignore_index", "size_multiple")},
           "model_params": {}, "normalization": {"mean": model["normalization"]["mean"],
                                                 "std": model["normalization"]["std"]},
           "epoch": 2, "metrics": {"val/mIoU": 0.5}, "run_name": "old",
           "experiment": current["experiment"]}  # fmt: skip
    torch.save(old, tmp_path / "v1.pth")
    with pytest.raises(CheckpointError, match="format version 1, .* reads version 2: train the model again"):
        read_checkpoint(tmp_path / "v1.pth")
    assert read_checkpoint(tmp_path / "v2.pth").info.class_names == TINY_CLASSES


def test_the_training_state_is_named_when_passed_as_a_model(tmp_path):
    torch.save({"hyper_parameters": {"experiment": {}}, "state_dict": {}}, tmp_path / "state_latest.ckpt")
    with pytest.raises(CheckpointError, match="full training state .* pass ckpt_best.pth"):
        read_checkpoint(tmp_path / "state_latest.ckpt")


def test_atomic_write_leaves_nothing_behind_when_the_writer_fails(tmp_path):
    def broken(stream) -> None:
        stream.write(b"half")
        raise ValueError("bug")

    with pytest.raises(ValueError):
        atomic_write(tmp_path / "x.bin", broken)
    assert list(tmp_path.iterdir()) == []


class _Exploit:
    def __reduce__(self):
        return (print, ("this ran during unpickling",))


def test_code_in_a_pickle_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    torch.save({"format": "segcli-checkpoint", "payload": _Exploit()}, path)
    with pytest.raises(CheckpointError, match="not a segcli checkpoint .it is not a file of plain tensors"):
        read_checkpoint(path)
    assert "this ran" not in capsys.readouterr().out


@pytest.mark.parametrize("content", [{"state_dict": {}}, [1, 2, 3]])
def test_foreign_files_are_refused(tmp_path, content):
    path = tmp_path / "other.pth"
    torch.save(content, path)
    with pytest.raises(CheckpointError, match="not a segcli checkpoint"):
        read_checkpoint(path)


def _pickled_objects(path: Path) -> None:
    with path.open("wb") as stream:
        pickle.dump({"weights": collections.OrderedDict(a=1), "code": os.getcwd}, stream, protocol=4)


def _numpy_array(path: Path) -> None:
    with path.open("wb") as stream:
        np.save(stream, np.zeros(3))


@pytest.mark.parametrize(
    "write",
    [
        _pickled_objects,
        lambda path: path.write_bytes(np.random.default_rng(0).bytes(3000)),
        lambda path: path.write_text("model weights, honest\n"),
        _numpy_array,
    ],
    ids=["pickle", "random-bytes", "text", "numpy"],
)
def test_a_pickle_or_garbage_passed_as_a_model_is_one_plain_message(tmp_path, capsys, recwarn, write):
    """torch printed two UserWarnings ("... please file an issue"), then segcli's error ended with torch's advice to
    re-run with weights_only=False, its "arbitrary code execution" caveat cut off: it read as a recommendation."""
    from tests.inference.support import run_main
    from tests.support import assert_user_error

    path = tmp_path / "model.pth"
    write(path)
    result = run_main(capsys, "export-checkpoint", path)
    expected = f"{path}: not a segcli checkpoint (it is not a file of plain tensors; segcli never loads pickled code)"
    assert_user_error(result, expected)
    assert result.stderr == f"error: {expected}\n" and "weights_only" not in result.stderr
    assert [str(warning.message) for warning in recwarn] == []


def test_a_damaged_checkpoint_is_called_damaged(tmp_path):
    path = tmp_path / "ckpt_best.pth"
    save_torch({"format": "segcli-checkpoint", "weights": torch.zeros(1000)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable segcli checkpoint: damaged or truncated"):
        read_checkpoint(path)


def test_garbage_and_missing_files_are_refused(tmp_path):
    (tmp_path / "junk.pth").write_bytes(pickle.dumps("x")[:3])
    with pytest.raises(CheckpointError):
        read_checkpoint(tmp_path / "junk.pth")
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "missing.pth")


@pytest.mark.parametrize("room", [0, 5000])  # the disk full at the first write, or after a part of the file
def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch, room):
    """A full disk under torch.save (which turns the stream's OSError into "RuntimeError: unexpected pos") is a
    StorageError naming the file, not a traceback."""
    path = tmp_path / "ckpt.pth"
    save_torch({"value": torch.ones(3)}, path)
    fill_the_disk(monkeypatch, room)
    with pytest.raises(StorageError, match="disk full while writing .*ckpt.pth; the previous file is intact"):
        save_torch({"value": torch.zeros(10_000)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["value"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth"]


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda model: model["normalization"].pop("mean"), "normalization: .*imagenet needs mean and std"),
        (lambda model: model["normalization"].update(mode="zscore"), "normalization.mode"),
        (lambda model: model.pop("class_names"), "class_names: Field required"),
        (lambda model: model.update(in_channels="three"), "in_channels"),
    ],
)
def test_a_damaged_model_description_is_named_by_its_field(tmp_path, change, named):
    payload = torch.load(make_checkpoint(tmp_path / "ok.pth"), weights_only=True)
    change(payload["model"])
    torch.save(payload, tmp_path / "damaged.pth")
    with pytest.raises(CheckpointError, match=f"damaged.pth: no valid model description \\({named}"):
        read_checkpoint(tmp_path / "damaged.pth")
