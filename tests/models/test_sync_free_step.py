"""The training step never makes the CPU wait for the GPU (issue 15): checked by CUDA's sync debug mode."""

from __future__ import annotations

import warnings

import pytest
import torch

from segcli.config.schema import Experiment, ModelConfig

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


# focal and lovasz synchronise once per step by design (smp selects their valid pixels by boolean indexing).
@pytest.mark.parametrize("loss", [["cross_entropy", "dice"], ["jaccard"], ["tversky"]])
def test_training_steps_run_without_a_host_synchronisation(loss):
    from segcli.models.task import FINITE_CHECK_EVERY, SegmentationTask

    class BetweenChecks(SegmentationTask):
        global_step = 1  # not a multiple of FINITE_CHECK_EVERY: the steps that must not synchronise

    assert BetweenChecks.global_step % FINITE_CHECK_EVERY
    model = ModelConfig(arch="unet", encoder_name="resnet18", encoder_weights=None, classes=3)
    experiment = Experiment(model=model, loss=loss, ignore_index=2).model_dump(mode="json")
    task = BetweenChecks(experiment, ["a", "b", "c"]).cuda()
    optimizer = torch.optim.AdamW(task.parameters(), lr=1e-3)
    generator = torch.Generator(device="cuda").manual_seed(0)
    images = torch.randn(2, 3, 64, 64, device="cuda", generator=generator)
    masks = torch.randint(0, 2, (2, 64, 64), device="cuda", generator=generator)
    masks[1] = 2  # one image entirely ignored: the empty-safe loss path too
    torch.cuda.synchronize()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log() without a Trainer only warns
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(3):
                optimizer.zero_grad(set_to_none=True)
                task.training_step((images, masks), 0).backward()
                optimizer.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert int(task.confusion["train_matrix"].matrix.sum()) == 3 * 64 * 64  # only image 0's pixels counted
    task.raise_if_diverged()
