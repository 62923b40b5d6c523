"""`segcli list-experiments`, and that the light commands never import torch."""

from __future__ import annotations

import json

import pytest

from tests.support import REPO, assert_user_error, heavy_imports, run_segcli


@pytest.fixture
def experiments_dir(in_tmp_cwd):
    folder = in_tmp_cwd / "experiments"
    folder.mkdir()
    (folder / "unetpp.yaml").write_text((REPO / "experiments" / "unetpp.yaml").read_text())
    return folder


def test_json_lists_what_each_experiment_changes(experiments_dir, in_tmp_cwd):
    result = run_segcli("list-experiments", "--json", cwd=in_tmp_cwd)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)["experiments"]
    assert [(r["experiment"], r["run_name"], r["changes"], r["status"]) for r in rows] == [
        ("experiment-batch_size", "unetpp-experiment-batch_size", {"batch_size": 8}, "ok"),
        ("experiment-lr", "unetpp-experiment-lr", {"lr": 0.001}, "ok"),
    ]


def test_table_and_invalid_experiments(experiments_dir, in_tmp_cwd):
    (experiments_dir / "other.yml").write_text(
        "model: {arch: unet, classes: 3}\nexperiments:\n  nested: {optimizer: {params: {weight_decay: 0.1}}}\n"
        "  broken: {batch_size: -1}\n"
    )
    result = run_segcli("list-experiments", cwd=in_tmp_cwd)
    assert result.returncode == 1, result.stderr  # README: an invalid experiment is exit 1 (it exited 0)
    for text in ("experiment-batch_size", "batch_size = 8", "optimizer.params.weight_decay = 0.1", "broken", "invalid"):
        assert text in result.stdout, text
    assert "1 of 4 experiments is invalid" in result.stderr and "Traceback" not in result.stderr
    as_json = run_segcli("list-experiments", "--json", cwd=in_tmp_cwd)
    assert as_json.returncode == 1 and as_json.stderr == ""
    statuses = {row["experiment"]: row["status"] for row in json.loads(as_json.stdout)["experiments"]}
    assert statuses["broken"].startswith("invalid: ") and statuses["nested"] == "ok"


def test_unreadable_file_is_reported_with_exit_2(experiments_dir, in_tmp_cwd):
    (experiments_dir / "bad.yaml").write_text("model: [unclosed\n")
    result = run_segcli("list-experiments", cwd=in_tmp_cwd)
    assert result.returncode == 2
    assert "bad.yaml:" in result.stderr and "invalid YAML" in result.stderr
    assert "experiment-batch_size" in result.stdout  # the good file is still listed


def test_missing_path_is_a_user_error(in_tmp_cwd):
    assert_user_error(run_segcli("list-experiments", "nowhere", cwd=in_tmp_cwd), "nowhere: no such file or folder")


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["list-experiments"],
        ["train", "--help"],
        ["validate-dataset", "--help"],
        ["schema"],
        ["benchmark", "--help"],
    ],
)
def test_light_commands_do_not_import_torch(argv, experiments_dir, in_tmp_cwd):
    heavy, code, _ = heavy_imports(argv, in_tmp_cwd)
    assert heavy == [] and code in (0, None)
