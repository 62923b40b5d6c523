"""`plan_dataset()`: fingerprint, target, probes and rules, then every check `train` makes on the result."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from segcli.errors import ConfigError
from segcli.models.registry import hub_reachable
from segcli.planning.budget import PlannedRun, Target, plan
from segcli.planning.fingerprint import Fingerprint, fingerprint
from segcli.planning.probes import DeviceProbe
from segcli.training.preflight import available_memory, preflight
from segcli.training.run import quiet_libraries


@dataclass
class PlanRequest:
    dataset: Path
    name: str
    budget_seconds: float
    device: str | None = None
    """'gpu' or 'cpu'; None: a GPU when there is one."""
    memory_bytes: int | None = None
    """None: the device's free memory."""
    class_names: list[str] | None = None
    domain: str | None = None
    pretrained: bool | None = None
    lr_test: bool = False


@dataclass
class PlanResult:
    run: PlannedRun
    fingerprint: Fingerprint
    target: Target
    seconds: float
    """Planning time, the learning-rate test included when asked for."""


def _target(request: PlanRequest) -> Target:
    gpus = torch.cuda.device_count()
    device = request.device or ("gpu" if gpus else "cpu")
    if device == "gpu" and not gpus:
        raise ConfigError("--device gpu: this machine has no CUDA GPU; plan for the CPU with --device cpu")
    free_ram = available_memory()
    if device == "gpu":
        memory = request.memory_bytes or torch.cuda.mem_get_info(0)[0]
        return Target("gpu", memory, request.budget_seconds, torch.cuda.is_bf16_supported(), free_ram)
    if request.memory_bytes is None and free_ram is None:
        raise ConfigError("cannot read the free memory of this machine; give it with --memory, e.g. --memory 16GB")
    return Target("cpu", request.memory_bytes or free_ram, request.budget_seconds, False, free_ram)


def plan_dataset(request: PlanRequest) -> PlanResult:
    """Plan an experiment for the dataset; it passes every check `segcli train` makes before training."""
    started = time.monotonic()
    quiet_libraries()
    target = _target(request)
    measured = fingerprint(request.dataset, workers=os.cpu_count())
    weights_reachable = request.pretrained is not False and hub_reachable()
    probe = DeviceProbe(target.device, request.dataset)
    run = plan(measured, target, probe, names=request.class_names, domain=request.domain,
               pretrained=request.pretrained, weights_reachable=weights_reachable, lr_test=request.lr_test)  # fmt: skip
    preflight(run.experiment, dataset=request.dataset, class_names=run.class_names, experiment_name=request.name,
              force_cpu=target.device == "cpu")  # fmt: skip
    return PlanResult(run, measured, target, time.monotonic() - started)
