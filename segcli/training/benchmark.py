"""`segcli benchmark`: where training time goes, as ratios measured side by side in one process.

Sections, each on fresh DataLoaders built exactly as `train` builds them:
1. loader: the real train DataLoader alone (decode, transforms, collate);
2. model: forward + loss + backward + optimizer step on one batch held on the device;
3. train: the real Lightning step as `segcli train` runs it (metrics, logging, checkpoint callbacks);
4. bare: a plain PyTorch for-loop over the same loader with the same model, loss, precision and batch;
5. whole run: a real `train()` of two epochs, split into its fixed start-up (until the first step),
   the epochs' steps, and the work at each epoch's end (checkpoints, report, logging), as shares.
Throughput is counted after warm-up steps, between two device synchronisations.
"""

from __future__ import annotations

import platform
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger

from segcli.artifacts.folders import RunDir
from segcli.config.schema import Experiment
from segcli.files import BackgroundWriter
from segcli.models.metrics import ConfusionMatrix, predictions
from segcli.models.optim import build_optimizer
from segcli.models.task import SegmentationTask
from segcli.training.callbacks.checkpoints import TrainingState, WeightFiles
from segcli.training.callbacks.history import EpochHistory
from segcli.training.loaders import make_datasets, make_loaders
from segcli.training.preflight import Plan, preflight
from segcli.training.run import RunOptions, build_trainer, quiet_libraries, train

WARMUP = 3  # first steps pay one-off costs (kernel selection, allocator growth, worker start)
ROUNDS = 2


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(exp: Experiment, device: torch.device):
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(exp.precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def _fresh_task(exp: Experiment, class_names: list[str], device: torch.device) -> SegmentationTask:
    torch.manual_seed(exp.seed)
    return SegmentationTask(exp.model_dump(mode="json"), class_names).to(device)


def _on_device(batch, device: torch.device, exp: Experiment):
    images, masks = (t.to(device, non_blocking=True) for t in batch)
    if exp.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, masks


def _batches(loader):
    """Batches across as many epochs as needed (small datasets have fewer batches than the steps timed)."""
    epoch = 0
    while True:
        loader.sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def _loader_rate(loader, steps: int, batch_size: int) -> float:
    iterator = _batches(loader)
    for _ in range(WARMUP):
        next(iterator)
    started = time.perf_counter()
    for _ in range(steps):
        next(iterator)
    return steps * batch_size / (time.perf_counter() - started)


def train_step(task: SegmentationTask, optimizer, scaler, images, masks, exp: Experiment, device) -> torch.Tensor:
    with autocast(exp, device):
        logits = task(images)  # the model as training runs it (padded to its size multiple)
    loss = task.criterion(logits, masks)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return logits


def _model_rate(plan: Plan, batch, device, steps: int) -> tuple[float, float]:
    """Images/s of the model alone, and the time of one confusion-matrix update (seconds)."""
    exp = plan.experiment
    task = _fresh_task(exp, plan.class_names, device)
    optimizer = build_optimizer(exp.optimizer, task.parameters(), exp.lr)
    scaler = torch.amp.GradScaler(device.type, enabled=exp.precision == "16-mixed")
    images, masks = _on_device(batch, device, exp)
    for _ in range(WARMUP):
        logits = train_step(task, optimizer, scaler, images, masks, exp, device)
    synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        train_step(task, optimizer, scaler, images, masks, exp, device)
    synchronize(device)
    rate = steps * len(images) / (time.perf_counter() - started)

    metric = ConfusionMatrix(len(plan.class_names), exp.ignore_index).to(device)
    metric.update(predictions(logits.detach()), masks)  # warm-up
    synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):  # what the step adds for metrics: predictions and one confusion-matrix update
        metric.update(predictions(logits.detach()), masks)
    synchronize(device)
    return rate, (time.perf_counter() - started) / steps


def _bare_rate(plan: Plan, datasets, device, steps: int) -> float:
    exp = plan.experiment
    task = _fresh_task(exp, plan.class_names, device)
    optimizer = build_optimizer(exp.optimizer, task.parameters(), exp.lr)
    scaler = torch.amp.GradScaler(device.type, enabled=exp.precision == "16-mixed")
    loader = make_loaders(plan, datasets)["train"]
    started = None
    for step, batch in enumerate(_batches(loader)):
        if step == WARMUP:
            synchronize(device)
            started = time.perf_counter()
        if step == WARMUP + steps:
            break
        images, masks = _on_device(batch, device, exp)
        train_step(task, optimizer, scaler, images, masks, exp, device)
    synchronize(device)
    return steps * exp.batch_size / (time.perf_counter() - started)


class _Throughput(pl.Callback):
    def __init__(self, device: torch.device, steps: int, batch_size: int):
        self.device, self.steps, self.batch_size = device, steps, batch_size
        self.started = self.rate = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step  # counts across epochs, unlike batch_idx
        if step == WARMUP:
            synchronize(self.device)
            self.started = time.perf_counter()
        elif step == WARMUP + self.steps:
            synchronize(self.device)
            self.rate = self.steps * self.batch_size / (time.perf_counter() - self.started)


def _train_rate(plan: Plan, datasets, device, steps: int) -> tuple[float, Any]:
    exp = plan.experiment
    task = _fresh_task(exp, plan.class_names, torch.device("cpu"))
    loaders = make_loaders(plan, datasets)
    timer = _Throughput(device, steps, exp.batch_size)
    utilization = None
    writer = BackgroundWriter()
    with tempfile.TemporaryDirectory() as scratch:
        run_dir = RunDir(Path(scratch))
        history = EpochHistory(exp.monitor)  # the checkpoint callbacks of a run, at their epoch ends
        weights = WeightFiles(history=history, run_dir=run_dir, writer=writer, info=plan.info, run_name="benchmark")
        trainer = build_trainer(
            plan,
            logger=CSVLogger(scratch),
            callbacks=[history, weights, TrainingState(run_dir.state, exp.state_every_seconds), timer],
            progress=False,
            writer=writer,
            max_epochs=-1,
            max_steps=WARMUP + steps,
            limit_val_batches=0,
            default_root_dir=scratch,
        )
        trainer.fit(task, loaders["train"], weights_only=True)
        writer.close()
        if device.type == "cuda":
            try:
                utilization = torch.cuda.utilization(device)
            except Exception:  # noqa: BLE001 - needs pynvml; optional information
                utilization = None
    return timer.rate, utilization


class _Phases(pl.Callback):
    """Wall-clock marks of a whole run: first step, each epoch's steps, each epoch's end."""

    def __init__(self):
        self.started = time.perf_counter()
        self.first_step = None
        self.epoch_end_seconds: list[float] = []
        self.epoch_seconds: list[float] = []
        self._epoch_started = self._end_started = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self.first_step is None:
            self.first_step = time.perf_counter()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        now = time.perf_counter()
        if self._end_started is not None:  # the previous epoch's end, Lightning's and segcli's, until now
            self.epoch_end_seconds.append(now - self._end_started)
        self._epoch_started = now

    def on_validation_end(self, trainer, pl_module) -> None:
        self._end_started = time.perf_counter()
        self.epoch_seconds.append(self._end_started - self._epoch_started)

    def on_train_end(self, trainer, pl_module) -> None:
        self.epoch_end_seconds.append(time.perf_counter() - self._end_started)


def _whole_run(experiment: Experiment, dataset: Path, class_names: list[str], force_cpu: bool) -> dict[str, Any]:
    """Two real epochs of `train()` in a scratch folder (W&B offline), timed by phase."""
    phases = _Phases()
    exp = experiment.model_copy(update={"max_epochs": 2})
    with tempfile.TemporaryDirectory() as scratch:
        options = RunOptions(dataset=dataset, class_names=class_names, run_name="benchmark", experiment_name="b",
                             output_dir=Path(scratch), offline=True, force_cpu=force_cpu, progress=False,
                             extra_callbacks=[phases])  # fmt: skip
        train(exp, options)
    total = time.perf_counter() - phases.started
    startup = phases.first_step - phases.started
    epoch = sum(phases.epoch_seconds) / len(phases.epoch_seconds)
    epoch_end = sum(phases.epoch_end_seconds[:-1]) / max(1, len(phases.epoch_end_seconds) - 1)
    return {
        "total_seconds": total,
        "startup_seconds": startup,
        "epoch_seconds": epoch,
        "epoch_end_seconds": epoch_end,
        "epoch_end_share_of_epoch": _ratio(epoch_end, epoch),
        "finish_seconds": phases.epoch_end_seconds[-1],
    }


def _ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else float("nan")


def run_benchmark(experiment: Experiment, *, dataset: Path, class_names: list[str], name: str, force_cpu: bool,
                  steps: int, whole_run: bool = True) -> dict[str, Any]:  # fmt: skip
    """Measure every section and return one plain document (the CLI prints it)."""
    quiet_libraries()
    plan = preflight(experiment, dataset=dataset, class_names=class_names, experiment_name=name, force_cpu=force_cpu)
    exp = experiment
    device = torch.device("cuda", plan.devices[0]) if plan.accelerator == "gpu" else torch.device("cpu")
    datasets = make_datasets(plan)
    train_loader = make_loaders(plan, datasets)["train"]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    loader = _loader_rate(train_loader, max(steps, 10), exp.batch_size)
    model, metric_seconds = _model_rate(plan, next(iter(train_loader)), device, steps)
    # Alternated and repeated: the best of each is the least disturbed by the machine's other work.
    trains, bares = [], []
    for _ in range(ROUNDS):
        bares.append(_bare_rate(plan, datasets, device, steps))
        rate, utilization = _train_rate(plan, datasets, device, steps)
        trains.append(rate)
    train, bare = max(trains), max(bares)
    step_seconds = exp.batch_size / train
    return {
        "machine": {
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "cpus": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "experiment": name,
        "arch": f"{exp.model.arch}/{exp.model.encoder_name}",
        "batch_size": exp.batch_size,
        "steps": steps,
        "num_workers": plan.workers,
        "precision": exp.precision,
        "channels_last": exp.channels_last,
        "compile": exp.compile,
        "cache": exp.cache,
        "images_per_s": {"loader": loader, "model": model, "train": train, "bare_loop": bare},
        "all_rounds": {"train": trains, "bare_loop": bares},
        "ratios": {
            "train_vs_model": _ratio(train, model),
            "train_vs_slower_of_loader_and_model": _ratio(train, min(loader, model)),
            "train_vs_bare_loop": _ratio(train, bare),
            "loader_vs_model": _ratio(loader, model),
        },
        "metric_update_ms": metric_seconds * 1000,
        "metric_update_share_of_step": _ratio(metric_seconds, step_seconds),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "gpu_peak_allocated_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        "gpu_utilization_percent": utilization,
        "whole_run": _whole_run(experiment, dataset, class_names, force_cpu) if whole_run else None,
    }
