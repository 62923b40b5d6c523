"""The plan's only contact with a model: a real training step at the planned crop and precision (time and
memory), and the optional learning-rate range test (`find-lr`'s code) on the real data.

Time: on a GPU the wall clock between synchronisations; on the CPU the process's CPU time per torch thread,
which is the wall time of an idle machine: a plan made while other work shares the CPU is the plan for the
machine itself, not for that moment.

Memory: on a GPU the allocator's peak; on the CPU, which has no allocator statistics, the bytes the step
keeps for backward (every tensor autograd saves, counted once) plus the weights, their gradients and the
optimizer's state: what grows with the batch is what autograd saves.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from segcli.config.schema import Experiment
from segcli.models.optim import build_optimizer
from segcli.models.task import SegmentationTask
from segcli.training.benchmark import autocast, synchronize, train_step
from segcli.training.lr_finder import find_learning_rate

TIMED_STEPS = 2  # after one warm-up step
LR_TEST_STEPS = 100


class SavedTensorBytes:
    """Counts the bytes of the tensors autograd saves for backward while active (each storage once)."""

    def __init__(self) -> None:
        self.bytes = 0
        self._seen: set[int] = set()
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor)

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self._seen:
            self._seen.add(storage.data_ptr())
            self.bytes += storage.nbytes()
        return tensor

    def __enter__(self) -> SavedTensorBytes:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        self._hooks.__exit__(*exc_info)


class DeviceProbe:
    """Measures on `cuda:0` or the CPU; the learning-rate test reads the dataset at `dataset`."""

    def __init__(self, device: str, dataset: Path, lr_steps: int = LR_TEST_STEPS):
        self.device = torch.device("cuda", 0) if device == "gpu" else torch.device("cpu")
        self.dataset = dataset
        self.lr_steps = lr_steps

    def _task(self, exp: Experiment, class_names: list[str]) -> SegmentationTask:
        torch.manual_seed(exp.seed)
        plain = exp.model_copy(update={"loss": exp.loss.model_copy(update={"class_weights": None})})
        return SegmentationTask(plain.model_dump(mode="json"), class_names).to(self.device)

    def _batch(self, exp: Experiment, classes: int, batch: int, size: tuple[int, int]):
        generator = torch.Generator().manual_seed(0)
        images = torch.randn(batch, exp.model.in_channels, *size, generator=generator).to(self.device)
        masks = torch.randint(0, classes, (batch, *size), generator=generator).to(self.device)
        if exp.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, masks

    def _training(self, exp: Experiment, class_names: list[str], batch: int, size: tuple[int, int]):
        """A step function on a fresh model, and the model and optimizer it trains."""
        task = self._task(exp, class_names).train()
        optimizer = build_optimizer(exp.optimizer, task.parameters(), exp.lr)
        scaler = torch.amp.GradScaler(self.device.type, enabled=exp.precision == "16-mixed")
        images, masks = self._batch(exp, len(class_names), batch, size)
        return lambda: train_step(task, optimizer, scaler, images, masks, exp, self.device), task, optimizer, images

    def train_memory(self, exp: Experiment, class_names: list[str], batch: int, size: tuple[int, int]) -> int:
        step, task, optimizer, images = self._training(exp, class_names, batch, size)
        if self.device.type == "cuda":
            synchronize(self.device)
            before = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            step()
            synchronize(self.device)
            return int(torch.cuda.max_memory_allocated(self.device) - before)
        with SavedTensorBytes() as saved:
            step()
        weights = sum(p.numel() * p.element_size() for p in task.parameters())
        state = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
                    if torch.is_tensor(t))  # fmt: skip
        return saved.bytes + 2 * weights + state + images.numel() * images.element_size()

    def train_seconds(self, exp: Experiment, class_names: list[str], batch: int, size: tuple[int, int]) -> float:
        step, *_ = self._training(exp, class_names, batch, size)
        step()  # warm-up: the first step pays one-off costs (allocations, optimizer state)
        return statistics.median(self._timed(step) for _ in range(TIMED_STEPS))

    def _timed(self, step) -> float:
        clock = time.perf_counter if self.device.type == "cuda" else time.process_time
        started = clock()
        step()
        synchronize(self.device)
        elapsed = clock() - started
        return elapsed if self.device.type == "cuda" else elapsed / torch.get_num_threads()

    @torch.inference_mode()
    def val_seconds(self, exp: Experiment, class_names: list[str], batch: int, size: tuple[int, int]) -> float:
        task = self._task(exp, class_names).eval()
        images, _ = self._batch(exp, len(class_names), batch, size)

        def forward() -> None:
            with autocast(exp, self.device):
                task.model(images)

        forward()  # warm-up
        return self._timed(forward)  # inference takes the same time every pass

    def learning_rate(self, exp: Experiment, class_names: list[str]) -> float | None:
        finding = find_learning_rate(exp, dataset=self.dataset, class_names=class_names, name="plan",
                                     force_cpu=self.device.type == "cpu", min_lr=1e-6, max_lr=1.0,
                                     steps=self.lr_steps, plot=None)  # fmt: skip
        return finding.suggestion
