"""k-fold cross-validation: the split, the K runs and their summary, resuming a killed k-fold, ensembles."""

from __future__ import annotations

import json
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from segcli.artifacts.checkpoints import read_checkpoint
from segcli.data.io import Pair, list_pairs
from segcli.errors import ConfigError
from segcli.inference.engine import InferenceOptions
from segcli.inference.loading import open_model, open_models
from segcli.training.folds import split_folds
from tests.inference.support import make_checkpoint, run_main
from tests.support import DEMO_CLASSES, run_segcli


def _pairs(names: list[str]) -> list[Pair]:
    return [Pair(Path(f"images/{name}.png"), Path(f"labels/{name}.png")) for name in names]


CAMVID_LIKE = [
    f"{sequence}_{frame:04d}" for sequence in ("0001TP", "0006R0", "0016E5", "Seq05VD") for frame in range(7)
]


def test_folds_are_disjoint_complete_balanced_and_deterministic():
    pairs = _pairs([f"img{index:03d}" for index in range(23)])
    folds = split_folds(pairs, 5, seed=3)
    names = [pair.stem for fold in folds for pair in fold]
    assert sorted(names) == sorted(pair.stem for pair in pairs) and len(set(names)) == 23  # complete, disjoint
    assert sorted(len(fold) for fold in folds) == [4, 4, 5, 5, 5]
    assert split_folds(pairs, 5, seed=3) == folds  # the seed decides
    assert split_folds(pairs, 5, seed=4) != folds


def test_groups_stay_in_one_fold():
    """Neighbouring video frames must not sit on both sides of a split: group by the sequence prefix."""
    folds = split_folds(_pairs(CAMVID_LIKE), 4, seed=0, groups=r"^[^_]+")
    for fold in folds:
        assert len({pair.stem.split("_")[0] for pair in fold}) == 1 and len(fold) == 7
    with pytest.raises(ConfigError, match="only 4 group"):
        split_folds(_pairs(CAMVID_LIKE), 5, seed=0, groups=r"^[^_]+")
    with pytest.raises(ConfigError, match="not a regular expression"):
        split_folds(_pairs(CAMVID_LIKE), 2, seed=0, groups="(")


KFOLD = """
model: {arch: unet, encoder_name: resnet18, encoder_weights: null, classes: 4}
defaults:
  batch_size: 4
  max_epochs: 1
  num_workers: 0
  average: null
  log_predictions: {count: 0, worst: 0}
experiments:
  cv: {}
"""


@pytest.fixture(scope="module")
def kfold(tiny_dataset, module_folder):
    folder = module_folder
    (folder / "kfold.yaml").write_text(KFOLD)
    result = run_segcli("train", "-c", "kfold.yaml", "-e", "cv", "--folds", "3", "--dataset", tiny_dataset,
                        "--classes", DEMO_CLASSES, "--output-dir", "out", cwd=folder)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return folder, folder / "out" / "checkpoints" / "kfold-cv-kfold", result


def test_kfold_trains_k_runs_and_summarises_them(kfold, tiny_dataset):
    folder, kfold_dir, result = kfold
    record = json.loads((kfold_dir / "kfold.json").read_text())
    assert record["runs"] == ["kfold-cv-fold1", "kfold-cv-fold2", "kfold-cv-fold3"]
    held_out = [name for names in record["val_images"].values() for name in names]
    pooled = [p.image.name for split in ("train", "val") for p in list_pairs(tiny_dataset, split)]
    assert sorted(held_out) == sorted(pooled)  # every image validated exactly once
    best = [read_checkpoint(kfold_dir / run / "ckpt_best.pth").metrics for run in record["runs"]]
    for key in ("val/mIoU", "val/mDCC", "val/IoU/disc"):
        values = [metrics[key] for metrics in best]
        assert record["summary"][key]["mean"] == pytest.approx(statistics.fmean(values))
        assert record["summary"][key]["std"] == pytest.approx(statistics.stdev(values))
    mean, std = record["summary"]["val/mIoU"]["mean"], record["summary"]["val/mIoU"]["std"]
    assert f"{mean:.4f} ± {std:.4f}" in result.stdout
    runs = {path.name.split("-")[-1] for path in (folder / "out" / "wandb").glob("offline-run-*")}
    assert len(runs) == 3  # one W&B run per fold (in one W&B group)


def test_report_of_a_kfold_folder_compares_its_folds_with_their_mean_and_std(kfold, tmp_path):
    """`report <k-fold folder>` said only "no metrics.csv". It is the fold runs side by side, with the mean ± std
    train's k-fold summary gives (kfold.json)."""
    _, kfold_dir, _ = kfold
    summary = json.loads((kfold_dir / "kfold.json").read_text())["summary"]
    result = run_segcli("report", kfold_dir, "--no-redraw", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = [[cell.strip() for cell in line.strip()[1:-1].split("│" if "│" in line else "┃")]
            for line in result.stdout.splitlines() if line.startswith(("│", "┃"))]  # fmt: skip
    header = next(row for row in rows if "kfold-cv-fold1" in row)
    assert header[1:] == ["kfold-cv-fold1", "kfold-cv-fold2", "kfold-cv-fold3", "mean ± std"]
    cells = {row[0]: row[1:] for row in rows}
    for label, key in (("best val/mIoU", "val/mIoU"), ("IoU disc", "val/IoU/disc")):
        mean, std = summary[key]["mean"], summary[key]["std"]
        assert cells[label][3] == f"{mean:.4f} ± {std:.4f}", label
    assert f"k-fold {kfold_dir.name}: its 3 fold runs" in result.stdout


def test_a_killed_kfold_resumes_with_the_folds_it_had_not_finished(kfold, tiny_dataset):
    folder, kfold_dir, _ = kfold
    record = json.loads((kfold_dir / "kfold-cv-fold3" / "run.json").read_text())
    record["finished"] = False  # as if killed during the last fold
    (kfold_dir / "kfold-cv-fold3" / "run.json").write_text(json.dumps(record))
    before = {
        run: (kfold_dir / run / "ckpt_best.pth").stat().st_mtime_ns for run in ("kfold-cv-fold1", "kfold-cv-fold2")
    }
    result = run_segcli("train", "-c", "kfold.yaml", "-e", "cv", "--folds", "3", "--dataset", tiny_dataset,
                        "--classes", DEMO_CLASSES, "--output-dir", "out", "--resume", cwd=folder)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    after = {run: (kfold_dir / run / "ckpt_best.pth").stat().st_mtime_ns for run in before}
    assert after == before  # finished folds are not trained again
    assert json.loads((kfold_dir / "kfold-cv-fold3" / "run.json").read_text())["finished"]


@pytest.mark.slow
def test_ctrl_c_during_a_fold_exits_130_like_a_single_run_and_resume_finishes_every_fold(tiny_dataset, tmp_path):
    """A real SIGINT during the first fold: it finished the epoch, then the fold summary raised KeyError 'val/mIoU'
    (exit 1). Now: the stopped fold's summary, the single run's message, exit 130; `--resume` finishes every fold."""
    (tmp_path / "kfold.yaml").write_text(KFOLD.replace("max_epochs: 1", "max_epochs: 3"))
    args = ["train", "-c", "kfold.yaml", "-e", "cv", "--folds", "2", "--dataset", str(tiny_dataset), "--classes",
            DEMO_CLASSES, "--output-dir", "out"]  # fmt: skip
    kfold_dir = tmp_path / "out" / "checkpoints" / "kfold-cv-kfold"
    process = subprocess.Popen([sys.executable, "-m", "segcli", *args], cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    record = kfold_dir / "kfold-cv-fold1" / "run.json"
    deadline = time.monotonic() + 300
    while not (record.is_file() and json.loads(record.read_text() or "{}").get("epochs_completed", 0) >= 1):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)  # during the fold's second epoch: the handler is certainly in place
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "KeyError" not in stderr
    stopped_after = json.loads(record.read_text())["epochs_completed"]
    assert f"stopped at your request after epoch {stopped_after}; continue with --resume" in stderr
    assert "run kfold-cv-fold1" in stdout and stopped_after < 3
    assert not (kfold_dir / "kfold-cv-fold2").exists()

    resumed = run_segcli(*args, "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((kfold_dir / "kfold.json").read_text())["summary"]
    for run in ("kfold-cv-fold1", "kfold-cv-fold2"):
        done = json.loads((kfold_dir / run / "run.json").read_text())
        assert done["finished"] and done["epochs_completed"] == 3, run
    assert f"{summary['val/mIoU']['mean']:.4f} ± {summary['val/mIoU']['std']:.4f}" in resumed.stdout


def test_an_ensemble_averages_its_members_probabilities(tmp_path):
    members = [make_checkpoint(tmp_path / f"m{seed}.pth", seed=seed) for seed in range(3)]
    image = np.random.default_rng(0).integers(0, 256, (37, 45, 3), dtype=np.uint8)
    options = InferenceOptions(flip_tta=True)
    expected = torch.stack([open_model(path).probabilities([image], options) for path in members]).mean(0)
    ensemble = open_models(members)
    assert ensemble.kind == "ensemble of 3"
    torch.testing.assert_close(ensemble.probabilities([image], options), expected)


def test_predict_with_model_options_writes_the_ensembles_masks(tmp_path, capsys):
    """`segcli predict A INPUT -m B -m C`: the masks are the classes of the members' mean probabilities."""
    from segcli.data.io import read_image
    from segcli.inference.engine import masks_from
    from tests.inference.support import read_png, write_png

    members = [make_checkpoint(tmp_path / f"m{seed}.pth", seed=seed) for seed in range(3)]
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(1)
    for index, size in enumerate([(40, 48), (44, 52)]):  # different sizes: one image per forward pass, as below
        write_png(images / f"i{index}.png", rng.integers(0, 256, (*size, 3), dtype=np.uint8))
    result = run_main(capsys, "predict", members[0], images, "-o", tmp_path / "masks", "-m", members[1],
                      "--model", members[2])  # fmt: skip
    assert result.returncode == 0, result.stderr
    for path in sorted(images.iterdir()):
        image = read_image(path, 3)
        mean = torch.stack([open_model(m).probabilities([image], InferenceOptions()) for m in members]).mean(0)
        expected = masks_from(mean, 4)[0]
        assert np.array_equal(read_png(tmp_path / "masks" / path.name), expected), path.name


def test_an_ensemble_needs_the_same_classes_and_normalisation(tmp_path):
    a = make_checkpoint(tmp_path / "a.pth")
    b = make_checkpoint(tmp_path / "b.pth", class_names=["x", "y", "z", "w"])
    with pytest.raises(Exception, match="cannot be ensembled: their class_names differ"):
        open_models([a, b])


def test_a_kfold_folder_predicts_evaluates_and_exports_as_one_ensemble(kfold, tiny_dataset, tmp_path, capsys):
    _, kfold_dir, _ = kfold
    evaluated = run_main(capsys, "evaluate", kfold_dir, "--dataset", tiny_dataset, "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    document = json.loads(evaluated.stdout)
    assert document["model_kind"] == "ensemble of 3" and len(document["models"]) == 3
    exported = run_main(capsys, "export-checkpoint", kfold_dir, "--height", "64", "--width", "64", "--json")
    assert exported.returncode == 0, exported.stderr
    export = json.loads(exported.stdout)
    assert export["check"]["passed"] and export["details"]["ensemble"]["members"] == 3
    images = tiny_dataset / "val" / "images"
    for model, out in ((kfold_dir, tmp_path / "torch"), (Path(export["path"]), tmp_path / "onnx")):
        assert run_main(capsys, "predict", model, images, "-o", out).returncode == 0
    from tests.inference.support import read_png

    for path in (tmp_path / "torch").glob("*.png"):
        assert (read_png(path) == read_png(tmp_path / "onnx" / path.name)).mean() > 0.999


def test_folds_from_train_and_groups_reach_the_fold_runs(tiny_dataset, tmp_path, monkeypatch):
    """`--folds-from train` splits the train folder only; every fold run trains on the others' images."""
    import segcli.training.folds as folds
    from segcli.config.schema import Experiment
    from segcli.training.run import RunOptions

    seen = []

    def fake_train(experiment, options):
        seen.append(options)
        return type("Result", (), {"primary": True, "interrupted": False})()

    monkeypatch.setattr(folds, "train", fake_train)
    experiment = Experiment.model_validate({"model": {"arch": "unet", "classes": 4}, "seed": 5})
    options = RunOptions(dataset=tiny_dataset, class_names=DEMO_CLASSES.split(","), run_name="r", experiment_name="e",
                         output_dir=tmp_path)  # fmt: skip
    folds.train_folds(experiment, options, folds=2, source="train", groups=r"^(train_000)[0-3]")
    train_names = {p.image.name for p in list_pairs(tiny_dataset, "train")}
    assert [o.run_name for o in seen] == ["r-fold1", "r-fold2"]
    for fold in seen:
        held_out = {p.image.name for p in fold.pairs["val"]}
        trained = {p.image.name for p in fold.pairs["train"]}
        assert held_out | trained == train_names and not held_out & trained
        assert fold.run_dir.parent.name == "r-kfold" and fold.group == "r-kfold"
        grouped = {name for name in held_out if name[:10] in {f"train_000{i}" for i in range(4)}}
        assert len(grouped) in (0, 4)  # train_0000..0003 share a group: all in one fold
