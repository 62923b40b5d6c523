"""Imports Lightning's dependencies make for segcli's users and segcli never uses, deferred until used.

torchmetrics 1.9 (which Lightning imports) imports `scipy.signal` when it is itself imported, for its audio
metrics and to give `scipy.signal` back the `hamming` alias SciPy removed. `scipy.signal` brings in
`scipy.stats`, `scipy.interpolate` and `numpy.ma`: 1.5 s of every `segcli train` start on a 2-core machine, a
tenth of a short run's overhead. Until torchmetrics imports it lazily (Lightning-AI/torchmetrics#3457),
`defer_scipy_signal()` lets torchmetrics' own import see a stand-in `scipy.signal`, which imports the real
module should anything read more than `hamming` from it. Afterwards `import scipy.signal` imports the real
module as usual; only the alias is left out, which torchmetrics' SRMR metric alone needs (segcli never uses it).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import threading
import types

DEFERRED = "scipy.signal"
IMPORTED_BY = "torchmetrics"


class _StandIn(types.ModuleType):
    """Answers `hamming` (torchmetrics' check); anything else it lacks imports the real module and is read there."""

    def __getattr__(self, name: str):
        return getattr(_real_module(), name)


_lock = threading.Lock()


def _real_module() -> types.ModuleType:
    with _lock:
        if isinstance(sys.modules.get(DEFERRED), _StandIn):
            del sys.modules[DEFERRED]
    return importlib.import_module(DEFERRED)


def _stand_in() -> types.ModuleType | None:
    """A stand-in that describes the real module (file, spec, path) without running it; None without SciPy."""
    try:
        spec = importlib.util.find_spec(DEFERRED)  # imports the `scipy` package alone: SciPy's submodules are lazy
    except ImportError:
        return None
    if spec is None:
        return None
    module = _StandIn(DEFERRED)
    module.__spec__, module.__loader__, module.__file__ = spec, spec.loader, spec.origin
    module.__path__, module.__package__ = spec.submodule_search_locations, DEFERRED
    module.hamming = lambda *args, **kwargs: _real_module().windows.hamming(*args, **kwargs)
    return module


class _WhileImporting(importlib.abc.MetaPathFinder):
    """Finds nothing itself: when torchmetrics is about to be imported, has its import run with the stand-in.

    It stays in `sys.meta_path` (removing it could make another thread's import, iterating the list, skip the
    next finder) and steps aside after that one import."""

    def __init__(self) -> None:
        self.pending = True

    def find_spec(self, name, path, target=None):
        if name != IMPORTED_BY or not self.pending:
            return None
        self.pending = False  # once (the module's import lock lets one thread here); the lookup below skips it
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or DEFERRED in sys.modules:
            return spec
        run_module = spec.loader.exec_module

        def exec_module(module: types.ModuleType) -> None:
            stand_in = _stand_in()
            if stand_in is None:
                run_module(module)
                return
            sys.modules[DEFERRED] = stand_in
            try:
                run_module(module)
            finally:
                with _lock:
                    if sys.modules.get(DEFERRED) is stand_in:
                        del sys.modules[DEFERRED]

        spec.loader.exec_module = exec_module
        return spec


def defer_scipy_signal() -> None:
    """Before torchmetrics is imported (a no-op after): see the module docstring."""
    if IMPORTED_BY in sys.modules or any(isinstance(finder, _WhileImporting) for finder in sys.meta_path):
        return
    sys.meta_path.insert(0, _WhileImporting())
