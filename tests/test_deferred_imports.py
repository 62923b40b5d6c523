"""`segcli.deferred_imports`: torchmetrics' import no longer imports scipy.signal, which still works when used."""

from __future__ import annotations

import subprocess
import sys

from tests.support import REPO


def _python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_the_cli_imports_lightning_without_scipy_signal_which_works_when_imported_later():
    out = _python(
        "import sys\n"
        "from segcli.cli import app\n"
        "sys.argv = ['segcli', '--help']\n"
        "try:\n    app.main()\nexcept SystemExit:\n    pass\n"
        "import segcli.training.run, torchmetrics\n"
        "print('DEFERRED', 'scipy.signal' not in sys.modules)\n"
        "import scipy.signal\n"
        "print('REAL', type(scipy.signal).__name__, [round(float(v), 4) for v in scipy.signal.windows.hamming(3)],"
        " [round(float(v), 4) for v in scipy.signal.butter(2, 0.5)[0]])\n"
        "print('METRIC', float(torchmetrics.functional.mean_squared_error(*__import__('torch').ones(2, 3))))\n"
    )
    assert "DEFERRED True" in out, out
    assert "REAL module [0.08, 1.0, 0.08] [0.2929, 0.5858, 0.2929]" in out, out
    assert "METRIC 0.0" in out, out


def test_reading_anything_but_hamming_from_the_stand_in_imports_the_real_module():
    out = _python(
        "import sys\n"
        "from segcli import deferred_imports\n"
        "stand_in = deferred_imports._stand_in()\n"
        "sys.modules['scipy.signal'] = stand_in\n"
        "import scipy.signal as seen\n"
        "print('STAND-IN', seen is stand_in, hasattr(seen, 'hamming'), 'scipy.signal.windows' in sys.modules)\n"
        "butter = seen.butter\n"
        "real = sys.modules['scipy.signal']\n"
        "print('REAL', real is not stand_in, butter is real.butter, [round(float(v), 4) for v in seen.hamming(3)])\n"
    )
    assert "STAND-IN True True False" in out, out
    assert "REAL True True [0.08, 1.0, 0.08]" in out, out
