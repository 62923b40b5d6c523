"""MLflow against a real tracking server, TensorBoard read back with its own reader, and trackers in trouble."""

from __future__ import annotations

import csv
import filecmp
import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from segcli.config.schema import Experiment
from segcli.errors import ConfigError
from segcli.training.run import RunOptions, train
from segcli.training.trackers import base
from tests.support import DEMO_CLASSES, assert_user_error, run_segcli

mlflow = pytest.importorskip("mlflow")
pytest.importorskip("tensorboard")

CLASSES = DEMO_CLASSES.split(",")
MODEL = {"arch": "unet", "encoder_name": "resnet18", "encoder_weights": None, "classes": 4,
         "params": {"decoder_channels": [32, 16, 8, 8, 8]}}  # fmt: skip


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(module_folder) -> str:
    """`mlflow server` on a free localhost port with a SQLite backend, stopped after the module."""
    port = _free_port()
    log = (module_folder / "server.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{module_folder / 'server.db'}",
         "--artifacts-destination", str(module_folder / "server-artifacts")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    try:
        while True:
            assert process.poll() is None, (module_folder / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the MLflow server did not start"
            try:
                with urllib.request.urlopen(url + "/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def _experiment(**keys) -> Experiment:
    base = {"model": MODEL, "batch_size": 4, "max_epochs": 2, "num_workers": 0, "average": None,
            "log_predictions": {"count": 1, "worst": 2}, "tracker": ["mlflow", "tensorboard"]}  # fmt: skip
    return Experiment.model_validate({**base, **keys})


def _train(experiment: Experiment, dataset: Path, output: Path):
    return train(experiment, RunOptions(dataset=dataset, class_names=CLASSES, run_name="run", experiment_name="e",
                                        output_dir=output, progress=False))  # fmt: skip


def _csv_rows(run_dir: Path) -> list[dict[str, float]]:
    with (run_dir / "metrics.csv").open() as stream:
        return [
            {key: float(value) if value else math.nan for key, value in row.items()} for row in csv.DictReader(stream)
        ]


def _metric_columns(rows: list[dict[str, float]]) -> list[str]:
    return [key for key in rows[0] if key not in ("epoch", "lr", "seconds")]


def _same(a: list[float], b: list[float], rel: float = 0.0) -> bool:
    return len(a) == len(b) and all((math.isnan(x) and math.isnan(y)) or x == pytest.approx(y, rel=rel, abs=0)
                                    for x, y in zip(a, b, strict=True))  # fmt: skip


def _key_paths(value, prefix: str = ""):
    """The experiment as `a/b/0/c` -> value, the way MLflow parameters name it."""
    if isinstance(value, dict) and value:
        items = value.items()
    elif isinstance(value, list) and value:
        items = enumerate(value)
    else:
        yield prefix[:-1], value
        return
    for key, item in items:
        yield from _key_paths(item, f"{prefix}{key}/")


def _assert_mlflow_equals_the_run_folder(client, run_id: str, run_dir: Path) -> None:
    """Per epoch, every metric of metrics.csv, once per epoch, in order; `epoch` counts 1, 2, ..."""
    rows = _csv_rows(run_dir)
    for key in _metric_columns(rows):
        history = sorted(client.get_metric_history(run_id, key), key=lambda metric: metric.step)
        steps = [metric.step for metric in history]
        assert steps == sorted(set(steps)), (key, steps)  # no step logged twice
        assert _same([metric.value for metric in history], [row[key] for row in rows], rel=1e-6), key  # float32
    epochs = sorted(client.get_metric_history(run_id, "epoch"), key=lambda metric: metric.step)
    assert [metric.value for metric in epochs] == [row["epoch"] for row in rows]


def _tensorboard(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    return accumulator


def _assert_tensorboard_equals_the_run_folder(run_dir: Path) -> None:
    rows = _csv_rows(run_dir)
    events = _tensorboard(run_dir)
    for key in _metric_columns(rows):
        scalars = events.Scalars(key)
        steps = [scalar.step for scalar in scalars]
        assert steps == sorted(set(steps)), (key, steps)
        assert _same([scalar.value for scalar in scalars], [row[key] for row in rows], rel=1e-6), key  # float32


def test_mlflow_and_tensorboard_hold_what_the_run_folder_holds(tiny_dataset, tmp_path, mlflow_server, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "hold")
    experiment = _experiment()
    result = _train(experiment, tiny_dataset, tmp_path)
    run_dir = tmp_path / "checkpoints" / "run"
    record = json.loads((run_dir / "run.json").read_text())
    client = MlflowClient(mlflow_server)
    run = client.get_run(record["mlflow_run_id"])
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "hold"
    link = f"{mlflow_server}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    assert result.trackers["MLflow run"] == link

    # The parameters are the resolved experiment, by key path, and what the run was made of.
    params = run.data.params
    for key, value in _key_paths(experiment.model_dump(mode="json")):
        assert params[key] == str(value), key
    assert params["model/params/decoder_channels/2"] == "8" and params["class_names/1"] == "disc"
    assert params["run_name"] == "run" and params["dataset_path"] == str(tiny_dataset.resolve())

    _assert_mlflow_equals_the_run_folder(client, run.info.run_id, run_dir)
    images = {artifact.path.split("+")[0] for artifact in client.list_artifacts(run.info.run_id, "images")}
    assert images >= {"images/samples~train", "images/val~predictions", "images/val~confusion_matrix",
                      "images/val~worst_images"}  # fmt: skip
    logged = {artifact.path for artifact in client.list_artifacts(run.info.run_id, "checkpoints")}
    assert logged == {f"checkpoints/{name}" for name in ("ckpt_best.pth", "ckpt_latest.pth")}
    copy = client.download_artifacts(run.info.run_id, "checkpoints/ckpt_best.pth", str(tmp_path))
    assert filecmp.cmp(copy, run_dir / "ckpt_best.pth", shallow=False)
    report = {artifact.path for artifact in client.list_artifacts(run.info.run_id, "report")}
    assert {"report/metrics.csv", "report/worst_predictions.png"} <= report

    _assert_tensorboard_equals_the_run_folder(run_dir)
    events = _tensorboard(run_dir)
    assert {"samples/train", "val/predictions", "val/confusion_matrix", "val/worst_images"} <= set(
        events.Tags()["images"]
    )


def test_a_tracker_in_trouble_is_dropped_with_one_warning_and_training_goes_on(tiny_dataset, tmp_path, monkeypatch,
                                                                             caplog):  # fmt: skip
    """An unreachable MLflow server (a wrong MLFLOW_TRACKING_URI) never starts; TensorBoard failing mid-run stops.
    Each says so once; every checkpoint, metric and report file is still written."""
    from torch.utils.tensorboard import SummaryWriter

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_free_port()}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setattr(SummaryWriter, "add_image", full_disk)
    with caplog.at_level(logging.WARNING, logger="segcli"):
        result = _train(_experiment(), tiny_dataset, tmp_path)
    warnings = [record.getMessage() for record in caplog.records if record.name.startswith("segcli")]
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith("warning: MLflow could not start (") and "127.0.0.1" in warnings[0]
    assert warnings[1].startswith("warning: TensorBoard stopped (logging a picture failed: ")
    assert "No space left on device" in warnings[1] and warnings[1].endswith("training goes on without it")
    run_dir = tmp_path / "checkpoints" / "run"
    assert [row["epoch"] for row in result.history] == [1, 2] and len(_csv_rows(run_dir)) == 2
    for name in ("ckpt_best.pth", "ckpt_latest.pth", "state_latest.ckpt", "results.png", "worst_predictions.png"):
        assert (run_dir / name).is_file(), name
    assert result.trackers == {}
    assert json.loads((run_dir / "run.json").read_text())["mlflow_run_id"] is None


def test_a_tracker_without_its_extra_is_one_error_naming_it(monkeypatch):
    real = base.importlib.util.find_spec
    monkeypatch.setattr(base.importlib.util, "find_spec", lambda name: None if name == "mlflow" else real(name))
    base.require_extras(["wandb", "tensorboard"])
    with pytest.raises(
        ConfigError, match=r"tracker: mlflow needs its optional extra; .*pip install 'segcli\[mlflow\]'"
    ):
        base.require_extras(["tensorboard", "mlflow"])


TINY = """
model: {arch: unet, encoder_name: resnet18, encoder_weights: null, classes: 4}
defaults: {batch_size: 4, max_epochs: 4, num_workers: 0, average: null, state_every_seconds: 0,
           log_predictions: {count: 1, worst: 0}, tracker: wandb}
experiments:
  exp: {}
"""


def test_the_tracker_option_and_key_are_checked_and_reach_the_run(tiny_dataset, in_tmp_cwd):
    (in_tmp_cwd / "tiny.yaml").write_text(TINY)
    base = ["train", "-c", "tiny.yaml", "-e", "exp", "--dataset", tiny_dataset, "--classes", DEMO_CLASSES]
    wrong = run_segcli(*base, "--tracker", "mlfow", cwd=in_tmp_cwd)
    assert_user_error(wrong, "command-line option tracker", "unknown tracker 'mlfow'", "did you mean 'mlflow'")
    both = run_segcli(*base, "--tracker", "none", "--tracker", "wandb", cwd=in_tmp_cwd)
    assert_user_error(both, "`none` cannot be listed with other trackers")
    planned = run_segcli(*base, "--tracker", "mlflow,tensorboard", "--dry-run", cwd=in_tmp_cwd)
    assert planned.returncode == 0, planned.stderr[-3000:]
    assert "tracker:\n- mlflow\n- tensorboard\n" in planned.stdout
    assert not (in_tmp_cwd / "checkpoints").exists() and not (in_tmp_cwd / "mlflow.db").exists()


def _wait_for_epochs(run_dir: Path, epochs: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            if json.loads((run_dir / "run.json").read_text())["epochs_completed"] >= epochs:
                return
        except (FileNotFoundError, ValueError):
            pass
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    raise AssertionError("training made no progress")


@pytest.mark.slow
def test_a_killed_run_resumes_its_mlflow_run_and_tensorboard_logs_each_epoch_once(tiny_dataset, in_tmp_cwd,
                                                                                 mlflow_server):  # fmt: skip
    from mlflow.tracking import MlflowClient

    (in_tmp_cwd / "tiny.yaml").write_text(TINY)
    args = ["train", "-c", "tiny.yaml", "-e", "exp", "--dataset", str(tiny_dataset), "--classes", DEMO_CLASSES,
            "--output-dir", "out", "--tracker", "mlflow,tensorboard"]  # fmt: skip
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server, "MLFLOW_EXPERIMENT_NAME": "resume"}
    run_dir = in_tmp_cwd / "out" / "checkpoints" / "tiny-exp"
    process = subprocess.Popen([sys.executable, "-m", "segcli", *args], cwd=in_tmp_cwd, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    _wait_for_epochs(run_dir, 2, process)
    process.kill()
    process.wait()
    killed = json.loads((run_dir / "run.json").read_text())
    assert not killed["finished"] and killed["mlflow_run_id"]
    resumed = run_segcli(*args, "--resume", cwd=in_tmp_cwd, env={"MLFLOW_TRACKING_URI": mlflow_server,
                                                                 "MLFLOW_EXPERIMENT_NAME": "resume"})  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "warning" not in resumed.stderr, resumed.stderr[-3000:]
    record = json.loads((run_dir / "run.json").read_text())
    assert record["finished"] and record["mlflow_run_id"] == killed["mlflow_run_id"]

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("resume")
    runs = client.search_runs([experiment.experiment_id])
    assert [run.info.run_id for run in runs] == [record["mlflow_run_id"]]  # the same run, no second one
    assert runs[0].info.status == "FINISHED"
    _assert_mlflow_equals_the_run_folder(client, record["mlflow_run_id"], run_dir)
    assert [row["epoch"] for row in _csv_rows(run_dir)] == [1, 2, 3, 4]
    _assert_tensorboard_equals_the_run_folder(run_dir)


def test_find_lr_logs_the_range_test_to_the_trackers_it_is_given(tiny_dataset, in_tmp_cwd):
    (in_tmp_cwd / "tiny.yaml").write_text(TINY)
    result = run_segcli("find-lr", "-c", "tiny.yaml", "-e", "exp", "--dataset", tiny_dataset, "--classes", DEMO_CLASSES,
                        "--steps", "13", "--min-lr", "1e-5", "--tracker", "tensorboard", cwd=in_tmp_cwd)  # fmt: skip
    assert result.returncode in (0, 1), result.stderr[-3000:]  # 1: no suggestion (13 steps of a tiny run)
    assert "Traceback" not in result.stderr and "warning" not in result.stderr, (
        result.stderr[-3000:] and not (in_tmp_cwd / "wandb").exists()
    )  # only the tracker asked for
    events = _tensorboard(in_tmp_cwd)
    rates = [scalar.value for scalar in events.Scalars("lr_finder/lr")]
    assert len(rates) == len(events.Scalars("lr_finder/loss")) == 13
    assert rates[0] == pytest.approx(1e-5, rel=1e-3) and rates == sorted(rates)
    assert "lr_finder/plot" in events.Tags()["images"]
    if result.returncode == 0:
        printed = float(result.stdout.split("suggested lr: ")[1].split()[0])
        assert events.Scalars("lr_finder/suggestion")[0].value == pytest.approx(printed, rel=5e-3)


def test_the_runs_of_a_group_are_children_of_one_parent_run(tmp_path, monkeypatch):
    """k-fold folds: each fold's MLflow run is a child of the parent named after the group, found again by every
    fold (and by a resume); the parent ends in the state of the fold that ran last."""
    from mlflow.tracking import MlflowClient

    from segcli.training.trackers import MlflowTracker, TrackedRun

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "folds")
    children = []
    for fold in (1, 2):
        run = TrackedRun(name=f"r-fold{fold}", output_dir=tmp_path, run_dir=tmp_path, config={"lr": 0.1},
                         group="r-kfold")  # fmt: skip
        tracker = MlflowTracker.start(run)
        tracker.close("success")
        children.append(tracker.run_id)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parents = {client.get_run(child).data.tags["mlflow.parentRunId"] for child in children}
    assert len(parents) == 1 and len(set(children)) == 2
    parent = client.get_run(parents.pop())
    assert parent.info.run_name == "r-kfold" and parent.info.status == "FINISHED"
    assert client.get_run(children[0]).data.params == {"lr": "0.1"}
