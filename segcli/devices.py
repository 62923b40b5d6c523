"""Device selection, the same for training and inference: `--cpu`, one GPU by index, or several devices; and
which of several training processes this one is."""

from __future__ import annotations

from typing import Any

import torch

from segcli.errors import ConfigError


def _missing_gpu(key: str, wanted: Any, count: int) -> ConfigError:
    have = f"only {count} CUDA GPU{'s' if count != 1 else ''}" if count else "no CUDA GPU"
    return ConfigError(
        f"{key} {wanted} was requested but this machine has {have}; run on the CPU with `--cpu` "
        "(or `gpu: null` in the experiment: GPU 0 when there is one, else the CPU)"
    )


def select_devices(
    gpu: int | None = None, devices: int | list[int] | None = None, cpu: bool = False, gpu_key: str = "gpu:"
) -> tuple[str, Any]:
    """(accelerator, devices) as Lightning takes them. `devices: N` without a GPU means N CPU processes."""
    count = 0 if cpu else torch.cuda.device_count()
    if devices is not None:
        if not count:
            return "cpu", devices if isinstance(devices, int) else len(devices)
        wanted = max(devices) + 1 if isinstance(devices, list) else devices
        if wanted > count:
            raise _missing_gpu("devices:", devices, count)
        return "gpu", devices
    if cpu:
        return "cpu", 1
    if gpu is None:
        return ("gpu", [0]) if count else ("cpu", 1)
    if gpu >= count:
        raise _missing_gpu(gpu_key, gpu, count)
    return "gpu", [gpu]


def inference_device(gpu: int | None = None, cpu: bool = False) -> torch.device:
    """One device for predict/evaluate/export: --cpu, --gpu N, else cuda:0 when there is a GPU."""
    accelerator, devices = select_devices(gpu=gpu, cpu=cpu, gpu_key="--gpu")
    return torch.device(f"cuda:{devices[0]}") if accelerator == "gpu" else torch.device("cpu")


def is_primary_process() -> bool:
    """The first of several training processes, or the only one: the one that writes the run's files, starts
    the trackers and reports. Its rank is Lightning's, read from the launcher's environment (torchrun, SLURM,
    Lightning's own DDP launcher) and updated when a Trainer starts the processes itself."""
    from lightning_fabric.utilities.rank_zero import rank_zero_only  # here: predict and evaluate never load Lightning

    return rank_zero_only.rank == 0
