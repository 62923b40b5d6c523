"""`scheduler.warmup_steps`: a linear warm-up from 1% of `lr`, then the named schedule."""

from __future__ import annotations

import math

import pytest
import torch

from segcli.config.schema import SchedulerConfig
from segcli.errors import ConfigError
from segcli.models.optim import build_scheduler


def _rates(cfg: SchedulerConfig, steps: int, lr: float = 0.1) -> list[float]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    schedule = build_scheduler(cfg, optimizer)
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return rates


def test_warmup_rises_linearly_from_one_percent_then_hands_over_to_the_schedule():
    cfg = SchedulerConfig(name="CosineAnnealingLR", params={"T_max": 6}, interval="step", warmup_steps=4)
    rates = _rates(cfg, 10)
    warmup = [0.1 * (0.01 + 0.99 * step / 4) for step in range(4)]  # 0.001, 0.02575, 0.0505, 0.07525
    cosine = [0.05 * (1 + math.cos(math.pi * step / 6)) for step in range(6)]  # from the full lr down to 0
    assert rates == pytest.approx(warmup + cosine, abs=1e-9)


def test_no_warmup_is_the_schedule_itself():
    cfg = SchedulerConfig(name="CosineAnnealingLR", params={"T_max": 4})
    assert _rates(cfg, 4) == pytest.approx([0.05 * (1 + math.cos(math.pi * step / 4)) for step in range(4)])


def test_warmup_before_reduce_on_plateau_is_refused():
    cfg = SchedulerConfig(name="ReduceLROnPlateau", warmup_steps=3)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ConfigError, match="scheduler.warmup_steps: .*remove warmup_steps"):
        build_scheduler(cfg, optimizer)


def test_a_cosine_without_t_max_spans_the_run_after_the_warmup():
    """README: CosineAnnealingLR without T_max decays over the whole run after the warm-up."""
    cfg = SchedulerConfig(name="CosineAnnealingLR", interval="step", warmup_steps=4)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    schedule = build_scheduler(cfg, optimizer, run_length=10)
    rates = []
    for _ in range(11):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates[4:] == pytest.approx([0.05 * (1 + math.cos(math.pi * step / 6)) for step in range(7)], abs=1e-9)
    assert rates[-1] == pytest.approx(0.0, abs=1e-12)  # at 0 exactly when the run ends


def test_a_cosine_without_t_max_and_without_a_run_length_is_refused():
    cfg = SchedulerConfig(name="CosineAnnealingLR")
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ConfigError, match="scheduler.params: invalid value for CosineAnnealingLR.*T_max"):
        build_scheduler(cfg, optimizer)


@pytest.mark.parametrize(("interval", "t_max"), [("epoch", 7 - 2), ("step", 5 - 2)])
def test_the_run_length_of_an_open_ended_trainer_is_the_experiment_s(interval, t_max):
    """`segcli benchmark` trains with max_epochs -1 (and max_steps): a cosine without T_max still builds."""
    import pytorch_lightning as pl

    from segcli.config.schema import Experiment
    from segcli.models.task import SegmentationTask

    experiment = Experiment.model_validate({
        "model": {"arch": "unet", "encoder_name": "resnet18", "encoder_weights": None, "classes": 2},
        "max_epochs": 7,
        "scheduler": {"name": "CosineAnnealingLR", "interval": interval, "warmup_steps": 2},
    })  # fmt: skip
    task = SegmentationTask(experiment.model_dump(mode="json"), ["a", "b"])
    task.trainer = pl.Trainer(max_epochs=-1, max_steps=5, logger=False, enable_checkpointing=False)
    built = task.configure_optimizers()
    optimizer, schedule = built["optimizer"], built["lr_scheduler"]["scheduler"]
    rates = []
    for _ in range(2 + t_max):  # the warm-up, then the cosine, which ends at 0 after T_max steps
        optimizer.step()
        schedule.step()
        rates.append(optimizer.param_groups[0]["lr"])
    assert rates[-1] == pytest.approx(0.0, abs=1e-12) and min(rates[:-1]) > 0
