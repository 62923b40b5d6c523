"""Loss registry: smp losses and cross-entropy by name, combined into one weighted sum.

Every term is computed in float32 (fp16 Dice/CE overflow under mixed precision). A batch whose pixels
are all `ignore_index` contributes zero loss (and zero gradient), never NaN: cross-entropy averages
over the valid pixels with a guarded denominator (no host synchronisation); the smp losses that
cannot handle an empty selection (focal, lovasz) are skipped for such a batch.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from segmentation_models_pytorch import losses as smp_losses
from torch import nn

from segcli.config.schema import LossConfig
from segcli.errors import ConfigError, did_you_mean
from segcli.models.registry import check_params


class CrossEntropy(nn.Module):
    """Softmax cross-entropy (or sigmoid BCE for one output channel) averaged over the non-ignored pixels.

    Equal to `nn.CrossEntropyLoss(weight, ignore_index)` where any pixel is valid, and 0 where none is.
    """

    def __init__(self, ignore_index: int | None, class_weights: list[float] | None, label_smoothing: float = 0.0):
        super().__init__()
        self.ignore_index = -100 if ignore_index is None else ignore_index
        self.label_smoothing = label_smoothing
        weight = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = target != self.ignore_index
        if logits.shape[1] == 1:  # binary: one foreground logit per pixel
            per_pixel = F.binary_cross_entropy_with_logits(logits[:, 0], (target == 1).float(), reduction="none")
            return (per_pixel * valid).sum() / valid.sum().clamp(min=1)
        total = F.cross_entropy(
            logits, target, self.weight, ignore_index=self.ignore_index, reduction="sum",
            label_smoothing=self.label_smoothing,
        )  # fmt: skip
        if self.weight is None:
            return total / valid.sum().clamp(min=1)
        safe_target = torch.where(valid, target, 0)
        return total / (self.weight[safe_target] * valid).sum().clamp(min=torch.finfo(torch.float32).tiny)


def _smp_loss(class_name: str, empty_safe: bool):
    def build(ignore_index: int | None, class_weights: list[float] | None, params: dict, binary: bool) -> nn.Module:
        cls = getattr(smp_losses, class_name)
        kwargs = {"mode": "binary" if binary else "multiclass", "ignore_index": ignore_index}
        if class_weights is not None and "class_weights" in inspect.signature(cls).parameters:
            kwargs["class_weights"] = class_weights
        return cls(**kwargs, **params)

    build.target = class_name
    build.empty_safe = empty_safe
    return build


def _cross_entropy(ignore_index: int | None, class_weights: list[float] | None, params: dict, binary: bool):
    return CrossEntropy(ignore_index, class_weights, **params)


_cross_entropy.empty_safe = True
LOSSES = {
    "cross_entropy": _cross_entropy,
    "dice": _smp_loss("DiceLoss", empty_safe=True),
    "focal": _smp_loss("FocalLoss", empty_safe=False),
    "jaccard": _smp_loss("JaccardLoss", empty_safe=True),
    "lovasz": _smp_loss("LovaszLoss", empty_safe=False),
    "tversky": _smp_loss("TverskyLoss", empty_safe=True),
}
_LOSS_OWN_ARGS = {"mode", "ignore_index", "class_weights", "weight", "reduction"}


def _loss_target(name: str):
    if name == "cross_entropy":
        return CrossEntropy
    return getattr(smp_losses, LOSSES[name].target)


class WeightedLoss(nn.Module):
    """sum(weight_i * loss_i), each term computed in float32."""

    def __init__(self, terms: list[tuple[str, float, nn.Module, bool]], ignore_index: int | None):
        super().__init__()
        self.names = [name for name, *_ in terms]
        self.weights = [weight for _, weight, _, _ in terms]
        self.terms = nn.ModuleList(module for _, _, module, _ in terms)
        self.empty_safe = [safe for *_, safe in terms]
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        with torch.autocast(device_type=logits.device.type, enabled=False):
            total = logits.sum() * 0.0  # zero, on the graph, even when every term is skipped
            has_pixels = None
            for weight, term, safe in zip(self.weights, self.terms, self.empty_safe, strict=True):
                if not safe and self.ignore_index is not None:
                    if has_pixels is None:  # one synchronisation; these smp losses index by the mask anyway
                        has_pixels = bool((target != self.ignore_index).any())
                    if not has_pixels:
                        continue
                total = total + weight * term(logits, target)
            return total


def loss_name(name: str) -> str:
    return name.lower().replace("-", "_")


def build_loss(cfg: LossConfig, ignore_index: int | None, binary: bool = False) -> WeightedLoss:
    terms = []
    for index, term in enumerate(cfg.terms):
        name = loss_name(term.name)
        where = f"loss.terms[{index}]"
        if name not in LOSSES:
            raise ConfigError(f"{where}.name: unknown loss '{term.name}'; {did_you_mean(name, LOSSES)}")
        check_params(_loss_target(name), term.params, f"{where}.params", exclude=_LOSS_OWN_ARGS)
        build = LOSSES[name]
        terms.append((name, term.weight, build(ignore_index, cfg.class_weights, term.params, binary), build.empty_safe))
    return WeightedLoss(terms, ignore_index)
