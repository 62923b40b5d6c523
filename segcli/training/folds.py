"""k-fold cross-validation: split the pooled images into K folds, train K runs, summarise them.

The split is deterministic (the experiment's seed), disjoint and complete: every image is in exactly
one fold. With a group pattern, images whose names share the pattern's match (a video sequence, a
patient, a slide) stay in one fold, so neighbouring frames never sit on both sides of a split. Groups
are dealt in a seeded order to the fold that has the fewest images so far, which keeps folds balanced.

Layout: `<output>/checkpoints/<run>-kfold/` holds `kfold.json` (the split and, once done, the summary)
and one ordinary run folder per fold, `<run>-fold1` .. `<run>-foldK`, each its own tracker run (in one W&B
group; MLflow child runs of one parent run). `--resume` skips finished folds and continues the others.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from segcli.artifacts.checkpoints import read_checkpoint
from segcli.artifacts.folders import KFOLD_RECORD, RunDir, RunRecord
from segcli.config.naming import fold_run_name, kfold_folder_name
from segcli.config.schema import Experiment
from segcli.data.io import Pair, list_pairs
from segcli.errors import ConfigError
from segcli.files import json_number, write_json
from segcli.training.finish import TrainResult
from segcli.training.report import mean_and_std
from segcli.training.run import RunOptions, train


def group_key(stem: str, pattern: re.Pattern | None) -> str:
    """The part of a file name that ties images together (the pattern's first group, or its match)."""
    if pattern is None:
        return stem
    match = pattern.search(stem)
    if match is None:
        return stem
    return match.group(1) if match.groups() else match.group(0)


def split_folds(pairs: list[Pair], folds: int, seed: int, groups: str | None = None) -> list[list[Pair]]:
    """`folds` disjoint lists covering `pairs`, deterministic for a seed; groups stay whole."""
    try:
        pattern = re.compile(groups) if groups else None
    except re.error as exc:
        raise ConfigError(f"--fold-groups {groups!r}: not a regular expression ({exc})") from None
    members: dict[str, list[Pair]] = {}
    for pair in sorted(pairs, key=lambda p: p.stem):
        members.setdefault(group_key(pair.stem, pattern), []).append(pair)
    if len(members) < folds:
        raise ConfigError(
            f"--folds {folds}: only {len(members)} group(s) of images to split"
            + (f" with --fold-groups {groups!r}" if groups else "")
            + "; use fewer folds"
        )
    order = np.random.default_rng(seed).permutation(sorted(members)).tolist()
    result: list[list[Pair]] = [[] for _ in range(folds)]
    for key in order:
        smallest = min(range(folds), key=lambda index: (len(result[index]), index))
        result[smallest] += members[key]
    return [sorted(fold, key=lambda p: p.stem) for fold in result]


@dataclass
class FoldResult:
    index: int
    run_name: str
    val_images: int
    best_epoch: int | None
    metrics: dict[str, float]
    """The fold's best-epoch val metrics (as in its ckpt_best.pth)."""


@dataclass
class KFoldResult:
    run_name: str
    folder: Path
    folds: list[FoldResult]
    summary: dict[str, tuple[float, float]] = field(default_factory=dict)
    """metric key -> (mean, sample std) over the folds; NaN folds (class absent) left out."""
    stopped: TrainResult | None = None
    """The fold run a Ctrl-C stopped (after an epoch, its state saved); the folds after it were not started."""


def summarise(folds: list[FoldResult]) -> dict[str, tuple[float, float]]:
    keys = sorted({key for fold in folds for key in fold.metrics if key.startswith("val/")})
    return {key: mean_and_std([fold.metrics.get(key) for fold in folds]) for key in keys}


def _fold_result(index: int, name: str, run_dir: RunDir, val_images: int) -> FoldResult:
    """A fold's best-epoch scores, read back from its ckpt_best.pth (the same for folds run now and before)."""
    if not run_dir.best.is_file():
        return FoldResult(index, name, val_images, None, {})
    checkpoint = read_checkpoint(run_dir.best)
    return FoldResult(index, name, val_images, checkpoint.epoch, checkpoint.metrics)


def _read_split(record: Path) -> dict | None:
    return json.loads(record.read_text()) if record.is_file() else None


def train_folds(
    experiment: Experiment, options: RunOptions, *, folds: int, source: str = "all", groups: str | None = None
) -> KFoldResult:
    """Train the K fold runs of one experiment (see the module docstring)."""
    pooled = list_pairs(options.dataset, "train") + (list_pairs(options.dataset, "val") if source == "all" else [])
    split = split_folds(pooled, folds, experiment.seed, groups)
    folder = options.output_dir / "checkpoints" / kfold_folder_name(options.run_name)
    names = [fold_run_name(options.run_name, index + 1) for index in range(folds)]
    document = {
        "run_name": options.run_name,
        "folds": folds,
        "source": source,
        "groups": groups,
        "seed": experiment.seed,
        "runs": names,
        "val_images": {name: [p.image.name for p in fold] for name, fold in zip(names, split, strict=True)},
    }
    existing = _read_split(folder / KFOLD_RECORD)
    if existing and not options.overwrite and existing.get("val_images") != document["val_images"]:
        raise ConfigError(
            f"{folder} holds a k-fold run with another split (folds, seed, groups or images changed); pass "
            "--overwrite to replace it or --output-dir to train elsewhere"
        )
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / KFOLD_RECORD, {**(existing or {}), **document})
    results, stopped = [], None
    for index, (name, val) in enumerate(zip(names, split, strict=True), start=1):
        run_dir = RunDir(folder / name)
        record = RunRecord.read(run_dir) if run_dir.record.is_file() else None
        finished = record is not None and record.finished and record.epochs_completed >= experiment.max_epochs
        if not (finished and not options.overwrite):
            train_pairs = [pair for fold in split if fold is not val for pair in fold]
            fold_options = replace(
                options, run_name=name, run_dir=run_dir.path, pairs={"train": train_pairs, "val": val},
                group=folder.name, resume=options.resume and run_dir.state.is_file(),
            )  # fmt: skip
            result = train(experiment, fold_options)
            if not result.primary:
                continue
            if result.interrupted:
                stopped = result
                break
        results.append(_fold_result(index, name, run_dir, len(val)))
    outcome = KFoldResult(options.run_name, folder, results, summarise(results), stopped)
    if stopped is None and len(results) == folds:
        summary = {
            key: {"mean": json_number(mean), "std": json_number(std)} for key, (mean, std) in outcome.summary.items()
        }
        write_json(folder / KFOLD_RECORD, {**document, "summary": summary})
    return outcome
