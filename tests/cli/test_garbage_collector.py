"""The collector during a command: no full collection while torch & co. import, their objects frozen for the rest
of the command, and the collector as it was once the command returns."""

from __future__ import annotations

import ast
import gc
import inspect
import os
import subprocess
import sys

import pytest

from segcli.cli.app import COMMANDS
from segcli.cli.common import NO_FULL_COLLECTIONS, full_collections_deferred, start_up_done
from tests.support import DEMO_CLASSES

EXPERIMENT = """
model: {arch: unet, encoder_name: resnet18, encoder_weights: null, in_channels: 3, classes: 4}
defaults: {batch_size: 4, max_epochs: 1, num_workers: 0, average: null, log_predictions: {count: 0, worst: 0}}
experiments: {exp: {}}
"""


def test_full_collections_wait_for_the_start_up_and_the_collector_is_as_it_was_afterwards():
    before = gc.get_threshold()
    with full_collections_deferred():
        assert gc.get_threshold() == (*before[:2], NO_FULL_COLLECTIONS)
        start_up_done()
        assert gc.get_threshold() == before
        assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_train_imports_without_a_full_collection_and_trains_with_the_start_up_frozen(tiny_dataset, in_tmp_cwd):
    """Through main() in a fresh interpreter, so that torch, smp and Lightning are imported inside the command."""
    (in_tmp_cwd / "tiny.yaml").write_text(EXPERIMENT)
    probe = (
        "import gc, sys\n"
        "full = []\n"
        "gc.callbacks.append(lambda phase, info: full.append(1) if phase == 'start' and info['generation'] == 2"
        " else None)\n"
        "from segcli.cli import app, common, train\n"
        "seen = {}\n"
        "def spy():\n"
        "    seen['full collections during the start-up'] = len(full)\n"
        "    seen['torch imported'] = 'torch' in sys.modules\n"
        "    common.start_up_done()\n"
        "    seen['threshold'] = gc.get_threshold()[2]\n"
        "    seen['frozen'] = gc.get_freeze_count() > 100_000\n"
        "train.start_up_done = spy\n"
        "sys.argv = ['segcli', 'train', '-c', 'tiny.yaml', '-e', 'exp', '--dataset', sys.argv[1], '--classes',"
        f" {DEMO_CLASSES!r}, '--output-dir', 'out', '--cpu']\n"
        "seen['exit'] = 0\n"
        "try:\n    app.main()\nexcept SystemExit as exc:\n    seen['exit'] = exc.code\n"
        "seen['threshold after'] = gc.get_threshold()[2]\n"
        "seen['frozen after'] = gc.get_freeze_count()\n"
        "print('SEEN', seen)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe, str(tiny_dataset)], cwd=in_tmp_cwd, capture_output=True,
                            text=True, timeout=600, env={**os.environ, "WANDB_MODE": "disabled"})  # fmt: skip
    lines = [line for line in result.stdout.splitlines() if line.startswith("SEEN ")]
    assert lines, result.stdout[-2000:] + result.stderr[-3000:]
    seen = ast.literal_eval(lines[0][5:])
    assert seen == {
        "full collections during the start-up": 0,
        "torch imported": True,
        "threshold": gc.get_threshold()[2],
        "frozen": True,
        "threshold after": gc.get_threshold()[2],
        "frozen after": 0,
        "exit": 0,
    }, (seen, result.stderr[-3000:])
    assert (in_tmp_cwd / "out").is_dir(), result.stderr[-3000:]


@pytest.mark.parametrize("name", sorted(set(COMMANDS) - {"list-experiments", "schema"}))
def test_every_command_that_reads_data_or_models_ends_the_start_up(name):
    """Otherwise its whole run goes without full collections."""
    assert "start_up_done()" in inspect.getsource(COMMANDS[name]), name
