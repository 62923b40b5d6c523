"""smp architectures and encoders by name: building a model, its size multiple, and keyword checks.

A name is only ever looked up in these tables (losses and optimizers have their own modules): it can
never import or call arbitrary code.
"""

from __future__ import annotations

import inspect
import os
import socket
import sys
from collections.abc import Iterable

import segmentation_models_pytorch as smp
import timm
from torch import nn

from segcli.config.schema import ModelConfig
from segcli.errors import ConfigError, did_you_mean


def _architectures() -> dict[str, type]:
    return {name.lower(): cls for name, cls in smp.MODEL_ARCHITECTURES_MAPPING.items()}


def _check_encoder(cfg: ModelConfig) -> None:
    if cfg.encoder_name.startswith("tu-"):
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


def hub_reachable(timeout: float = 3.0) -> bool:
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
    if cfg.encoder_weights is not None and not hub_reachable():
        _use_cache_only()
    architectures = _architectures()
    arch = architectures.get(cfg.arch.lower())
    if arch is None:
        raise ConfigError(
            f"model.arch: unknown architecture '{cfg.arch}'; {did_you_mean(cfg.arch.lower(), architectures)}"
        )
    _check_encoder(cfg)
    check_params(
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


def check_params(target, params: dict, where: str, exclude: Iterable[str] = ()) -> None:
    """Reject keyword arguments `target` does not take, before anything is built."""
    parameters = inspect.signature(target).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    accepted = set(parameters) - set(exclude) - {"self"}
    for name in params:
        if name not in accepted:
            target_name = getattr(target, "__name__", target)
            raise ConfigError(f"{where}: {target_name} has no parameter '{name}'; {did_you_mean(name, accepted)}")
