"""The layout's invariants (ARCHITECTURE.md): dependencies point one way, no cycles, the core never prints."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.support import REPO

PACKAGE = REPO / "segcli"
# Lower layers never import higher ones: cli -> training -> inference -> data/models -> config/artifacts/... -> errors
LAYERS = {
    "segcli.errors": 0,
    "segcli.config": 1,
    "segcli.files": 1,
    "segcli.artifacts": 1,
    "segcli.devices": 1,
    "segcli.drawing": 1,
    "segcli.data": 2,
    "segcli.models": 2,
    "segcli.inference": 3,
    "segcli.training": 4,
    "segcli.planning": 4,
    "segcli.cli": 5,
    "segcli.__main__": 5,
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every segcli module `path` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("segcli")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("segcli"):
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {name: {target for target in _imports(path) if target in modules and target != name}
            for name, path in modules.items()}  # fmt: skip


def _layer(module: str) -> int | None:
    matches = [prefix for prefix in LAYERS if module == prefix or module.startswith(prefix + ".")]
    return LAYERS[max(matches, key=len)] if matches else None


def test_every_module_has_a_layer():
    assert [name for name in _graph() if name != "segcli" and _layer(name) is None] == []


def test_no_import_goes_up_a_layer():
    upward = [(source, target) for source, targets in _graph().items() for target in targets
              if _layer(source) is not None and _layer(target) > _layer(source)]  # fmt: skip
    assert upward == [], upward


def test_no_import_cycles_between_modules():
    graph, state, cycles = _graph(), {}, []

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                cycles.append([*path[path.index(target) :], target] if target in path else [node, target])
            elif target not in state:
                visit(target, [*path, target])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == [], cycles


def test_the_core_never_prints_or_exits():
    """Only segcli/cli talks to the user: the core returns results or raises."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if _layer(_module_name(path)) == 5:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                func = ast.unparse(node.func)
                if func in ("print", "sys.exit", "exit", "sys.stdout.write", "sys.stderr.write", "typer.echo"):
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno} {func}")
    assert offenders == [], offenders


def _listed_long_modules() -> set[str]:
    """The modules ARCHITECTURE.md's "Long modules" table lets stay over the limit, each with its reason."""
    section = (REPO / "ARCHITECTURE.md").read_text().split("\n## Long modules\n", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `(segcli/[\w/]+\.py)` \|", section, flags=re.MULTILINE))


def test_modules_stay_readable():
    """No module over ~300 lines unless ARCHITECTURE.md lists it with its reason; none listed that is short."""
    long = {str(path.relative_to(REPO)) for path in PACKAGE.rglob("*.py") if len(path.read_text().splitlines()) > 320}
    listed = _listed_long_modules()
    assert long - listed == set(), f"split these, or list them with a reason in ARCHITECTURE.md: {long - listed}"
    assert listed - long == set(), f"no longer long: remove them from ARCHITECTURE.md's list: {listed - long}"
