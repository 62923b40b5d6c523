"""The dataset check's first step, for one split: its folder layout (a missing or misnamed folder, files that are
not images, two files for one stem, sub-folders, images without masks and masks without images) and the
image/mask pairs it finds, each with its region mask when the split has a `roi/` folder (or one is given, e.g.
`evaluate --roi DIR`), which must then hold one for every image. Reads names only, no pixels."""

from __future__ import annotations

from pathlib import Path

from segcli.data.check_report import NAMES_KEPT, WARNING, Problem
from segcli.data.io import IMAGES, LABELS, ROI, Pair, make_pairs, scan_folder


def layout_problems(root: Path, split: str, roi: Path | None = None) -> tuple[list[Problem], list[Pair]]:
    """The problems of `root/split`'s folders and files, and the image/mask pairs it holds; `roi`: the folder of
    region masks (by default <root>/<split>/roi/, checked when it exists)."""
    if not (root / split).is_dir():
        return [Problem("missing-split", split, None, f"folder {root / split} does not exist")], []
    problems: list[Problem] = []
    files = {}
    folders = {IMAGES: root / split / IMAGES, LABELS: root / split / LABELS, ROI: roi or root / split / ROI}
    for kind, where in folders.items():
        if kind != ROI and not where.is_dir():
            problems.append(Problem("missing-split", split, None, _missing_folder(root / split, kind)))
        folder = scan_folder(where)
        files[kind] = folder.files
        for path in folder.not_images:
            detail = f"{kind}/{path.name} is not an image file (ignored)"
            problems.append(Problem("not-an-image", split, path.name, detail, WARNING))
        for paths in folder.duplicates:
            detail = f"{kind}/ has {', '.join(p.name for p in paths)}: keep one file per stem"
            problems.append(Problem("duplicate-stem", split, paths[0].name, detail))
        if folder.subfolders:
            names = ", ".join(f"{p.name}/" for p in folder.subfolders[:NAMES_KEPT])
            detail = f"{kind}/ has sub-folders ({names}) whose files are not read: segcli reads {split}/{kind}/* only"
            problems.append(Problem("nested-folders", split, None, detail, WARNING))
    images, masks = files[IMAGES], files[LABELS]
    both_folders = all((root / split / kind).is_dir() for kind in (IMAGES, LABELS))
    if both_folders:  # a missing folder is one problem, not one per file
        for stem in sorted(images.keys() - masks.keys()):
            name = images[stem].name
            problems.append(Problem("image-without-mask", split, name, f"no labels/{stem}.* for images/{name}"))
        for stem in sorted(masks.keys() - images.keys()):
            name = masks[stem].name
            problems.append(Problem("mask-without-image", split, name, f"no images/{stem}.* for labels/{name}"))
        if folders[ROI].is_dir():
            for stem in sorted(images.keys() - files[ROI].keys()):
                name = images[stem].name
                detail = f"no {roi or ROI}/{stem}.* for images/{name}: every image needs its region mask"
                problems.append(Problem("missing-roi", split, name, detail))
    pairs = make_pairs(images, masks, files[ROI])
    if not images and not masks and not problems:
        problems.append(Problem("empty-split", split, None, f"{root / split} holds no images and no masks"))
    return problems, pairs


def _missing_folder(split_dir: Path, kind: str) -> str:
    """Name the folder that is there instead (masks/ for labels/, ...), so the fix is a rename."""
    others = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and p.name not in (IMAGES, LABELS, ROI))
    detail = f"folder {split_dir / kind} does not exist"
    if others:
        detail += f"; found {', '.join(f'{name}/' for name in others)}: rename the one holding the {kind} to {kind}/"
    return detail
