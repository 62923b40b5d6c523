"""Losses: the weighted sum, float32 under autocast, and batches whose pixels are all ignored."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from segcli.config.schema import LossConfig
from segcli.models.losses import LOSSES, build_loss

IGNORE = 255


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("binary", [False, True])
def test_a_batch_of_only_ignored_pixels_gives_zero_loss_and_zero_gradient(name, binary):
    """Cross-entropy and focal returned NaN on such a batch and Lovasz raised: the run was stopped as diverged."""
    logits = torch.randn(2, 1 if binary else 3, 8, 8, requires_grad=True)
    target = torch.full((2, 8, 8), IGNORE)
    loss = build_loss(LossConfig(terms=[{"name": name}]), IGNORE, binary=binary)(logits, target)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(logits.grad).all() and not logits.grad.any()


def test_cross_entropy_equals_torch_where_pixels_are_valid():
    logits = torch.randn(2, 3, 5, 5)
    target = torch.randint(0, 3, (2, 5, 5))
    target[0, 0] = IGNORE
    weights = [0.5, 1.0, 2.0]
    ours = build_loss(LossConfig(terms=[{"name": "cross_entropy"}], class_weights=weights), IGNORE)(logits, target)
    expected = nn.CrossEntropyLoss(weight=torch.tensor(weights), ignore_index=IGNORE)(logits, target)
    torch.testing.assert_close(ours, expected)


def test_binary_cross_entropy_is_bce_on_the_foreground_logit():
    logits = torch.randn(2, 1, 4, 4)
    target = torch.randint(0, 2, (2, 4, 4))
    ours = build_loss(LossConfig(terms=[{"name": "cross_entropy"}]), None, binary=True)(logits, target)
    expected = nn.functional.binary_cross_entropy_with_logits(logits[:, 0], target.float())
    torch.testing.assert_close(ours, expected)


def test_terms_are_weighted_and_computed_in_float32():
    logits = torch.randn(2, 3, 8, 8).to(torch.bfloat16)
    target = torch.randint(0, 3, (2, 8, 8))
    config = LossConfig(terms=[{"name": "cross_entropy", "weight": 0.25}, {"name": "dice", "weight": 2.0}])
    loss = build_loss(config, None)(logits, target)
    ce = build_loss(LossConfig.model_validate("cross_entropy"), None)(logits.float(), target)
    dice = build_loss(LossConfig.model_validate("dice"), None)(logits.float(), target)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, 0.25 * ce + 2.0 * dice)
