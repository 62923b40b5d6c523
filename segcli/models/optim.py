"""Optimizers and learning-rate schedulers by name: any class of torch.optim / torch.optim.lr_scheduler.

A name is looked up only among those classes; it can never import or call anything else.
"""

from __future__ import annotations

import torch

from segcli.config.schema import OptimizerConfig, SchedulerConfig
from segcli.errors import ConfigError, did_you_mean
from segcli.models.registry import check_params

WARMUP_START = 0.01  # a warm-up starts at this share of `lr`
_SCHEDULER_BASES = (torch.optim.lr_scheduler.LRScheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)


def _classes_in(module, bases: tuple[type, ...], abstract: tuple[type, ...]) -> dict[str, type]:
    """Public classes of `module` deriving from `bases`, without the `abstract` ones."""
    return {
        name: cls
        for name, cls in vars(module).items()
        if isinstance(cls, type) and issubclass(cls, bases) and cls not in abstract and not name.startswith("_")
    }


def optimizer_class(name: str) -> type:
    options = _classes_in(torch.optim, (torch.optim.Optimizer,), (torch.optim.Optimizer,))
    if name not in options:
        raise ConfigError(
            f"optimizer.name: unknown optimizer '{name}' (a class in torch.optim); {did_you_mean(name, options)}"
        )
    return options[name]


def scheduler_class(name: str) -> type:
    # ReduceLROnPlateau is a base class of the module too, but a usable one: only LRScheduler is abstract.
    options = _classes_in(torch.optim.lr_scheduler, _SCHEDULER_BASES, (torch.optim.lr_scheduler.LRScheduler,))
    if name not in options:
        raise ConfigError(
            f"scheduler.name: unknown scheduler '{name}' (a class in torch.optim.lr_scheduler); "
            + did_you_mean(name, options)
        )
    return options[name]


def is_plateau(cfg: SchedulerConfig) -> bool:
    return issubclass(scheduler_class(cfg.name), torch.optim.lr_scheduler.ReduceLROnPlateau)


def build_optimizer(cfg: OptimizerConfig, parameters, lr: float) -> torch.optim.Optimizer:
    cls = optimizer_class(cfg.name)
    if "lr" in cfg.params:
        raise ConfigError("optimizer.params.lr: set the learning rate with the experiment's `lr:` key")
    check_params(cls, cfg.params, "optimizer.params", exclude={"params", "lr"})
    try:
        return cls(parameters, lr=lr, **cfg.params)
    except (ValueError, TypeError) as exc:  # torch.optim validates values (e.g. betas) with ValueError
        raise ConfigError(f"optimizer.params: invalid value for {cfg.name}: {exc}") from None


def build_scheduler(cfg: SchedulerConfig, optimizer: torch.optim.Optimizer, run_length: int | None = None):
    """`run_length`: the scheduler steps of the whole run (epochs, or optimizer steps with `interval: step`).
    A CosineAnnealingLR without `T_max` spans it, after the warm-up: the schedule follows `max_epochs`."""
    cls = scheduler_class(cfg.name)
    check_params(cls, cfg.params, "scheduler.params", exclude={"optimizer"})
    params = dict(cfg.params)
    if cls is torch.optim.lr_scheduler.CosineAnnealingLR and "T_max" not in params and run_length is not None:
        params["T_max"] = max(1, run_length - cfg.warmup_steps)
    if is_plateau(cfg) and cfg.interval != "epoch":
        raise ConfigError(
            f"scheduler.interval: {cfg.name} reacts to a validation metric, which exists once per epoch; "
            "use `interval: epoch`"
        )
    if is_plateau(cfg) and cfg.warmup_steps:
        raise ConfigError(
            f"scheduler.warmup_steps: {cfg.name} follows a validation metric and cannot be chained after a warm-up; "
            "remove warmup_steps or use a schedule such as CosineAnnealingLR"
        )
    try:
        schedule = cls(optimizer, **params)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"scheduler.params: invalid value for {cfg.name}: {exc}") from None
    if not cfg.warmup_steps:
        return schedule
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=WARMUP_START, total_iters=cfg.warmup_steps)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, schedule], milestones=[cfg.warmup_steps])
