"""`segcli tune --workers N`: N worker processes on one machine, one GPU each, sharing one study.

Each worker is a process of its own (CUDA, Lightning and the signal handlers are per process), started
with `spawn` so it begins from a clean interpreter, and runs trials until the study has its trials. The
workers coordinate only through the study's storage, exactly as processes on several machines do.
"""

from __future__ import annotations

import multiprocessing
import signal
from collections.abc import Callable, Sequence
from typing import Any

import torch

from segcli.errors import ConfigError


def worker_devices(
    workers: int, force_cpu: bool = False, gpu: int | None = None, gpus: int | None = None
) -> list[int | None]:
    """The GPU index each worker trains on; None: the experiment's own `gpu` (or `--gpu`), or the CPU.

    One worker keeps the experiment's device choice. Several take GPUs 0..N-1, one each; without a GPU (or
    with --cpu) they all train on the CPU, which only pays on a machine with many cores.
    """
    gpus = torch.cuda.device_count() if gpus is None else gpus
    if workers < 1:
        raise ConfigError(f"--workers {workers}: at least 1")
    if workers == 1:
        return [None]
    if gpu is not None:
        raise ConfigError("--gpu picks the one GPU of a single worker; --workers N takes GPUs 0..N-1 itself")
    if force_cpu or gpus == 0:
        return [None] * workers
    if workers > gpus:
        raise ConfigError(
            f"--workers {workers}: this machine has {gpus} GPU{'s' if gpus != 1 else ''} and each worker trains on "
            f"one; use --workers {gpus} (or --cpu)"
        )
    return list(range(workers))


def run_workers(target: Callable[..., Any], jobs: Sequence[tuple]) -> list[int]:
    """Run `target(*job)` in one spawned process per job; wait for all; their exit codes, in order.

    Ctrl-C at a terminal reaches every process of the foreground group: each worker stops after its epoch by
    itself, and this process ignores it while it waits for them.
    """
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=target, args=job, name=f"segcli-worker-{index}")
                 for index, job in enumerate(jobs)]  # fmt: skip
    for process in processes:
        process.start()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # after the starts: workers must not inherit it
    try:
        for process in processes:
            process.join()
    finally:
        signal.signal(signal.SIGINT, previous)
    return [process.exitcode for process in processes]
