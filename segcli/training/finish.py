"""What happens once the last epoch is done: the worst validation images at the best checkpoint, the best
epoch's confusion matrix and the run's files in the trackers, the final run record, and the result `train()`
returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pytorch_lightning.callbacks import EarlyStopping

from segcli.drawing.pictures import PREDICTION_COLUMNS, render_confusion_matrix, render_grid
from segcli.files import save_image
from segcli.inference.engine import InferenceOptions
from segcli.inference.evaluate import Evaluation, evaluate_pairs
from segcli.inference.loading import open_model
from segcli.training.report import report_details
from segcli.training.trackers import Trackers, WandbTracker


@dataclass
class TrainResult:
    run_name: str
    run_dir: Path
    checkpoints: dict[str, Path]
    best_epoch: int | None
    """1-based, like every epoch segcli reports."""
    best_metrics: dict[str, float]
    history: list[dict[str, float]]
    epochs_run: int
    stopped_early: bool
    seconds: float
    """The run's time (RunRecord.seconds): what `segcli report` shows for it too."""
    parameters: int
    wandb_mode: str | None
    wandb_dir: str | None = None
    trackers: dict[str, str] = field(default_factory=dict)
    """Where each tracker that logged the run has it: "MLflow run" -> "<run id> in <tracking URI>", ..."""
    average_metrics: dict[str, float] = field(default_factory=dict)
    average_epochs: tuple[int, int] | None = None
    """The first and last epoch in average_model.pth (1-based)."""
    average_start: int | None = None
    """The epoch the experiment starts the average at; an extended run's average can have begun before it."""
    report_files: list[Path] = field(default_factory=list)
    interrupted: bool = False
    resumed_from: Path | None = None
    resumed_after: int = 0
    """The epochs the state resumed from had completed (later epochs of a killed run are trained again)."""
    finished_before: bool = False
    primary: bool = True
    """False in the extra processes of a multi-process run: they report nothing."""

    @classmethod
    def finished(cls, run_name: str, run_dir, record) -> TrainResult:
        """What `--resume` of a run that already ended returns: nothing to do."""
        checkpoints = {path.name: path for path in run_dir.weights() if path.exists()}
        return cls(run_name=run_name, run_dir=run_dir.path, checkpoints=checkpoints, best_epoch=None, best_metrics={},
                   history=[], epochs_run=record.epochs_completed, stopped_early=False, seconds=record.seconds or 0.0,
                   parameters=0, wandb_mode=None, finished_before=True)  # fmt: skip


def worst_images(plan, run_dir, device, count: int, writer) -> Evaluation:
    """Score every val image on its own with the best checkpoint, as validation scored it (through `evaluate`'s
    code: the val transforms on image and mask), so the pictures explain the val metric; the `count` worst are
    drawn on the background writer, while the main thread makes the trackers' pictures of them."""
    predictor = open_model(run_dir.best, device)
    options = InferenceOptions(batch_size=plan.experiment.batch_size)
    evaluation = evaluate_pairs(predictor, plan.pairs["val"], options, "val", keep_worst=count, at_image_size=False)
    samples = evaluation.worst_samples
    title = f"{run_dir.path.name}: the {len(samples)} val images with the lowest mIoU at the best checkpoint"

    def draw() -> None:
        grid = render_grid(samples, plan.class_names, plan.task.never_scored, PREDICTION_COLUMNS, title)
        save_image(run_dir.worst_png, grid)

    writer.submit(run_dir.worst_png, draw)
    return evaluation


def _log_to_trackers(trackers: Trackers, plan, history, run_name: str, evaluation: Evaluation | None,
                     step: int) -> None:  # fmt: skip
    if history.best_matrix is not None:
        stage = history.monitor.metric.split("/")[0]  # val, or val_ema: the monitored weights
        title = f"{run_name}, {stage} at epoch {history.best_epoch} (best)"
        picture = render_confusion_matrix(history.best_matrix, plan.class_names, title)
        trackers.log_picture("val/confusion_matrix", picture, step)
    if evaluation is not None and evaluation.worst_samples:
        scores = {score.name: score for score in evaluation.per_image}
        trackers.log_worst(evaluation.worst_samples, [scores[sample.name] for sample in evaluation.worst_samples],
                           plan.class_names, plan.task.never_scored, step)  # fmt: skip


def finish_run(plan, trainer, callbacks, *, trackers: Trackers, record, options, run_seconds) -> TrainResult:
    """`callbacks`: the run's `RunCallbacks`; `record` its RunRecord, written last; `run_seconds` its time so far."""
    exp, history, average, stop = plan.experiment, callbacks.history, callbacks.average, callbacks.stop
    run_dir, writer = options.folder, callbacks.weights.writer
    average_metrics = dict(average.metrics) if average is not None else {}
    result = TrainResult(
        run_name=options.run_name,
        run_dir=run_dir.path,
        checkpoints={},
        best_epoch=history.best_epoch,
        best_metrics=history.best_metrics,
        history=history.history,
        epochs_run=trainer.current_epoch,
        stopped_early=any(isinstance(cb, EarlyStopping) and cb.stopped_epoch for cb in trainer.callbacks),
        seconds=0.0,
        parameters=sum(p.numel() for p in plan.task.model.parameters()),
        wandb_mode=None,
        average_metrics=average_metrics,
        average_epochs=(average.first_epoch, history.latest["epoch"]) if average_metrics else None,
        average_start=exp.average_start,
        interrupted=stop.requested,
        primary=trainer.is_global_zero,
    )
    if not trainer.is_global_zero:
        return result
    # the curves, with the average's star, drawn while the worst images are found
    callbacks.report.submit(extra=average_metrics, final=True)
    evaluation = None
    count = exp.log_predictions.worst
    if count and run_dir.best.is_file() and not stop.requested:
        evaluation = worst_images(plan, run_dir, trainer.strategy.root_device, count, writer)
    _log_to_trackers(trackers, plan, history, options.run_name, evaluation, trainer.global_step)
    writer.wait()  # the worst images and the final pictures (a short run draws them only now)
    # Written last, once the writer is idle: its per-epoch run.json can no longer land after this one.
    record.finished = not stop.requested
    record.report = report_details(history, plan.class_names, average_metrics)
    record.seconds = result.seconds = run_seconds()
    record.write(run_dir)
    result.checkpoints = {path.name: path for path in run_dir.weights() if path.exists()}
    result.report_files = [path for path in (run_dir.metrics_csv, run_dir.results_png, run_dir.per_class_png,
                                             run_dir.confusion_png, run_dir.worst_png) if path.exists()]  # fmt: skip
    trackers.log_files(list(result.checkpoints.values()), result.report_files)
    wandb = trackers.of(WandbTracker)
    if wandb is not None:
        result.wandb_mode, result.wandb_dir = wandb.mode, wandb.folder
    result.trackers = trackers.describe()
    return result
