"""Constants and helpers shared by the tests (fixtures live in conftest.py)."""

from __future__ import annotations

import ast
import errno
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"
CAMVID_CLASSES = "Sky,Building,Pole,Road,Pavement,Tree,SignSymbol,Fence,Car,Pedestrian,Bicyclist"
DEMO_CLASSES = "background,disc,square,triangle"


def run_segcli(
    *args, cwd: Path, env: dict[str, str] | None = None, replace_env: bool = False, timeout: int = 600
) -> subprocess.CompletedProcess:
    """The real entry point in a subprocess, as a user runs it; `env` adds to (or replaces) the environment."""
    return subprocess.run(
        [sys.executable, "-m", "segcli", *map(str, args)],
        cwd=cwd,
        env=env if replace_env else {**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_user_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit 2, one `error:` message on stderr holding every fragment, and no traceback."""
    assert result.returncode == 2, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    assert result.stderr.startswith("error: "), result.stderr[-2000:]
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)


HEAVY_MODULES = ("torch", "segmentation_models_pytorch", "pytorch_lightning", "albumentations", "cv2", "onnx")


def heavy_imports(argv: list[str], cwd: Path) -> tuple[list[str], int | None, str]:
    """Run `segcli ARGV` through main() in a fresh interpreter: (heavy modules it imported, exit code, output)."""
    probe = (
        "import sys\n"
        "from segcli.cli.app import main\n"
        f"sys.argv = ['segcli', *{[str(a) for a in argv]!r}]\n"
        "code = 0\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    code = exc.code\n"
        f"print('HEAVY', [m for m in {HEAVY_MODULES!r} if m in sys.modules])\n"
        "print('EXIT', code)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=cwd, capture_output=True, text=True, timeout=60)
    lines = result.stdout.splitlines()
    heavy = next((ast.literal_eval(line[6:]) for line in lines if line.startswith("HEAVY ")), None)
    code = next((line[5:] for line in lines if line.startswith("EXIT ")), None)
    assert heavy is not None and code is not None, result.stdout + result.stderr
    return heavy, None if code == "None" else int(code), result.stdout


def wandb_history(output: Path) -> list[dict]:
    """The history rows of the one offline W&B run under `output/wandb` (a resumed run adds a folder with the
    same run id: all are read, oldest first), from its .wandb files.

    A file is a LevelDB-style log (7-byte header ":W&B" + magic + version, then 32 KiB blocks of records
    with a 7-byte header each) of protobuf `Record`s; history rows are the records with a `history` field.
    """
    runs = sorted((output / "wandb").glob("offline-run-*/run-*.wandb"))
    assert runs and len({path.stem for path in runs}) == 1, runs
    return [row for path in runs for row in _wandb_rows(path.read_bytes())]


def wandb_run_groups(output: Path) -> list[str]:
    """The group of each offline W&B run under `output/wandb`, read from its run record."""
    return [group for path in sorted((output / "wandb").glob("offline-run-*/run-*.wandb"))
            for group in _wandb_records(path.read_bytes(), "run", lambda record: record.run.run_group)]  # fmt: skip


def _wandb_rows(data: bytes) -> list[dict]:
    import json

    return _wandb_records(data, "history", lambda record: {item.key or "/".join(item.nested_key):
                          json.loads(item.value_json) for item in record.history.item})  # fmt: skip


def _wandb_records(data: bytes, field: str, read) -> list:
    """`read(record)` of each protobuf `Record` of the log that has the field `field`."""
    import struct

    from wandb.proto import wandb_internal_pb2

    block, offset, pending, rows = 32768, 7, b"", []
    while offset + 7 <= len(data):
        if block - offset % block < 7:  # the rest of a block too short for a header is padding
            offset += block - offset % block
            continue
        length, kind = struct.unpack("<HB", data[offset + 4 : offset + 7])
        chunk = data[offset + 7 : offset + 7 + length]
        offset += 7 + length
        if kind in (1, 2):  # full, first
            pending = chunk
        else:  # middle, last
            pending += chunk
        if kind in (1, 4) and pending:
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            if record.HasField(field):
                rows.append(read(record))
            pending = b""
    return rows


class _FillingFile:
    """A file on a disk with `room` bytes left: a write past them fails with ENOSPC, as a real one does."""

    def __init__(self, file, room: int):
        self.file, self.room = file, room

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.file.write(data)

    def __getattr__(self, name: str):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.file.close()


def fill_the_disk(monkeypatch, room: int = 0) -> None:
    """Each file opened for writing with `os.fdopen` (segcli's atomic writes) fails past `room` bytes as on a
    full disk. The error comes from the stream, so `torch.save` replaces it with its own RuntimeError, as it does on
    a real disk (mocking `torch.save` to raise OSError hid that)."""
    real_fdopen = os.fdopen

    def fdopen(fd, mode="r", *args, **kwargs):
        file = real_fdopen(fd, mode, *args, **kwargs)
        return _FillingFile(file, room) if "w" in mode else file

    monkeypatch.setattr(os, "fdopen", fdopen)
