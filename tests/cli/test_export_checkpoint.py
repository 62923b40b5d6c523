"""`segcli export-checkpoint`: every format round-trips, the check catches differences, user errors exit 2."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from segcli.errors import ConfigError
from segcli.inference.engine import InferenceOptions
from segcli.inference.export import export
from segcli.inference.loading import open_model
from tests.inference.support import IMAGENET, TINY_CLASSES, make_checkpoint, run_main
from tests.support import REPO, assert_user_error, fill_the_disk

FORMATS = ["onnx", "torchscript", "state-dict", "smp"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("run") / "ckpt_best.pth", ignore_index=255, miou=0.625)


@pytest.fixture
def run_dir(checkpoint, tmp_path) -> Path:
    """A private copy of the run folder, so default outputs beside the checkpoint do not collide."""
    folder = tmp_path / "checkpoints" / "tiny-run"
    folder.mkdir(parents=True)
    shutil.copy(checkpoint, folder / "ckpt_best.pth")
    return folder


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.integers(0, 256, (97, 131, 3), dtype=np.uint8), rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)]


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_round_trips(checkpoint, tmp_path, fmt):
    output = tmp_path / {"onnx": "m.onnx", "torchscript": "m.pt", "state-dict": "m.pth", "smp": "m_smp"}[fmt]
    result = export(checkpoint, fmt, output, height=64, width=64)
    assert result.written and result.check.passed and result.path == output and output.exists()
    assert [c.shape for c in result.check.inputs] == [(2, 3, 64, 64), (1, 3, 66, 65)]  # two sizes, two batches
    assert max(c.max_abs_diff for c in result.check.inputs) < (1e-4 if fmt == "onnx" else 1e-6)

    sidecar = json.loads(result.sidecar.read_text())
    assert sidecar["export_format"] == fmt and sidecar["file"] == output.name
    assert sidecar["class_names"] == TINY_CLASSES and sidecar["classes"] == 4 and sidecar["in_channels"] == 3
    assert sidecar["normalization"] == IMAGENET
    assert sidecar["size_multiple"] == 1 and sidecar["ignore_index"] == 255
    assert (sidecar["arch"], sidecar["encoder_name"]) == ("unet", "resnet18")
    assert sidecar["source"]["checkpoint"] == str(checkpoint.resolve())
    assert sidecar["source"]["metric"] == {"name": "val/mIoU", "value": 0.625}
    assert sidecar["check"]["passed"] is True and len(sidecar["check"]["inputs"]) == 2
    if fmt == "onnx":
        assert sidecar["export"]["opset"] == 17
    if fmt == "torchscript":
        assert sidecar["export"]["torchscript"] == "script"  # smp marks Unet/resnet scriptable

    # Reloaded the way `predict` reads it: the same predictions as the checkpoint, at sizes never exported.
    original, reloaded = open_model(checkpoint), open_model(output)
    assert reloaded.kind == fmt and reloaded.info.class_names == TINY_CLASSES
    for image in _images():
        expected = original.probabilities([image], InferenceOptions())
        got = reloaded.probabilities([image], InferenceOptions())
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
        mask, expected_mask = reloaded.predict([image])[0], original.predict([image])[0]
        assert mask.shape == image.shape[:2]
        top2 = expected.topk(2, dim=1).values[0]
        near_tie = (top2[0] - top2[1]) < 1e-4
        assert not np.any((mask != expected_mask) & ~near_tie.numpy())  # only float-level ties may flip


def test_state_dict_bundle_is_plain_data_smp_rebuilds(checkpoint, tmp_path):
    import segmentation_models_pytorch as smp

    result = export(checkpoint, "state-dict", tmp_path / "bundle.pth", height=64, width=64, check=False)
    bundle = torch.load(result.path, weights_only=True)
    model = smp.create_model("unet", encoder_name="resnet18", encoder_weights=None, classes=4)
    model.load_state_dict(bundle["state_dict"])
    assert bundle["metadata"]["class_names"] == TINY_CLASSES
    assert "check" not in json.loads(result.sidecar.read_text())  # --no-check: nothing claimed


def test_traced_when_the_architecture_cannot_be_scripted(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "unetpp.pth", arch="unetplusplus")
    result = export(checkpoint, "torchscript", tmp_path / "unetpp.pt", height=64, width=64)
    assert result.details["torchscript"] == "trace"
    assert result.check.passed and result.check.inputs[1].shape == (1, 3, 128, 96)  # a second size, multiple of 32


def test_cli_exports_a_run_folder_beside_its_best_checkpoint(run_dir, capsys):
    result = run_main(capsys, "export-checkpoint", run_dir, "--format", "onnx", "--height", "64", "--width", "64")
    assert result.returncode == 0, result.stderr
    assert (run_dir / "ckpt_best.onnx").is_file() and (run_dir / "ckpt_best.onnx.json").is_file()
    for fragment in ("passed", "max abs diff", "val/mIoU 0.6250", "ckpt_best.onnx.json", "1x3x66x65"):
        assert fragment in result.stdout, (fragment, result.stdout)
    assert not list(run_dir.glob(".segcli-export-*")), "staging folder left behind"


def test_cli_failed_check_exits_1_and_writes_nothing(run_dir, capsys):
    result = run_main(capsys, "export-checkpoint", run_dir / "ckpt_best.pth", "--height", "64", "--width", "64",
                      "--tolerance", "0")  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "export check failed" in result.stderr and "nothing was written" in result.stderr
    assert "FAILED" in result.stdout
    assert sorted(p.name for p in run_dir.iterdir()) == ["ckpt_best.pth"]


def test_output_folders_are_never_clobbered(checkpoint, tmp_path):
    folder = tmp_path / "exports"
    (folder / "keep.txt").parent.mkdir()
    (folder / "keep.txt").write_text("mine")
    result = export(checkpoint, "torchscript", folder, height=64, width=64, check=False)
    assert result.path == folder / "ckpt_best.torchscript.pt" and (folder / "keep.txt").read_text() == "mine"
    with pytest.raises(ConfigError, match="not an earlier smp export"):
        export(checkpoint, "smp", folder, height=64, width=64, check=False)
    assert (folder / "keep.txt").is_file()
    first = export(checkpoint, "smp", tmp_path / "smp", height=64, width=64, check=False)
    again = export(checkpoint, "smp", tmp_path / "smp", height=64, width=64, check=False)  # replaces its own export
    assert first.path == again.path and (again.path / "segcli.json").is_file()
    assert not list(tmp_path.glob(".*")), "the earlier export or the staging folder was left aside"


@pytest.mark.parametrize("fmt", ["torchscript", "smp"])
def test_a_failing_export_leaves_no_partial_file_and_the_earlier_export_whole(checkpoint, tmp_path, monkeypatch, fmt):
    """torch.jit.save and save_pretrained write by path themselves: one that fails half way must leave nothing."""
    import segmentation_models_pytorch as smp

    output = tmp_path / ("m.pt" if fmt == "torchscript" else "m_smp")
    export(checkpoint, fmt, output, height=64, width=64, check=False)
    earlier = {path: path.read_bytes() if path.is_file() else None for path in tmp_path.rglob("*")}

    def write_half_then_fail(*args) -> None:  # torch.jit.save(module, path), model.save_pretrained(path)
        path = Path(args[-1])
        if fmt == "smp":
            path.mkdir()
            path = path / "model.safetensors"
        path.write_bytes(b"half a model")
        raise RuntimeError("the writer failed half way")

    if fmt == "torchscript":
        monkeypatch.setattr(torch.jit, "save", write_half_then_fail)
    else:
        monkeypatch.setattr(smp.base.SegmentationModel, "save_pretrained", write_half_then_fail)
    with pytest.raises(RuntimeError, match="half way"):
        export(checkpoint, fmt, output, height=64, width=64, check=False)
    assert {path: path.read_bytes() if path.is_file() else None for path in tmp_path.rglob("*")} == earlier


def test_missing_onnxruntime_is_a_clear_error(run_dir, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    result = run_main(capsys, "export-checkpoint", run_dir, "--height", "64", "--width", "64")
    assert_user_error(result, "onnxruntime", "pip install 'segcli[export]'")
    unchecked = run_main(capsys, "export-checkpoint", run_dir, "--height", "64", "--width", "64", "--no-check")
    assert unchecked.returncode == 0 and "skipped (--no-check)" in unchecked.stdout
    with pytest.raises(ConfigError, match="onnxruntime"):
        open_model(run_dir / "ckpt_best.onnx")


def test_missing_onnx_names_the_package_and_the_extra_not_the_opset(run_dir, monkeypatch, capsys):
    """`Module onnx is not installed!` came out as "ONNX opset 17 cannot express Unet ...; try a newer --opset"."""
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` now raises ImportError
    result = run_main(capsys, "export-checkpoint", run_dir, "--height", "64", "--width", "64")
    assert_user_error(result, "the `onnx` package", "pip install 'segcli[export]'")
    assert "opset" not in result.stderr and len(result.stderr.splitlines()) == 1
    assert not (run_dir / "ckpt_best.onnx").exists()


_IMPORTED_DISTRIBUTIONS = """
import os, sys
from importlib import metadata
from segcli.cli.app import main

sys.argv = ["segcli", *sys.argv[1:]]
try:
    main()
except SystemExit as exc:
    assert not exc.code, exc.code
owners = {}
for distribution in metadata.distributions():
    for file in distribution.files or []:
        if file.suffix in (".py", ".so"):
            owners[os.path.realpath(distribution.locate_file(file))] = distribution.metadata["Name"]
files = {os.path.realpath(module.__file__) for module in list(sys.modules.values()) if getattr(module, "__file__", 0)}
print("USED", sorted({owners[file] for file in files if file in owners} - {"segcli"}))
"""


def test_the_default_export_needs_nothing_beyond_the_plain_install(run_dir, tmp_path):
    """README's set-up installs `pip install -e .`, without extras: every distribution the default export-checkpoint
    (ONNX, checked with onnxruntime) imports must come with segcli's own dependencies. ONNX was an extra, and the
    default format failed after `make demo`."""
    from importlib import metadata

    from packaging.requirements import Requirement

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    def closure(requirements: list[str]) -> set[str]:
        found: set[str] = set()
        pending = [Requirement(text) for text in requirements]
        while pending:
            requirement = pending.pop()
            name = requirement.name.lower().replace("_", "-")
            if name in found or (requirement.marker and not requirement.marker.evaluate({"extra": ""})):
                continue
            found.add(name)
            try:
                pending += [Requirement(text) for text in metadata.requires(requirement.name) or []]
            except metadata.PackageNotFoundError:
                pass  # a dependency for another platform or Python version
        return found

    with (REPO / "pyproject.toml").open("rb") as stream:
        installed_with_segcli = closure(tomllib.load(stream)["project"]["dependencies"])
    command = ["export-checkpoint", str(run_dir), "--height", "64", "--width", "64"]
    result = subprocess.run([sys.executable, "-c", _IMPORTED_DISTRIBUTIONS, *command], cwd=tmp_path,
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    used = next((ast.literal_eval(line[5:]) for line in result.stdout.splitlines() if line.startswith("USED ")), None)
    assert used is not None, result.stdout + result.stderr
    assert (run_dir / "ckpt_best.onnx").is_file()
    used = {name.lower().replace("_", "-") for name in used}
    assert {"onnx", "onnxruntime"} <= used  # what the default format needs
    assert used <= installed_with_segcli, sorted(used - installed_with_segcli)


def test_a_full_disk_is_a_user_error_and_leaves_no_export(run_dir, monkeypatch, capsys):
    fill_the_disk(monkeypatch, room=100_000)  # the state-dict bundle (~57 MB) does not fit
    result = run_main(capsys, "export-checkpoint", run_dir, "--format", "state-dict", "--no-check")
    output = run_dir / "ckpt_best.state_dict.pth"
    assert_user_error(result, f"disk full while exporting {output}", "nothing was written")
    assert ".segcli-export" not in result.stderr  # the staging folder means nothing to the user
    assert sorted(p.name for p in run_dir.iterdir()) == ["ckpt_best.pth"]


class _Exploit:
    def __reduce__(self):
        return (print, ("this ran during unpickling",))


def test_user_errors(run_dir, tmp_path, capsys):
    torch.save({"state_dict": {}}, tmp_path / "other.pth")
    assert_user_error(run_main(capsys, "export-checkpoint", tmp_path / "other.pth"), "not a segcli checkpoint")
    torch.save({"format": "segcli-checkpoint", "payload": _Exploit()}, tmp_path / "evil.pth")
    result = run_main(capsys, "export-checkpoint", tmp_path / "evil.pth")
    assert_user_error(result, "not a segcli checkpoint (it is not a file of plain tensors")
    assert "this ran" not in result.stdout
    assert_user_error(run_main(capsys, "export-checkpoint", tmp_path / "nothing.pth"), "file not found")
    assert_user_error(run_main(capsys, "export-checkpoint", tmp_path), "neither ckpt_best.pth")
    for opset in ("6", "21"):  # outside what torch's TorchScript-based exporter writes
        assert_user_error(run_main(capsys, "export-checkpoint", run_dir, "--opset", opset), f"--opset {opset}",
                          "opsets 7 to 20")  # fmt: skip
    fpn = make_checkpoint(tmp_path / "fpn.pth", arch="fpn")
    assert_user_error(run_main(capsys, "export-checkpoint", fpn, "--height", "60"), "--height 60", "multiple of 32")
    other_classes = make_checkpoint(tmp_path / "other_classes.pth", class_names=["x", "y", "z", "w"])
    result = run_main(capsys, "export-checkpoint", run_dir, other_classes, "--output", tmp_path / "ensemble.onnx")
    assert_user_error(result, "cannot be ensembled: their class_names differ")
    assert not list(tmp_path.glob("*.onnx"))


def test_export_warnings_stay_quiet(checkpoint, tmp_path, recwarn):
    export(checkpoint, "torchscript", tmp_path / "m.pt", height=64, width=64)
    noisy = [str(w.message) for w in recwarn if "deprecated" in str(w.message) or "legacy" in str(w.message)]
    assert not noisy, noisy


def test_huge_logits_pass_by_their_relative_difference_and_class_agreement(tmp_path, capsys):
    """After one epoch logits can be near 10^4: an absolute 1e-3 refused exports whose classes were identical."""
    checkpoint = make_checkpoint(tmp_path / "ckpt_best.pth")
    payload = torch.load(checkpoint, weights_only=True)
    for key in ("segmentation_head.0.weight", "segmentation_head.0.bias"):
        payload["state_dict"][key] = payload["state_dict"][key] * 2e4
    torch.save(payload, checkpoint)
    result = run_main(capsys, "export-checkpoint", checkpoint, "--height", "64", "--width", "64", "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    check = document["check"]
    assert check["passed"] and document["written"] and Path(document["path"]).is_file()
    assert max(item["max_abs_diff"] for item in check["inputs"]) > 1e-3  # what the old check refused
    assert check["max_relative_diff"] < 1e-4 and check["min_class_agreement"] >= 0.999
    assert document["model"]["class_names"] == TINY_CLASSES


def _confident_member(path: Path, seed: int) -> Path:
    """A checkpoint whose logits are in the hundreds, as after training: probabilities down to 1e-30 and below."""
    make_checkpoint(path, seed=seed)
    payload = torch.load(path, weights_only=True)
    for key in ("segmentation_head.0.weight", "segmentation_head.0.bias"):
        payload["state_dict"][key] = payload["state_dict"][key] * 300
    torch.save(payload, path)
    return path


def test_an_ensemble_is_held_to_its_members_standard_so_a_right_export_passes_and_a_wrong_one_fails(tmp_path):
    """The ensemble's output is the log of the members' mean probabilities (clamped at 1e-12): scaled by its own
    range rather than the members' logits, float32 noise failed the default check (relative 1.2e-4) with 100% of
    classes agreeing, and nothing was written."""
    from segcli.inference.export import EnsembleModule, check_export, check_sizes
    from segcli.inference.loading import load_checkpoint_model

    members = [_confident_member(tmp_path / f"fold{seed}.pth", seed) for seed in range(3)]
    result = export(members, "onnx", tmp_path / "ensemble.onnx", height=64, width=64)
    assert result.written and result.check.passed, result.check.to_dict()
    assert result.check.relative_to == "members' logits" and result.check.max_relative_diff < 1e-5
    assert json.loads(result.sidecar.read_text())["check"]["relative_to"] == "members' logits"
    other = [*members[:2], _confident_member(tmp_path / "other.pth", 7)]  # one member is not the one exported
    wrong = export(other, "onnx", tmp_path / "other.onnx", height=64, width=64, check=False).path
    model = EnsembleModule([load_checkpoint_model(path)[0] for path in members], binary=False).eval()
    check = check_export(model, wrong, result.info, check_sizes(64, 64, 1), tolerance=1e-4)
    assert not check.passed and check.max_relative_diff > 1e-3, check.to_dict()
    single = export(members[0], "onnx", tmp_path / "single.onnx", height=64, width=64)
    assert single.check.passed and single.check.relative_to == "logits"  # one model: its logits, as before


def test_disagreeing_classes_fail_the_check(tmp_path, capsys):
    checkpoint = make_checkpoint(tmp_path / "ckpt_best.pth")
    result = run_main(capsys, "export-checkpoint", checkpoint, "--height", "64", "--width", "64",
                      "--min-agreement", "1.5", "--json")  # fmt: skip
    assert result.returncode == 2  # out of range: Typer's usage error
    result = run_main(capsys, "export-checkpoint", checkpoint, "--height", "64", "--width", "64", "--tolerance", "0",
                      "--json")  # fmt: skip
    assert result.returncode == 1 and json.loads(result.stdout)["written"] is False
    assert "nothing was written" in result.stderr
