"""A tune folder's results: tune_results.csv, best.yaml, tune.json and the pictures, and reading them back.

Written from the study's trials after every trial (the pictures at the end), by whichever process ran it:
each file is a whole snapshot of the study. `read_results` rebuilds the same from the folder alone, for
`segcli report <tune folder>`.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from segcli.artifacts.folders import TuneDir
from segcli.config.distribution import SearchDistribution
from segcli.config.loader import flatten, load_experiment_file, resolve_experiment
from segcli.config.naming import trial_run_name
from segcli.config.search import SEARCH
from segcli.drawing.tune_charts import history_chart, importances_chart, slices_chart
from segcli.errors import ConfigError
from segcli.files import save_image, write_json, write_text

STATES = ("complete", "pruned", "failed", "skipped", "running", "waiting")


@dataclass
class TrialRow:
    """One trial as tune_results.csv shows it."""

    number: int
    run: str
    state: str
    """complete, pruned, failed, skipped (not run: the study had its trials), running, waiting (a queued retry)."""
    params: dict[str, Any]
    best: float | None = None
    """The best value of the metric over the epochs the trial ran (pruned trials too)."""
    best_epoch: int | None = None
    epochs: int | None = None
    seconds: float | None = None
    note: str = ""


@dataclass
class TuneRecord:
    """tune.json: the study's settings, what `segcli report` needs besides the CSV."""

    study: str
    storage: str
    """The storage URL, password hidden."""
    config: str
    experiment: str
    metric: str
    direction: str
    pruner: str
    trials: int | None
    search: dict[str, dict[str, Any]]
    experiment_keys: dict[str, Any] = field(default_factory=dict)
    """The resolved experiment before sampling, flattened: a study is continued only with the same."""
    importances: dict[str, float] | None = None

    @classmethod
    def from_spec(cls, spec) -> TuneRecord:
        from sqlalchemy.engine import make_url

        options = spec.options
        file = load_experiment_file(options.config_file)
        base = resolve_experiment(file, options.experiment_name, options.config_file)
        search = {key: space.model_dump(mode="json", by_alias=True, exclude_none=True) for key, space in
                  file.search.items()}  # fmt: skip
        try:
            storage = make_url(spec.storage).render_as_string(hide_password=True)
        except Exception:  # noqa: BLE001 - not a URL: opening the study says so
            storage = spec.storage
        return cls(study=spec.study_name, storage=storage, config=str(options.config_file),
                   experiment=options.experiment_name, metric=spec.metric, direction=spec.direction,
                   pruner=options.pruner, trials=options.trials, search=search,
                   experiment_keys=flatten(base.model_dump(mode="json")))  # fmt: skip

    def identity(self) -> dict[str, Any]:
        """What must not change while a study goes on (stored in the study itself)."""
        return json.loads(json.dumps({
            "experiment": self.experiment, "metric": self.metric, "direction": self.direction,
            **{f"{SEARCH}{key}": space for key, space in self.search.items()},
            **{f"experiments.{self.experiment}.{key}": value for key, value in self.experiment_keys.items()},
        }))  # fmt: skip

    def spaces(self) -> dict[str, SearchDistribution]:
        return {key: SearchDistribution.model_validate(space) for key, space in self.search.items()}

    @property
    def metric_column(self) -> str:
        return f"best {self.metric}"


def best_value(history: list[dict[str, float]], metric: str, direction: str) -> tuple[float | None, int | None]:
    """The best value of `metric` over a run's epochs and its (1-based) epoch; NaN epochs left out."""
    scored = [(row[metric], int(row["epoch"])) for row in history if not math.isnan(row.get(metric, math.nan))]
    if not scored:
        return None, None
    pick = max if direction == "maximize" else min
    return pick(scored, key=lambda item: item[0])


def trial_row(trial, metric: str, study: str, retries: dict[int, int] | None = None) -> TrialRow:
    """A FrozenTrial -> its row; `retries` maps a dead trial's number to the number of its retry."""
    attrs = trial.user_attrs
    state = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running",
             "WAITING": "waiting"}[trial.state.name]  # fmt: skip
    note = ""
    if attrs.get("skipped"):
        state, note = "skipped", "not run: the study already had its trials"
    elif state == "pruned":
        note = f"pruned after epoch {attrs.get('pruned_after')}"
    elif state == "failed":
        cause = attrs.get("error") or ("stopped by Ctrl-C" if attrs.get("stopped") else "its process died")
        retry = (retries or {}).get(trial.number)
        note = cause + (f"; retried as trial {retry}" if retry is not None else "")
    if attrs.get("retry_of") is not None:
        note = "; ".join(filter(None, [note, f"retry of trial {attrs['retry_of']}"]))
    return TrialRow(number=trial.number, run=attrs.get("run") or trial_run_name(study, trial.number), state=state,
                    params=dict(trial.params), best=attrs.get("best"), best_epoch=attrs.get("best_epoch"),
                    epochs=attrs.get("epochs"), seconds=attrs.get("seconds"), note=note)  # fmt: skip


def trial_rows(trials, metric: str, study: str) -> list[TrialRow]:
    retries = {t.user_attrs["retry_of"]: t.number for t in trials if t.user_attrs.get("retry_of") is not None}
    return [trial_row(trial, metric, study, retries) for trial in trials]


def best_row(rows: list[TrialRow], direction: str) -> TrialRow | None:
    """The best completed trial (pruned ones never are: they did not finish), the lowest number on a tie."""
    complete = [row for row in rows if row.state == "complete" and row.best is not None]
    if not complete:
        return None
    sign = -1 if direction == "maximize" else 1
    return min(complete, key=lambda row: (sign * row.best, row.number))


# --- the files ---------------------------------------------------------------------------------------------


def results_csv(rows: list[TrialRow], record: TuneRecord) -> str:
    stream = io.StringIO()
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(["trial", "run", "state", *record.search, record.metric_column, "best epoch", "epochs", "seconds",
                     "note"])  # fmt: skip
    for row in rows:
        params = ["" if row.params.get(key) is None else row.params[key] for key in record.search]
        writer.writerow([row.number, row.run, row.state, *params, _blank(row.best), _blank(row.best_epoch),
                         _blank(row.epochs), _blank(row.seconds), row.note])  # fmt: skip
    return stream.getvalue()


def _blank(value: Any) -> Any:
    return "" if value is None else value


def best_yaml(record: TuneRecord, row: TrialRow, tune_dir: TuneDir) -> str:
    """A complete experiment file: the experiment with the best trial's values, a comment naming the trial."""
    path = Path(record.config)
    experiment = resolve_experiment(load_experiment_file(path), record.experiment, path, row.params, origin=SEARCH)
    data = experiment.model_dump(mode="json")
    model = data.pop("model")
    values = ", ".join(f"{key}={value}" for key, value in row.params.items())
    header = [
        f"# segcli tune, study {record.study}: the best of its completed trials by {record.metric} is trial "
        f"{row.number} (run {row.run}),",
        f"# {record.metric} {row.best:.4f} at epoch {row.best_epoch}, with {values}.",
        f"# It is experiment '{record.experiment}' of {record.config} with those values set. Train it with:",
        f"#   segcli train -c {tune_dir.best_yaml} -e {record.experiment}",
    ]
    body = yaml.safe_dump({"model": model, "experiments": {record.experiment: data}}, sort_keys=False)
    return "\n".join(header) + "\n" + body


def write_results(tune_dir: TuneDir, record: TuneRecord, trials, pictures: bool = False) -> list[TrialRow]:
    """tune_results.csv, tune.json and (once a trial completed) best.yaml; with `pictures` the pictures too."""
    rows = trial_rows(trials, record.metric, record.study)
    write_text(tune_dir.results_csv, results_csv(rows, record))
    best = best_row(rows, record.direction)
    write_json(tune_dir.record, {**asdict(record), "best_trial": None if best is None else best.number})
    if best is not None:
        write_text(tune_dir.best_yaml, best_yaml(record, best, tune_dir))
    if pictures:
        draw_pictures(tune_dir, record, rows)
    return rows


def draw_pictures(tune_dir: TuneDir, record: TuneRecord, rows: list[TrialRow]) -> list[Path]:
    """The optimisation history, the metric against each parameter and (once known) the importances."""
    title = f"study {record.study}"
    drawn = [save_image(tune_dir.history_png, history_chart(rows, record.metric, record.direction, title))]
    drawn.append(save_image(tune_dir.slices_png, slices_chart(rows, record.spaces(), record.metric, title)))
    if record.importances:
        drawn.append(save_image(tune_dir.importances_png, importances_chart(record.importances, record.metric, title)))
    return drawn


def read_results(folder: Path) -> tuple[TuneRecord, list[TrialRow]]:
    """A tune folder's tune.json and tune_results.csv -> the record and the rows (for `segcli report`)."""
    tune_dir = TuneDir(folder)
    if not tune_dir.record.is_file() or not tune_dir.results_csv.is_file():
        raise ConfigError(f"{folder}: no {tune_dir.record.name} and {tune_dir.results_csv.name}; pass a folder "
                          "written by `segcli tune`")  # fmt: skip
    data = json.loads(tune_dir.record.read_text())
    data.pop("best_trial", None)
    record = TuneRecord(**data)
    spaces = record.spaces()
    with tune_dir.results_csv.open(newline="") as stream:
        rows = [_row(line, record, spaces) for line in csv.DictReader(stream)]
    return record, rows


def _row(line: dict[str, str], record: TuneRecord, spaces: dict[str, SearchDistribution]) -> TrialRow:
    def number(text: str, kind=float):
        return None if text == "" else kind(float(text))

    params = {key: _param(line[key], space) for key, space in spaces.items() if line.get(key, "") != ""}
    return TrialRow(number=int(line["trial"]), run=line["run"], state=line["state"], params=params,
                    best=number(line[record.metric_column]), best_epoch=number(line["best epoch"], int),
                    epochs=number(line["epochs"], int), seconds=number(line["seconds"]), note=line["note"])  # fmt: skip


def _param(text: str, space: SearchDistribution) -> Any:
    """A CSV cell back to the value the trial had: the choice it writes, or the number."""
    if space.choice is not None:
        return next((choice for choice in space.choice if str(choice) == text), text)
    return int(text) if space.integer is not None else float(text)
