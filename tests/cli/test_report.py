"""`segcli report` on finished runs, alone and side by side; `segcli find-lr` on real data."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from tests.support import CAMVID_CLASSES, DEMO_CLASSES, REPO, run_segcli

RUNS = """
model: {arch: unet, encoder_name: resnet18, encoder_weights: null, classes: 4}
defaults: {batch_size: 4, max_epochs: 2, num_workers: 0, log_predictions: {count: 0, worst: 0}}
experiments:
  a: {}
  b: {lr: 0.01}
"""


@pytest.fixture(scope="module")
def runs(tiny_dataset, module_folder):
    folder = module_folder
    (folder / "r.yaml").write_text(RUNS)
    result = run_segcli("train", "-c", "r.yaml", "-e", "all", "--dataset", tiny_dataset, "--classes", DEMO_CLASSES,
                        "--output-dir", "out", cwd=folder)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return folder, [folder / "out" / "checkpoints" / name for name in ("r-a", "r-b")], result


def test_report_redraws_and_summarises_a_run_from_its_folder_alone(runs, tmp_path):
    folder, (run, _), _ = runs
    copy = tmp_path / "copied-run"  # no W&B, no experiment file, nothing but the folder
    shutil.copytree(run, copy)
    for name in ("results.png", "per_class.png", "confusion_matrix.png"):
        (copy / name).unlink()
    result = run_segcli("report", copy, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for name in ("results.png", "per_class.png", "confusion_matrix.png"):
        with Image.open(copy / name) as picture:
            assert np.asarray(picture.convert("L")).std() > 10, name
    lines = result.stdout
    assert "best epoch" in lines and "best val/mIoU" in lines and "IoU disc" in lines
    rows = list(csv.DictReader((copy / "metrics.csv").open()))
    best = max(rows, key=lambda row: float(row["val/mIoU"]))
    assert f"{float(best['val/mIoU']):.4f}" in lines


def test_report_compares_runs_side_by_side(runs, tmp_path):
    folder, run_dirs, _ = runs
    result = run_segcli("report", *run_dirs, "--no-redraw", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    header = next(line for line in result.stdout.splitlines() if "r-a" in line)
    assert "r-b" in header


def _cells(stdout: str, label: str) -> list[list[str]]:
    """The other cells of every table row whose first cell is `label`."""
    rows = [[cell.strip() for cell in line.strip("│ ").split("│")] for line in stdout.splitlines() if "│" in line]
    return [row[1:] for row in rows if row[0] == label]


def test_report_and_train_give_a_run_the_same_time_in_one_format(runs, tmp_path):
    """train's summary said `1 min 42 s` where report said `time 95 s` (the sum of the epochs' seconds): one run
    time, stored in run.json, in one format. It covers the epochs, and more (checks, end of the run)."""
    from segcli.cli.common import duration

    _, run_dirs, trained = runs
    report = run_segcli("report", *run_dirs, "--no-redraw", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    stored = [json.loads((run_dir / "run.json").read_text())["seconds"] for run_dir in run_dirs]
    for run_dir, seconds in zip(run_dirs, stored, strict=True):
        epochs = sum(float(row["seconds"]) for row in csv.DictReader((run_dir / "metrics.csv").open()))
        assert seconds > epochs > 0
    assert _cells(report.stdout, "time") == [[duration(seconds) for seconds in stored]]
    assert _cells(trained.stdout, "time") == [[duration(seconds)] for seconds in stored]  # each run's summary
    sweep = next(line for line in trained.stdout.splitlines() if "r-a" in line and "ok" in line)
    assert duration(stored[0]) in sweep  # and the sweep's comparison table


def test_report_of_a_folder_without_a_run_is_a_user_error(tmp_path):
    result = run_segcli("report", tmp_path, cwd=tmp_path)
    assert result.returncode == 2 and "no metrics.csv" in result.stderr


@pytest.mark.slow
def test_find_lr_on_camvid_mini(camvid_mini, in_tmp_cwd):
    result = run_segcli("find-lr", "-c", REPO / "experiments" / "camvid.yaml", "-e", "mini", "--dataset", camvid_mini,
                        "--classes", CAMVID_CLASSES, "--steps", "30", "--apply", "--cpu", cwd=in_tmp_cwd)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "suggested lr:" in result.stdout and "after 30 steps" in result.stdout and "--set lr=" in result.stdout
    assert "val_dataloader" not in result.stderr  # Lightning's notice about the range test's missing val loop
    with Image.open(in_tmp_cwd / "lr_finder.png") as picture:
        assert picture.width > 300
    assert not list(in_tmp_cwd.glob("*.ckpt")) and not (in_tmp_cwd / "checkpoints").exists()  # nothing else left


@pytest.mark.slow
def test_find_lr_refuses_too_few_steps_and_names_the_fewest_that_suggest(tiny_dataset, tmp_path):
    """`--steps 10` ran, printed Lightning's "not enough points" and blamed the loss ("did not fall"); the suggestion
    leaves out the first 10 steps and the last one and needs 2 more: 13 is the fewest that give one."""
    (tmp_path / "r.yaml").write_text(RUNS)
    args = ["find-lr", "-c", "r.yaml", "-e", "a", "--dataset", tiny_dataset, "--classes", DEMO_CLASSES, "--cpu"]
    refused = run_segcli(*args, "--steps", "12", cwd=tmp_path)
    assert refused.returncode == 2, refused.stdout + refused.stderr[-2000:]
    assert refused.stderr.startswith("error: --steps 12: too few") and "--steps 13 or more" in refused.stderr
    assert "Traceback" not in refused.stderr and not (tmp_path / "lr_finder.png").exists()
    fewest = run_segcli(*args, "--steps", "13", cwd=tmp_path)
    assert fewest.returncode == 0, fewest.stdout + fewest.stderr[-2000:]
    assert "suggested lr:" in fewest.stdout and "after 13 steps" in fewest.stdout
    assert "not enough points" not in fewest.stderr


def test_results_chart_reads_a_wild_first_loss_on_a_log_scale_and_stars_the_average():
    from segcli.drawing.charts import results_chart

    rows = [{"epoch": e, "train/loss": 2.0 / e, "val/loss": 700.0 if e == 1 else 2.0 / e, "val/mIoU": 0.1 * e,
             "lr": 1e-3} for e in range(1, 6)]  # fmt: skip
    figure = results_chart(rows, 5, "t", {"val_avg/mIoU": 0.55})
    loss, miou = figure.axes[0], figure.axes[1]
    assert loss.get_yscale() == "log" and miou.get_yscale() == "linear" and figure.axes[3].get_yscale() == "linear"
    assert "average_model" in miou.get_legend_handles_labels()[1]
    calm = results_chart([{**row, "val/loss": 2.0 / row["epoch"]} for row in rows], 5, "t")
    assert calm.axes[0].get_yscale() == "linear"


def test_training_redraws_pictures_only_when_time_has_passed(tmp_path):
    """metrics.csv every epoch; the pictures at most every REDRAW_SECONDS (the best epoch's when it changed); the
    epoch training ends at draws the best epoch's, the end the curves: a short run draws each once."""
    from types import SimpleNamespace

    from segcli.artifacts.folders import RunDir
    from segcli.files import BackgroundWriter
    from segcli.training.callbacks.report import RunReport

    names = ["a", "b"]
    run_dir, writer = RunDir(tmp_path), BackgroundWriter()
    state = SimpleNamespace(history=[], best_epoch=None, monitor=SimpleNamespace(metric="val/mIoU"), best_matrix=None)
    report = RunReport(state, run_dir, writer, "r", names)
    pictures = (run_dir.results_png, run_dir.per_class_png, run_dir.confusion_png)

    def epoch(number: int, best: bool, final: bool = False, last: bool = False) -> set[str]:
        for path in (run_dir.metrics_csv, *pictures):
            path.unlink(missing_ok=True)
        state.history.append({"epoch": number, "val/loss": 1.0 / number, "val/mIoU": 0.1 * number,
                              "val/IoU/a": 0.5, "val/IoU/b": 0.5})  # fmt: skip
        if best:
            state.best_epoch, state.best_matrix = number, [[5, 1], [2, 7]]
        report.submit(final=final, last=last)
        writer.wait()
        return {path.name for path in (run_dir.metrics_csv, *pictures) if path.exists()}

    everything = {"metrics.csv", "results.png", "per_class.png", "confusion_matrix.png"}
    assert epoch(1, best=True) == {"metrics.csv"}  # not REDRAW_SECONDS into the run yet
    report.REDRAW_SECONDS = 0.0
    assert epoch(2, best=False) == everything  # epoch 1's best pictures were never drawn
    assert epoch(3, best=False) == {"metrics.csv", "results.png"}
    assert epoch(4, best=True) == everything
    best_pictures = {"metrics.csv", "per_class.png", "confusion_matrix.png"}
    assert epoch(5, best=True, last=True) == best_pictures  # training ends here: the curves wait for the average
    assert epoch(6, best=False, final=True) == {"metrics.csv", "results.png"}
    report.REDRAW_SECONDS = 3600.0
    assert epoch(7, best=True) == {"metrics.csv"}
    assert epoch(8, best=False, final=True) == everything  # epoch 7's best pictures were never drawn
    report.REDRAW_SECONDS = 0.0
    assert epoch(9, best=False, last=True) == {"metrics.csv"}  # the best epoch's pictures are drawn already
    writer.close()


@pytest.mark.parametrize(
    "case", ["wild first loss", "cosine to 1e-6", "constant lr", "large losses", "200 epochs", "one epoch"]
)
def test_results_chart_keeps_every_label_inside_the_picture_and_off_the_other_panels(case):
    """results.png has fixed margins (no layout engine): tick labels, titles and legends must still fit."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from segcli.drawing.charts import results_chart

    epochs = 200 if case == "200 epochs" else 1 if case == "one epoch" else 12
    rows = []
    for e in range(1, epochs + 1):
        loss = {"wild first loss": 700.0 if e == 1 else 2.0 / e, "large losses": 12345.6 / e}.get(case, 2.0 / e)
        lr = 1e-3 * (1e-3 ** ((e - 1) / max(epochs - 1, 1))) if case == "cosine to 1e-6" else 1e-3
        rows.append({"epoch": e, "train/loss": loss, "val/loss": loss * 1.1, "val_ema/loss": loss, "lr": lr,
                     **{f"{stage}/{metric}": 0.8 * e / epochs for stage in ("train", "val", "val_ema")
                        for metric in ("mIoU", "mDCC")}})  # fmt: skip
    figure = results_chart(rows, epochs, f"camvid-mini-set050eb6: {epochs} epochs, best epoch {epochs} by val/mIoU",
                           {"val_avg/mIoU": 0.5, "val_avg/mDCC": 0.6, "val_avg/loss": 1.0})  # fmt: skip
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    renderer = canvas.get_renderer()
    inside = figure.bbox.padded(1)
    # An axes' tight box: what it draws (tick labels, offset text, title, axis label, legend).
    boxes = [ax.get_tightbbox(renderer) for ax in figure.axes] + [figure._suptitle.get_window_extent(renderer)]
    for box in boxes:
        assert inside.contains(box.x0, box.y0) and inside.contains(box.x1, box.y1), (case, box)
    for i, one in enumerate(boxes):
        for other in boxes[i + 1 :]:
            assert not one.overlaps(other), (case, one, other)


def test_run_json_keeps_scores_that_are_not_numbers_as_null():
    """run.json must stay valid JSON when the weight average scored NaN (a class never seen) or diverged."""
    from types import SimpleNamespace

    from segcli.training.report import report_details

    monitor = SimpleNamespace(metric="val/mIoU")
    history = SimpleNamespace(best_epoch=2, monitor=monitor, best_matrix=[[3, 1], [0, 4]])
    extra = {"val_avg/mIoU": float("nan"), "val_avg/loss": float("inf"), "val_avg/mDCC": 0.5}
    details = report_details(history, ["road", "sky"], extra)
    assert details["extra"] == {"val_avg/mIoU": None, "val_avg/loss": None, "val_avg/mDCC": 0.5}
    assert json.loads(json.dumps(details, allow_nan=False)) == details
