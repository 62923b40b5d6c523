"""Load experiment files, merge `model` + `defaults` + one experiment, and validate the result."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from segcli.config.schema import SHORTHANDS, Experiment, ExperimentFile
from segcli.errors import ConfigError, did_you_mean


class _SafeLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading `1e-4` as a float (YAML 1.2) instead of the string '1e-4'."""


_SafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def read_yaml(path: Path) -> Any:
    """Parse a YAML file with the safe loader; syntax errors name the line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (IsADirectoryError, UnicodeDecodeError, PermissionError) as exc:
        raise ConfigError(f"{path}: cannot read the file ({exc})") from None
    try:
        return yaml.load(text, Loader=_SafeLoader)  # noqa: S506 - _SafeLoader derives from SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None


def load_experiment_file(path: Path) -> ExperimentFile:
    data = read_yaml(path)
    if data is None:
        raise ConfigError(f"{path}: the file is empty; it needs `model:`, `defaults:` and `experiments:` blocks")
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: the top level must be a mapping with `model:`, `defaults:` and `experiments:` "
            f"blocks, not a {type(data).__name__}"
        )
    try:
        return ExperimentFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(path, exc, ExperimentFile, lambda loc: ".".join(map(str, loc)))) from None


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key; any other value (lists included) replaces the base value."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def merged_experiment(file: ExperimentFile, name: str, path: Path) -> dict[str, Any]:
    """The experiment as plain data before validation: model, then defaults, then its own keys."""
    if name not in file.experiments:
        raise ConfigError(f"{path}: no experiment '{name}'; {did_you_mean(name, file.experiments)}")
    base = deep_merge({"model": file.model}, file.defaults)
    return deep_merge(base, file.experiments[name] or {})


COMMAND_LINE = "command-line option "


def resolve_experiment(
    file: ExperimentFile, name: str, path: Path, overrides: dict[str, Any] | None = None, origin: str = COMMAND_LINE
) -> Experiment:
    """Merge and validate one experiment; `overrides` ({'a.b': value}) come from the command line (`--set`) or
    from `segcli tune`'s search block (`origin` "search."), named so in error messages."""
    resolved = experiment_or_problems(file, name, path, overrides, origin)
    if isinstance(resolved, list):
        raise ConfigError(problems_message(path, resolved))
    return resolved


def experiment_or_problems(
    file: ExperimentFile, name: str, path: Path, overrides: dict[str, Any] | None = None, origin: str = COMMAND_LINE
) -> Experiment | list[str]:
    """The validated experiment, or one `file: where: what (and the fix)` line per problem."""
    merged = merged_experiment(file, name, path)
    for dotted, value in (overrides or {}).items():
        try:
            set_key(merged, dotted, value)
        except KeyError as exc:
            return [f"{path}: {origin}{dotted}: {exc.args[0]}"]
    try:
        return Experiment.model_validate(merged)
    except ValidationError as exc:
        return problem_lines(path, exc, Experiment, _origin_locator(file, name, overrides or {}, origin))


def set_key(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `a.b.c` in merged experiment data, as `--set` does: missing mappings are created, a number steps
    into a list (0-based: `loss.terms.1.weight`), and a top-level block written short (`loss: [ce, dice]`,
    `monitor: val/loss`) is expanded before a key inside it is set. KeyError(message) when the path cannot
    be followed."""
    *parents, last = dotted.split(".")
    block = parents[0] if parents else None
    if block in SHORTHANDS and data.get(block) is not None:
        data[block] = SHORTHANDS[block](data[block])
    elif block in Experiment.model_fields and data.get(block) is None and any(p.isdigit() for p in dotted.split(".")):
        default = Experiment.model_fields[block].get_default(call_default_factory=True)  # into the default's list
        data[block] = default.model_dump(mode="json") if isinstance(default, BaseModel) else default
    target: Any = data
    for depth, part in enumerate([*parents, last]):
        walked = ".".join(parents[:depth])
        if isinstance(target, list):
            if not target:
                raise KeyError(f"{walked} is an empty list: there is no item to set")
            if not part.isdigit() or int(part) >= len(target):
                raise KeyError(f"{walked} is a list of {len(target)}: use an index from 0 to {len(target) - 1}")
            key: Any = int(part)
        elif isinstance(target, dict):
            key = part
        else:
            raise KeyError(f"{walked} is {target!r}, not a block of keys")
        if depth == len(parents):
            target[key] = value
            return
        if isinstance(target, dict) and target.get(key) is None:
            target[key] = {}
        target = target[key]


def parse_overrides(assignments: list[str]) -> dict[str, Any]:
    """`--set key.path=value` items -> {'key.path': value}; values are read as YAML (3e-4, true, [1, 2], null)."""
    overrides: dict[str, Any] = {}
    for item in assignments:
        key, separator, text = item.partition("=")
        key = key.strip()
        if not separator or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"--set {item!r}: write it as key.path=value, e.g. --set lr=3e-4")
        try:
            overrides[key] = yaml.load(text, Loader=_SafeLoader) if text.strip() else None  # noqa: S506
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({getattr(exc, 'problem', exc)})") from None
    return overrides


def expand_experiments(file: ExperimentFile, names: list[str], path: Path) -> list[str]:
    """`all` means every experiment of the file, in file order; otherwise the names as given (checked)."""
    if "all" in names:
        return list(file.experiments)
    for name in names:
        merged_experiment(file, name, path)  # raises with close matches for an unknown name
    return list(dict.fromkeys(names))


def load_experiment(path: Path, name: str) -> Experiment:
    return resolve_experiment(load_experiment_file(path), name, path)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists stay whole values."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def _has_path(data: Any, loc: tuple[Any, ...]) -> bool:
    for part in loc:
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and part < len(data):
            data = data[part]
        else:
            return False
    return True


def _origin_locator(file: ExperimentFile, name: str, overrides: dict[str, Any], origin: str = COMMAND_LINE):
    """Name the block a bad value came from, so the user edits the right place."""
    override = file.experiments[name] or {}

    def locate(loc: tuple[Any, ...]) -> str:
        dotted = ".".join(map(str, loc))
        if not loc:
            return f"experiments.{name}"
        if dotted in overrides or any(key.startswith(dotted + ".") for key in overrides):
            return f"{origin}{dotted}"
        if _has_path(override, loc):
            return f"experiments.{name}.{dotted}"
        if _has_path(file.defaults, loc):
            return f"defaults.{dotted}"
        if loc and loc[0] == "model":
            return dotted
        return f"experiments.{name}.{dotted}"

    return locate


def _format_errors(path: Path, exc: ValidationError, schema: type[BaseModel], locate) -> str:
    return problems_message(path, problem_lines(path, exc, schema, locate))


def problems_message(path: Path, lines: list[str], where: str = "the experiment file") -> str:
    """One problem is one line; several are counted first, then listed one per line."""
    if len(lines) == 1:
        return lines[0]
    return "\n".join([f"{path}: {len(lines)} problems in {where}", *(f"  {line}" for line in lines)])


def problem_lines(path: Path, exc: ValidationError, schema: type[BaseModel], locate) -> list[str]:
    """One `file: where: what (and the fix)` line per problem of a validation error."""
    lines = []
    for error in exc.errors():
        loc = tuple(part for part in error["loc"] if not _is_validator_tag(part))
        if error["type"] == "extra_forbidden":
            valid = _valid_keys(schema, loc[:-1])
            message = f"unknown key '{loc[-1]}'; " + did_you_mean(str(loc[-1]), valid)
        elif error["type"] == "missing":
            message = "required key is missing"
        else:
            message = error["msg"].removeprefix("Value error, ")
        lines.append(f"{path}: {locate(loc)}: {message}")
    return lines


def _is_validator_tag(part: Any) -> bool:
    # Pydantic inserts tags such as 'function-after[...]' into locations; users never wrote them.
    return isinstance(part, str) and ("[" in part and "]" in part)


def _valid_keys(schema: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Keys (as written: aliases) of the sub-model found by following `loc` from `schema`."""
    model: Any = schema
    mapping = False  # the previous field maps free keys (search: {key path: ...}) to sub-models
    for part in loc:
        if isinstance(part, int) or mapping:
            mapping = False
            continue
        field = _fields(model).get(part)
        if field is None:
            return []
        mapping = _is_mapping(field.annotation)
        model = _model_in(field.annotation)
    return list(_fields(model))


def _fields(model: Any) -> dict[str, Any]:
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return {}
    return {field.alias or name: field for name, field in model.model_fields.items()}


def _is_mapping(annotation: Any) -> bool:
    """`dict[...]` or `dict[...] | None`."""
    return any(get_origin(option) is dict for option in (annotation, *get_args(annotation)))


def _model_in(annotation: Any) -> Any:
    """The BaseModel inside `X | None` or `list[X]`, else the annotation itself."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if isinstance(found, type) and issubclass(found, BaseModel):
            return found
    return annotation
