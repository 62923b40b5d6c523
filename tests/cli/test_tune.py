"""`segcli tune` as users run it: bad search blocks, a kill -9 and a restart, two processes on one study,
--workers, and a study's results (tune_results.csv, best.yaml, `segcli report`)."""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from segcli.cli.app import main
from segcli.cli.common import parse_duration
from tests.support import DEMO_CLASSES, wandb_run_groups

EXPERIMENTS = """
model: {arch: Unet, encoder_name: resnet18, encoder_weights: null, classes: 4,
        params: {decoder_channels: [16, 16, 8, 8, 8]}}
defaults: {batch_size: 4, max_epochs: 1, num_workers: 0, lr: 0.001, log_predictions: {count: 0, worst: 0},
           average: null}
experiments:
  one-epoch: {}
  two-epochs: {max_epochs: 2}
search:
  lr: {log_uniform: [0.0001, 0.1]}
  batch_size: {choice: [2, 4]}
"""


def tune_command(dataset: Path, experiment: str, *args) -> list[str]:
    return ["tune", "-c", "tune.yaml", "-e", experiment, "--dataset", str(dataset), "--classes", DEMO_CLASSES,
            "--cpu", "--output-dir", "out", *map(str, args)]  # fmt: skip


def start(cwd: Path, argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "segcli", *argv], cwd=cwd, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip


def results(cwd: Path, study: str) -> list[dict[str, str]]:
    with (cwd / "out" / "tune" / study / "tune_results.csv").open(newline="") as stream:
        return list(csv.DictReader(stream))


def started_trials(stderr: str) -> set[int]:
    return {int(number) for number in re.findall(r"^(?:\[\w+ \d\] )?trial (\d+) \(", stderr, re.MULTILINE)}


# --- mistakes: one error line, exit 2, nothing created -------------------------------------------------------


@pytest.mark.parametrize(
    ("search", "args", "fragment"),
    [
        ("search: {lrr: {log_uniform: [0.0001, 0.1]}}", [], "search.lrr: unknown key 'lrr'; did you mean 'lr'?"),
        ("search: {lr: {uniform: [0.1, 0.01]}}", [], "search.lr: empty range [0.1, 0.01]"),
        ("search: {model.encoder_name: {log_uniform: [1, 2]}}", [], "samples numbers but model.encoder_name is "
                                                                    "'resnet18'"),
        ("search: {model.encoder_name: {choice: [resnet18, resnet81]}}", [], "unknown encoder 'resnet81'"),
        ("", [], "no `search:` block"),
        (None, ["--metric", "val/mIOU"], "--metric val/mIOU: it is never logged; did you mean 'val/mIoU'"),
        (None, ["--time", "2 hours"], "--time 2 hours: write a duration such as 2h"),
        (None, ["--pruner", "asha"], "--pruner asha: use one of median, hyperband, none"),
        (None, ["--study", "a/b"], "--study 'a/b': use letters, digits"),
        (None, ["--storage", "nosuchdb://host/db"], "--storage nosuchdb://host/db: cannot open the study"),
        (None, ["--workers", 2, "--gpu", 0], "--gpu picks the one GPU of a single worker"),
    ],
)  # fmt: skip
def test_a_mistake_is_one_error_line_and_creates_nothing(search, args, fragment, tiny_dataset, in_tmp_cwd, capsys):
    text = EXPERIMENTS if search is None else EXPERIMENTS[: EXPERIMENTS.index("search:")] + search
    (in_tmp_cwd / "tune.yaml").write_text(text)
    sys.argv = ["segcli", *tune_command(tiny_dataset, "one-epoch", *args)]
    with pytest.raises(SystemExit) as stopped:
        main()
    out, err = capsys.readouterr()
    assert stopped.value.code == 2, (out, err)
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and "Traceback" not in out + err, err
    assert fragment in err, err
    assert sorted(path.name for path in in_tmp_cwd.iterdir()) == ["tune.yaml"]


def test_durations_read_as_people_write_them():
    assert [parse_duration(text, "--time") for text in ("2h", "90m", "1h30m", "600s", "45", "1.5h", None)] == [
        7200, 5400, 5400, 600, 45, 5400, None,
    ]  # fmt: skip


# --- resumable, several processes ------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_tune_killed_mid_trial_continues_and_ends_with_exactly_n_trials(tiny_dataset, in_tmp_cwd):
    (in_tmp_cwd / "tune.yaml").write_text(EXPERIMENTS)
    argv = tune_command(tiny_dataset, "two-epochs", "--trials", 3)
    first = start(in_tmp_cwd, argv)
    for line in first.stderr:
        if line.startswith("trial 1: epoch 1/2"):  # trial 1 is half-way
            first.send_signal(signal.SIGKILL)
            break
    first.wait(timeout=600)
    assert first.returncode == -signal.SIGKILL
    second = subprocess.run([sys.executable, "-m", "segcli", *argv], cwd=in_tmp_cwd, capture_output=True, text=True,
                            timeout=1200)  # fmt: skip
    assert second.returncode == 0, second.stderr[-3000:]
    rows = results(in_tmp_cwd, "tune-two-epochs")
    numbers = [int(row["trial"]) for row in rows]
    assert len(numbers) == len(set(numbers)) == 4
    assert sum(row["state"] in ("complete", "pruned") for row in rows) == 3
    dead, retry = rows[1], rows[2]
    assert (dead["state"], dead["note"]) == ("failed", "its process died; retried as trial 2")
    assert retry["note"] == "retry of trial 1" and (retry["lr"], retry["batch_size"]) == (
        dead["lr"],
        dead["batch_size"],
    )
    folders = sorted(path.name for path in (in_tmp_cwd / "out" / "tune" / "tune-two-epochs").glob("tune-*"))
    assert folders == [f"tune-two-epochs-trial00{number}" for number in range(4)]  # one folder per trial, the dead kept
    assert started_trials(second.stderr) == {2, 3}


@pytest.mark.slow
def test_two_processes_on_one_sqlite_study_run_disjoint_trials(tiny_dataset, in_tmp_cwd):
    (in_tmp_cwd / "tune.yaml").write_text(EXPERIMENTS)
    argv = tune_command(tiny_dataset, "two-epochs", "--trials", 4)
    processes = [start(in_tmp_cwd, argv) for _ in range(2)]  # at once: both create the study
    outputs = [process.communicate(timeout=1800) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], [err[-2000:] for _, err in outputs]
    ran = [started_trials(err) for _, err in outputs]
    assert ran[0] and ran[1] and not ran[0] & ran[1], (ran, [err[-2000:] for _, err in outputs])
    rows = results(in_tmp_cwd, "tune-two-epochs")
    done = {int(row["trial"]) for row in rows if row["state"] in ("complete", "pruned")}
    assert len(done) == 4 and done == (ran[0] | ran[1]) - {int(r["trial"]) for r in rows if r["state"] == "skipped"}
    assert len({row["lr"] for row in rows if int(row["trial"]) in done}) == 4  # the same seed, never the same point


@pytest.mark.slow
def test_workers_split_the_trials_of_one_study(tiny_dataset, in_tmp_cwd):
    """--workers 2 without a GPU: two worker processes on the CPU, the scheduling GPUs would get."""
    (in_tmp_cwd / "tune.yaml").write_text(EXPERIMENTS)
    result = subprocess.run([sys.executable, "-m", "segcli", *tune_command(tiny_dataset, "one-epoch", "--trials", 3,
                            "--workers", 2)], cwd=in_tmp_cwd, capture_output=True, text=True, timeout=1200)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    by_worker = [{int(n) for n in re.findall(rf"^\[worker {w}\] trial (\d+) \(", result.stderr, re.M)} for w in (1, 2)]
    assert by_worker[0] and by_worker[1] and not by_worker[0] & by_worker[1], result.stderr[-3000:]
    rows = results(in_tmp_cwd, "tune-one-epoch")
    assert sum(row["state"] in ("complete", "pruned") for row in rows) == 3
    assert "study tune-one-epoch" in result.stdout and "3 complete" in result.stdout


POSTGRES = os.environ.get("SEGCLI_TEST_POSTGRES")


@pytest.mark.slow
@pytest.mark.skipif(not POSTGRES, reason="SEGCLI_TEST_POSTGRES names no PostgreSQL database (README: Tuning)")
def test_a_study_in_a_postgresql_database(tiny_dataset, in_tmp_cwd):
    """SEGCLI_TEST_POSTGRES=postgresql+psycopg2://segcli:secret@localhost/studies, set up as README's Tuning says."""
    (in_tmp_cwd / "tune.yaml").write_text(EXPERIMENTS)
    study = f"pg-{os.getpid()}-{in_tmp_cwd.name}"
    argv = tune_command(tiny_dataset, "one-epoch", "--trials", 1, "--storage", POSTGRES, "--study", study)
    result = subprocess.run([sys.executable, "-m", "segcli", *argv], cwd=in_tmp_cwd, capture_output=True, text=True,
                            timeout=1200)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert [row["state"] for row in results(in_tmp_cwd, study)] == ["complete"]
    assert not (in_tmp_cwd / "out" / "tune" / study / "study.db").exists()


# --- a study's results ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def study(tiny_dataset, tmp_path_factory):
    """Two one-epoch trials logged to W&B and MLflow, then `segcli train` of the study's best.yaml at the same
    seed."""
    folder = tmp_path_factory.mktemp("study")
    (folder / "tune.yaml").write_text(EXPERIMENTS)
    argv = tune_command(tiny_dataset, "one-epoch", "--trials", 2, "--tracker", "wandb,mlflow")
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}  # the local store
    tuned = subprocess.run([sys.executable, "-m", "segcli", *argv], cwd=folder, capture_output=True, text=True,
                           timeout=1200, env=env)  # fmt: skip
    assert tuned.returncode == 0, tuned.stderr[-3000:]
    best_yaml = folder / "out" / "tune" / "tune-one-epoch" / "best.yaml"
    trained = subprocess.run([sys.executable, "-m", "segcli", "train", "-c", str(best_yaml), "-e", "one-epoch",
                              "--dataset", str(tiny_dataset), "--classes", DEMO_CLASSES, "--cpu", "--output-dir",
                              "again"], cwd=folder, capture_output=True, text=True, timeout=1200)  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    return folder, tuned, trained


@pytest.mark.slow
def test_best_yaml_trains_and_reproduces_its_trials_metric(study):
    folder, tuned, _ = study
    rows = results(folder, "tune-one-epoch")
    best = max((row for row in rows if row["state"] == "complete"), key=lambda row: float(row["best val/mIoU"]))
    header = (folder / "out" / "tune" / "tune-one-epoch" / "best.yaml").read_text().splitlines()[0]
    assert f"is trial {best['trial']} (run {best['run']})" in header
    with (folder / "again" / "checkpoints" / "best-one-epoch" / "metrics.csv").open(newline="") as stream:
        again = list(csv.DictReader(stream))
    assert float(again[0]["val/mIoU"]) == pytest.approx(float(best["best val/mIoU"]), abs=1e-6)


@pytest.mark.slow
def test_each_trial_is_an_ordinary_run_and_its_row_holds_its_scores(study):
    folder, _, _ = study
    tune_folder = folder / "out" / "tune" / "tune-one-epoch"
    for row in results(folder, "tune-one-epoch"):
        with (tune_folder / row["run"] / "metrics.csv").open(newline="") as stream:
            epochs = list(csv.DictReader(stream))
        assert float(row["best val/mIoU"]) == pytest.approx(max(float(epoch["val/mIoU"]) for epoch in epochs))
        assert int(row["epochs"]) == len(epochs) and (tune_folder / row["run"] / "ckpt_best.pth").is_file()
    assert set(wandb_run_groups(folder / "out")) == {"tune-one-epoch"}  # every trial in the study's W&B group


@pytest.mark.slow
def test_each_trial_is_an_mlflow_child_run_of_the_study_with_the_runs_history(study):
    """--tracker reaches every trial; MLflow's history of each trial equals its metrics.csv."""
    from mlflow.tracking import MlflowClient

    folder, _, _ = study
    client = MlflowClient(f"sqlite:///{folder / 'out' / 'mlflow.db'}")
    runs = {run.info.run_name: run for run in client.search_runs(client.get_experiment_by_name("segcli").experiment_id)}
    parent = runs.pop("tune-one-epoch")
    rows = results(folder, "tune-one-epoch")
    assert sorted(runs) == sorted(row["run"] for row in rows)
    for row in rows:
        run = runs[row["run"]]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        with (folder / "out" / "tune" / "tune-one-epoch" / row["run"] / "metrics.csv").open(newline="") as stream:
            expected = [float(epoch["val/mIoU"]) for epoch in csv.DictReader(stream)]
        logged = [metric.value for metric in client.get_metric_history(run.info.run_id, "val/mIoU")]
        assert logged == pytest.approx(expected, abs=1e-6)


@pytest.mark.slow
def test_report_shows_the_study_from_its_folder_alone(study):
    folder, tuned, _ = study
    tune_folder = folder / "out" / "tune" / "tune-one-epoch"
    for picture in ("optimization_history.png", "param_slices.png"):
        (tune_folder / picture).unlink()
    (tune_folder / "study.db").rename(folder / "elsewhere.db")
    reported = subprocess.run([sys.executable, "-m", "segcli", "report", str(tune_folder)], cwd=folder,
                              capture_output=True, text=True, timeout=600)  # fmt: skip
    assert reported.returncode == 0, reported.stderr[-3000:]
    table = [line for line in tuned.stdout.splitlines() if line.startswith("│")]
    assert table and all(line in reported.stdout for line in table)
    assert (tune_folder / "optimization_history.png").is_file() and (tune_folder / "param_slices.png").is_file()
    assert "redrew" in reported.stdout


def test_the_entry_point_does_not_run_the_cli_when_a_worker_imports_it():
    """multiprocessing's spawn imports `segcli.__main__` in each --workers process; it must not start the CLI."""
    result = subprocess.run([sys.executable, "-c", "import segcli.__main__"], capture_output=True, text=True,
                            timeout=120, env={**os.environ})  # fmt: skip
    assert result.returncode == 0 and result.stdout == "" and "Usage" not in result.stderr
