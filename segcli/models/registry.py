"""Name -> class registries for architectures, encoders, losses, optimizers and schedulers.

A name is only ever looked up in these tables or inside torch.optim / torch.optim.lr_scheduler:
it can never import or call arbitrary code.
"""

from __future__ import annotations

import inspect
import os
import socket
import sys
from collections.abc import Iterable

import torch
from torch import nn

from segcli.config.schema import LossConfig, ModelConfig, OptimizerConfig, SchedulerConfig
from segcli.errors import ConfigError, did_you_mean


def _architectures() -> dict[str, type]:
    import segmentation_models_pytorch as smp

    return {name.lower(): cls for name, cls in smp.MODEL_ARCHITECTURES_MAPPING.items()}


def _check_encoder(cfg: ModelConfig) -> None:
    import segmentation_models_pytorch as smp

    if cfg.encoder_name.startswith("tu-"):
        import timm

        if not timm.is_model(cfg.encoder_name[3:]):
            raise ConfigError(
                f"model.encoder_name: timm has no model '{cfg.encoder_name[3:]}'; "
                + did_you_mean(cfg.encoder_name[3:], timm.list_models())
            )
        return
    encoders = smp.encoders.encoders
    if cfg.encoder_name not in encoders:
        raise ConfigError(
            f"model.encoder_name: unknown encoder '{cfg.encoder_name}'; {did_you_mean(cfg.encoder_name, encoders)} "
            "(timm encoders are spelled 'tu-<name>')"
        )
    weights = encoders[cfg.encoder_name]["pretrained_settings"]
    if cfg.encoder_weights is not None and cfg.encoder_weights not in weights:
        options = ", ".join(sorted(weights)) or "none"
        raise ConfigError(
            f"model.encoder_weights: '{cfg.encoder_weights}' is not available for {cfg.encoder_name} "
            f"(available: {options}); use `encoder_weights: null` to train from scratch"
        )


HUB = ("huggingface.co", 443)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick connection test: without it, huggingface_hub retries for ~25 s before failing offline."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "HF_ENDPOINT")):
        return True  # a proxy or mirror cannot be probed directly: let the hub client decide
    try:
        socket.create_connection(HUB, timeout=timeout).close()
        return True
    except OSError:
        return False


def _use_cache_only() -> None:
    """Make huggingface_hub read only its cache (fails at once when the weights are not there)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    if "huggingface_hub" in sys.modules:  # already imported: it read the variable at import time
        import huggingface_hub.constants

        huggingface_hub.constants.HF_HUB_OFFLINE = True


def create_model(cfg: ModelConfig) -> nn.Module:
    """The smp model named by `cfg.arch` (case-insensitive); downloads encoder weights if asked."""
    if cfg.encoder_weights is not None and not _hub_reachable():
        _use_cache_only()
    architectures = _architectures()
    arch = architectures.get(cfg.arch.lower())
    if arch is None:
        raise ConfigError(
            f"model.arch: unknown architecture '{cfg.arch}'; {did_you_mean(cfg.arch.lower(), architectures)}"
        )
    _check_encoder(cfg)
    _check_params(
        arch, cfg.params, "model.params", exclude={"encoder_name", "encoder_weights", "in_channels", "classes"}
    )
    kwargs = dict(
        encoder_name=cfg.encoder_name,
        encoder_weights=cfg.encoder_weights,
        in_channels=cfg.in_channels,
        classes=cfg.classes,
    )
    if cfg.encoder_weights is None:
        return arch(**kwargs, **cfg.params)
    try:
        return arch(**kwargs, **cfg.params)
    except (OSError, RuntimeError) as exc:
        # huggingface_hub's offline/connection errors derive from OSError; a bad download from RuntimeError.
        raise ConfigError(
            f"model.encoder_weights: could not load '{cfg.encoder_weights}' weights for {cfg.encoder_name} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). Without network access use "
            "`encoder_weights: null` to train from scratch, or pre-fill the Hugging Face cache."
        ) from None


def size_multiple(model: nn.Module) -> int:
    """Input height and width must be multiples of this (1 when the architecture pads by itself)."""
    if getattr(model, "requires_divisible_input_shape", True):
        return int(model.encoder.output_stride)
    return 1


def _check_params(target, params: dict, where: str, exclude: Iterable[str] = ()) -> None:
    """Reject keyword arguments `target` does not take, before anything is built."""
    parameters = inspect.signature(target).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    accepted = set(parameters) - set(exclude) - {"self"}
    for name in params:
        if name not in accepted:
            target_name = getattr(target, "__name__", target)
            raise ConfigError(f"{where}: {target_name} has no parameter '{name}'; {did_you_mean(name, accepted)}")


# --- losses -----------------------------------------------------------------------------------


def _smp_loss(class_name: str):
    def build(ignore_index: int | None, class_weights: list[float] | None, params: dict) -> nn.Module:
        from segmentation_models_pytorch import losses

        cls = getattr(losses, class_name)
        accepted = inspect.signature(cls).parameters
        kwargs = {"mode": "multiclass", "ignore_index": ignore_index}
        if class_weights is not None and "class_weights" in accepted:
            kwargs["class_weights"] = class_weights
        return cls(**kwargs, **params)

    build.target = class_name
    return build


def _cross_entropy(ignore_index: int | None, class_weights: list[float] | None, params: dict) -> nn.Module:
    weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights is not None else None
    return nn.CrossEntropyLoss(weight=weight, ignore_index=-100 if ignore_index is None else ignore_index, **params)


LOSSES = {
    "cross_entropy": _cross_entropy,
    "dice": _smp_loss("DiceLoss"),
    "focal": _smp_loss("FocalLoss"),
    "jaccard": _smp_loss("JaccardLoss"),
    "lovasz": _smp_loss("LovaszLoss"),
    "tversky": _smp_loss("TverskyLoss"),
}
_LOSS_OWN_ARGS = {"mode", "ignore_index", "class_weights", "weight"}


def _loss_target(name: str):
    if name == "cross_entropy":
        return nn.CrossEntropyLoss
    from segmentation_models_pytorch import losses

    return getattr(losses, LOSSES[name].target)


class WeightedLoss(nn.Module):
    """sum(weight_i * loss_i), each term computed in float32 (fp16 Dice/CE overflow under mixed precision)."""

    def __init__(self, terms: list[tuple[str, float, nn.Module]]):
        super().__init__()
        self.names = [name for name, _, _ in terms]
        self.weights = [weight for _, weight, _ in terms]
        self.terms = nn.ModuleList(module for _, _, module in terms)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        with torch.autocast(device_type=logits.device.type, enabled=False):
            return sum(weight * term(logits, target) for weight, term in zip(self.weights, self.terms, strict=True))


def loss_name(name: str) -> str:
    return name.lower().replace("-", "_")


def build_loss(cfg: LossConfig, ignore_index: int | None) -> WeightedLoss:
    terms = []
    for index, term in enumerate(cfg.terms):
        name = loss_name(term.name)
        where = f"loss.terms[{index}]"
        if name not in LOSSES:
            raise ConfigError(f"{where}.name: unknown loss '{term.name}'; {did_you_mean(name, LOSSES)}")
        _check_params(_loss_target(name), term.params, f"{where}.params", exclude=_LOSS_OWN_ARGS)
        terms.append((name, term.weight, LOSSES[name](ignore_index, cfg.class_weights, term.params)))
    return WeightedLoss(terms)


# --- optimizers and schedulers ------------------------------------------------------------------


def _classes_in(module, base: type | tuple[type, ...]) -> dict[str, type]:
    return {
        name: cls
        for name, cls in vars(module).items()
        if isinstance(cls, type)
        and issubclass(cls, base)
        and cls not in (base if isinstance(base, tuple) else (base,))
        and not name.startswith("_")
    }


def optimizer_class(name: str) -> type:
    options = _classes_in(torch.optim, torch.optim.Optimizer)
    if name not in options:
        raise ConfigError(
            f"optimizer.name: unknown optimizer '{name}' (a class in torch.optim); {did_you_mean(name, options)}"
        )
    return options[name]


def scheduler_class(name: str) -> type:
    module = torch.optim.lr_scheduler
    options = _classes_in(module, (module.LRScheduler, module.ReduceLROnPlateau))
    if name not in options:
        raise ConfigError(
            f"scheduler.name: unknown scheduler '{name}' (a class in torch.optim.lr_scheduler); "
            + did_you_mean(name, options)
        )
    return options[name]


def build_optimizer(cfg: OptimizerConfig, parameters, lr: float) -> torch.optim.Optimizer:
    cls = optimizer_class(cfg.name)
    if "lr" in cfg.params:
        raise ConfigError("optimizer.params.lr: set the learning rate with the experiment's `lr:` key")
    _check_params(cls, cfg.params, "optimizer.params", exclude={"params", "lr"})
    try:
        return cls(parameters, lr=lr, **cfg.params)
    except (ValueError, TypeError) as exc:  # torch.optim validates values (e.g. betas) with ValueError
        raise ConfigError(f"optimizer.params: invalid value for {cfg.name}: {exc}") from None


def build_scheduler(cfg: SchedulerConfig, optimizer: torch.optim.Optimizer):
    cls = scheduler_class(cfg.name)
    _check_params(cls, cfg.params, "scheduler.params", exclude={"optimizer"})
    try:
        return cls(optimizer, **cfg.params)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"scheduler.params: invalid value for {cfg.name}: {exc}") from None


def is_plateau(cfg: SchedulerConfig) -> bool:
    return cfg.name == "ReduceLROnPlateau"
