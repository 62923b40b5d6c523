"""`segcli benchmark --json` reports every section and ratio (figures themselves are in BENCHMARKS.md)."""

from __future__ import annotations

import json

import pytest

from tests.support import CAMVID_CLASSES, run_segcli


@pytest.mark.slow
def test_benchmark_json_on_camvid_mini(camvid_mini, in_tmp_cwd):
    result = run_segcli("benchmark", "--dataset", camvid_mini, "--classes", CAMVID_CLASSES, "--ignore-index", "11",
                        "--steps", "2", "--json", cwd=in_tmp_cwd)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr == "", result.stderr[-3000:]  # no library notices (Lightning's tips, weights_only, ...)
    report = json.loads(result.stdout)
    assert set(report["images_per_s"]) == {"loader", "model", "train", "bare_loop"}
    assert all(rate > 0 for rate in report["images_per_s"].values())
    assert set(report["ratios"]) == {
        "train_vs_model",
        "train_vs_slower_of_loader_and_model",
        "train_vs_bare_loop",
        "loader_vs_model",
    }
    assert report["ratios"]["train_vs_bare_loop"] == pytest.approx(
        report["images_per_s"]["train"] / report["images_per_s"]["bare_loop"], rel=1e-2
    )
    assert 0 < report["metric_update_share_of_step"] < 1
    assert report["peak_rss_mb"] > 100 and report["gpu_peak_allocated_mb"] is None
    whole = report["whole_run"]
    assert 0 < whole["startup_seconds"] < whole["total_seconds"] and whole["epoch_seconds"] > 0
    # the share is rounded to 3 decimals: a small one (0.036) is off by more than 1% of itself
    assert whole["epoch_end_share_of_epoch"] == pytest.approx(whole["epoch_end_seconds"] / whole["epoch_seconds"],
                                                               abs=1e-3)  # fmt: skip
    assert not (in_tmp_cwd / "checkpoints").exists()  # a benchmark leaves no run behind
    assert not (in_tmp_cwd / "wandb").exists()
