"""Checkpoint files: contents, best/latest/average semantics, atomic writes, safe loading."""

from __future__ import annotations

import pickle
from types import SimpleNamespace

import pytest
import torch

from segcli.config.schema import Experiment, ModelConfig
from segcli.errors import CheckpointError, StorageError
from segcli.training.callbacks import SegcliCheckpoints
from segcli.training.checkpoints import AVERAGE, BEST, LATEST, atomic_save, load_checkpoint

NORMALIZATION = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


@pytest.fixture(scope="module")
def task():
    from segcli.models.task import SegmentationTask

    model = ModelConfig(arch="unet", encoder_name="resnet18", encoder_weights=None, classes=3)
    return SegmentationTask(Experiment(model=model).model_dump(mode="json"), ["a", "b", "c"])


def _trainer(epoch: int, miou: float):
    metrics = {"val/mIoU": torch.tensor(miou), "val/loss": torch.tensor(1.0), "train/mIoU": torch.tensor(0.9)}
    return SimpleNamespace(
        sanity_checking=False,
        is_global_zero=True,
        callback_metrics=metrics,
        current_epoch=epoch,
        global_step=10 * epoch,
    )


def _snapshot(module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in module.state_dict().items()}


def _perturb(module, amount: float) -> None:
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(amount)
        for name, buffer in module.named_buffers():
            if name.endswith("running_mean"):
                buffer.add_(amount)


def test_best_latest_and_average(task, tmp_path):
    written = []
    callback = SegcliCheckpoints(tmp_path, "run", NORMALIZATION, 32, on_write=written.append)
    states, scores = [], [0.5, 0.4, float("nan"), 0.7]
    for epoch, score in enumerate(scores):
        if epoch:
            _perturb(task.model, 0.25 * epoch)
        states.append(_snapshot(task.model))
        callback.on_validation_end(_trainer(epoch, score), task)

    latest = load_checkpoint(tmp_path / LATEST)
    best = load_checkpoint(tmp_path / BEST)
    average = load_checkpoint(tmp_path / AVERAGE)
    assert latest["epoch"] == 3 and best["epoch"] == 3  # 0.7 beats 0.5; 0.4 and NaN never win
    assert best["metric"] == {"name": "val/mIoU", "value": pytest.approx(0.7)}
    assert set(best["metrics"]) == {"val/mIoU", "val/loss"}  # train/* is not final at validation end
    assert callback.best_epoch == 3 and [h["epoch"] for h in callback.history] == [0, 1, 2, 3]
    assert {p.name for p in written} == {LATEST, BEST, AVERAGE}

    for key, value in average["state_dict"].items():
        if value.is_floating_point():
            expected = sum(state[key] for state in states) / len(states)
            torch.testing.assert_close(value, expected, msg=key)
    bn_means = [k for k in average["state_dict"] if k.endswith("running_mean")]
    assert bn_means, "BatchNorm statistics must be stored with the averaged weights"
    for key in bn_means:  # averaged with the weights, not left at the first epoch's values
        assert not torch.equal(average["state_dict"][key], states[0][key])


def test_best_after_first_epoch_is_kept_when_later_epochs_are_worse(task, tmp_path):
    callback = SegcliCheckpoints(tmp_path, "run", NORMALIZATION, 32)
    callback.on_validation_end(_trainer(0, 0.6), task)
    first = _snapshot(task.model)
    _perturb(task.model, 1.0)
    callback.on_validation_end(_trainer(1, 0.3), task)
    best = load_checkpoint(tmp_path / BEST)
    assert best["epoch"] == 0
    assert all(torch.equal(best["state_dict"][k], first[k]) for k in first)


def test_checkpoint_metadata_loads_with_weights_only(task, tmp_path):
    SegcliCheckpoints(tmp_path, "my-run", NORMALIZATION, 32).on_validation_end(_trainer(0, 0.5), task)
    payload = torch.load(tmp_path / LATEST, weights_only=True)
    expected = {"arch": "unet", "encoder_name": "resnet18", "in_channels": 3, "classes": 3, "size_multiple": 32}
    assert {key: payload[key] for key in expected} == expected
    assert payload["class_names"] == ["a", "b", "c"] and payload["run_name"] == "my-run"
    assert payload["normalization"] == NORMALIZATION
    assert payload["experiment"]["model"]["arch"] == "unet"


def test_sanity_check_writes_nothing(task, tmp_path):
    trainer = _trainer(0, 0.5)
    trainer.sanity_checking = True
    SegcliCheckpoints(tmp_path, "run", NORMALIZATION, 32).on_validation_end(trainer, task)
    assert not list(tmp_path.iterdir())


class _Exploit:
    def __reduce__(self):
        return (print, ("this ran during unpickling",))


def test_code_in_a_pickle_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    torch.save({"format": "segcli-checkpoint", "payload": _Exploit()}, path)
    with pytest.raises(CheckpointError, match="not a readable segcli checkpoint"):
        load_checkpoint(path)
    assert "this ran" not in capsys.readouterr().out


@pytest.mark.parametrize("content", [{"state_dict": {}}, [1, 2, 3]])
def test_foreign_files_are_refused(tmp_path, content):
    path = tmp_path / "other.pth"
    torch.save(content, path)
    with pytest.raises(CheckpointError, match="not a segcli checkpoint"):
        load_checkpoint(path)


def test_garbage_and_missing_files_are_refused(tmp_path):
    (tmp_path / "junk.pth").write_bytes(pickle.dumps("x")[:3])
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "junk.pth")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pth")


def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pth"
    atomic_save({"value": torch.ones(3)}, path)

    def broken_save(obj, stream):
        stream.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(StorageError, match="disk full while writing .*ckpt.pth; the previous file is intact"):
        atomic_save({"value": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["value"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth"]
