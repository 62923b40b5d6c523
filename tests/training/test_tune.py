"""`segcli tune`'s core: worker scheduling, seeded sampling, trial rows, and a trial pruned by the median rule."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from segcli.artifacts.folders import RunDir, TuneDir
from segcli.errors import ConfigError
from segcli.training.study import MEDIAN_STARTUP_TRIALS, TrialSeededTpe, make_pruner, open_study
from segcli.training.tune import TuneOptions, prepare_tune, run_trials
from segcli.training.tune_results import TuneRecord, read_results, write_results
from segcli.training.workers import run_workers, worker_devices
from tests.support import DEMO_CLASSES

EXPERIMENTS = """
model: {arch: Unet, encoder_name: resnet18, encoder_weights: null, classes: 4,
        params: {decoder_channels: [16, 16, 8, 8, 8]}}
defaults: {batch_size: 4, max_epochs: 2, num_workers: 0, lr: 0.001, log_predictions: {count: 0, worst: 0},
           average: null}
experiments:
  base: {}
search:
  lr: {log_uniform: [0.0001, 0.1]}
  batch_size: {choice: [2, 4]}
"""


def test_several_workers_take_one_gpu_each_or_share_the_cpu():
    assert worker_devices(1, gpus=4) == [None]  # one worker: the experiment's own `gpu` (or --gpu) decides
    assert worker_devices(2, gpus=4) == [0, 1]
    assert worker_devices(4, gpus=4) == [0, 1, 2, 3]
    assert worker_devices(3, gpus=0) == [None, None, None]
    assert worker_devices(3, force_cpu=True, gpus=2) == [None, None, None]
    with pytest.raises(ConfigError, match="--workers 3: this machine has 2 GPUs and each worker trains on one"):
        worker_devices(3, gpus=2)
    with pytest.raises(ConfigError, match="--gpu picks the one GPU of a single worker"):
        worker_devices(2, gpu=1, gpus=2)


def exit_with(code: int) -> None:
    """A worker's target is pickled by reference: not `sys.exit`, which W&B replaces with its own hook while a
    run is open in this process (an earlier test's), so the reference no longer names it."""
    raise SystemExit(code)


def test_each_worker_is_a_process_of_its_own_and_its_exit_code_comes_back_in_order():
    assert run_workers(exit_with, [(0,), (3,), (0,)]) == [0, 3, 0]


def draws(studies: list[optuna.Study], count: int) -> list[tuple[int, float, int]]:
    """(number, lr, batch size) of `count` trials asked from the studies in turn, each told a value."""
    result = []
    for index in range(count):
        study = studies[index % len(studies)]
        trial = study.ask()
        result.append((trial.number, trial.suggest_float("lr", 1e-4, 1e-1, log=True),
                       trial.suggest_categorical("batch_size", [2, 4])))  # fmt: skip
        study.tell(trial, 0.5)
    return result


def test_sampling_depends_on_the_seed_and_the_trial_number_only():
    """One process repeats a study exactly; two processes sharing a study (same seed) never draw the same point."""
    alone = draws([optuna.create_study(sampler=TrialSeededTpe(42))], 6)
    assert alone == draws([optuna.create_study(sampler=TrialSeededTpe(42))], 6)
    storage = optuna.storages.InMemoryStorage()
    pair = [optuna.create_study(storage=storage, study_name="s", sampler=TrialSeededTpe(42), load_if_exists=True)
            for _ in range(2)]  # fmt: skip
    shared = draws(pair, 6)
    assert [number for number, *_ in shared] == list(range(6))
    assert len({lr for _, lr, _ in shared}) == 6
    assert shared == alone  # who asks does not matter, only the number
    assert alone != draws([optuna.create_study(sampler=TrialSeededTpe(7))], 6)


def test_the_pruners():
    assert isinstance(make_pruner("median", 10), optuna.pruners.MedianPruner)
    assert isinstance(make_pruner("hyperband", 10), optuna.pruners.HyperbandPruner)
    assert isinstance(make_pruner("none", 10), optuna.pruners.NopPruner)


def _spec(tmp_path: Path, dataset: Path, **options):
    (tmp_path / "tune.yaml").write_text(EXPERIMENTS)
    return prepare_tune(TuneOptions(config_file=tmp_path / "tune.yaml", experiment_name="base", dataset=dataset,
                                    class_names=DEMO_CLASSES.split(","), output_dir=tmp_path / "out", force_cpu=True,
                                    **options))  # fmt: skip


SPACE = {"lr": FloatDistribution(1e-4, 1e-1, log=True), "batch_size": CategoricalDistribution([2, 4])}


def frozen(state: TrialState, lr: float, **attrs) -> optuna.trial.FrozenTrial:
    value = attrs.get("best") if state == TrialState.COMPLETE else None
    return create_trial(state=state, value=value, params={"lr": lr, "batch_size": 4}, distributions=SPACE,
                        user_attrs=attrs)  # fmt: skip


def test_each_row_says_what_happened_to_its_trial_and_reads_back(tmp_path, tiny_dataset):
    spec = _spec(tmp_path, tiny_dataset, trials=5)
    record = TuneRecord.from_spec(spec)
    study = optuna.create_study(direction="maximize")
    for trial in [
        frozen(TrialState.COMPLETE, 0.01, best=0.5, best_epoch=2, epochs=2, seconds=3.5),
        frozen(TrialState.PRUNED, 0.02, best=0.2, best_epoch=1, epochs=1, seconds=1.5, pruned_after=1),
        frozen(TrialState.FAIL, 0.03),  # killed: no error of its own
        frozen(TrialState.COMPLETE, 0.03, best=0.7, best_epoch=1, epochs=2, seconds=3.0, retry_of=2, attempt=2),
        frozen(TrialState.FAIL, 0.04, skipped=True),
        frozen(TrialState.FAIL, 0.05, error="model.encoder_name: unknown encoder 'x'"),
    ]:
        study.add_trial(trial)
    rows = write_results(spec.tune_dir, record, study.get_trials())
    assert [(row.state, row.note) for row in rows] == [
        ("complete", ""),
        ("pruned", "pruned after epoch 1"),
        ("failed", "its process died; retried as trial 3"),
        ("complete", "retry of trial 2"),
        ("skipped", "not run: the study already had its trials"),
        ("failed", "model.encoder_name: unknown encoder 'x'"),
    ]
    best = [line.strip() for line in spec.tune_dir.best_yaml.read_text().splitlines()]
    assert best[0].startswith("# segcli tune, study tune-base: the best of its completed trials by val/mIoU is trial 3")
    assert "lr: 0.03" in best and "batch_size: 4" in best
    record_back, rows_back = read_results(spec.tune_dir.path)
    assert rows_back == rows and record_back.search == record.search


def test_a_trial_below_the_median_is_pruned_stops_and_says_so(tmp_path, tiny_dataset):
    """The median of three completed trials at 0.99 after epoch 1: the next trial's epoch 1 is below it, so its run
    stops after that epoch, as an ordinary finished run folder, and its row says it was pruned."""
    spec = _spec(tmp_path, tiny_dataset, trials=MEDIAN_STARTUP_TRIALS + 1, pruner="median")
    study = open_study(spec, TuneRecord.from_spec(spec))
    for lr in (0.001, 0.002, 0.003)[:MEDIAN_STARTUP_TRIALS]:
        excellent = frozen(TrialState.COMPLETE, lr, best=0.99)
        excellent.intermediate_values = {1: 0.99, 2: 0.99}
        study.add_trial(excellent)

    class Quiet:
        def trial_started(self, *args): ...
        def trial_finished(self, *args): ...
        def epoch_callback(self, number):
            return None  # noqa: E704

        def stop_requested(self): ...

    outcome = run_trials(spec, Quiet())
    (row,) = outcome.rows
    assert (row.number, row.state, row.note, row.epochs) == (3, "pruned", "pruned after epoch 1", 1)
    run_dir = RunDir(spec.tune_dir.path / row.run)
    assert run_dir.best.is_file() and run_dir.metrics_csv.read_text().count("\n") == 2  # header + epoch 1
    csv_row = TuneDir(spec.tune_dir.path).results_csv.read_text().splitlines()[4]
    assert csv_row.startswith("3,tune-base-trial003,pruned,") and csv_row.endswith(",pruned after epoch 1")
