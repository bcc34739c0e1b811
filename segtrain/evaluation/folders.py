"""``segtrain-evaluate pred=DIR label=DIR``: match prediction and label files by case, check them, score, write.

Everything is checked before anything is scored or written: each prediction has a label of the
same case (file name without its ending; ``.nii.gz``, ``.nii``, ``.nrrd``, ``.png``, ``.tif`` may
differ between the two), both are readable single-channel label maps of the same shape, and their
affines place the voxels within ``geometry_tolerance`` voxels of each other. Class values must be
integral and lie in the classes of the dataset. Labels without a prediction are listed and left out.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segtrain.data.layouts import strip_suffix
from segtrain.data.readers import IMAGE_2D_SUFFIXES, VOLUME_SUFFIXES, read_header, read_voxels
from segtrain.errors import ConfigError, DataError
from segtrain.evaluation.scores import ScoreSettings, score_case

log = logging.getLogger("segtrain")

SUFFIXES = VOLUME_SUFFIXES + IMAGE_2D_SUFFIXES
LABEL_FOLDERS = ("labelsTs", "labelsTr", "labels")  # looked for inside a dataset root given as label=


@dataclass
class Pair:
    case: str
    pred: Path
    label: Path
    spacing: list[float] = field(default_factory=list)


def label_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(SUFFIXES)
                  and not p.name.startswith("."))


def label_folder(label: str | Path) -> Path:
    """The folder of label files: ``label`` itself, or its labelsTs/, labelsTr/ or labels/ (a dataset root)."""
    path = Path(label).expanduser()
    if not path.is_dir():
        raise DataError(f"label={label}: no such folder; pass the folder of label files (or a dataset root with labelsTs/)")
    for sub in LABEL_FOLDERS:
        if (path / sub).is_dir() and not label_files(path):
            return path / sub
    return path


def class_names_near(folder: Path) -> dict[int, str]:
    """Class names from a ``dataset.json`` in the label folder or its parent (nnU-Net, MSD or 2D conventions)."""
    from segtrain.data.layouts import _class_names

    for meta_path in (folder / "dataset.json", folder.parent / "dataset.json"):
        if meta_path.is_file():
            try:
                names = _class_names(json.loads(meta_path.read_text()).get("labels"), meta_path)
            except (json.JSONDecodeError, AttributeError, DataError):
                continue
            if names:
                return dict(enumerate(names))
    return {}


def match_cases(pred: str | Path, label: str | Path, cases: list[str] | None = None) -> tuple[list[Pair], list[str]]:
    """(pairs of prediction and label files, case ids of labels without a prediction); ``cases``: only these predictions.

    Raises:
        DataError: no prediction folder or files, no label folder, or a prediction without a label.
    """
    pred_dir = Path(pred).expanduser()
    if not pred_dir.is_dir():
        raise DataError(f"pred={pred}: no such folder; pass the folder segtrain-predict wrote (one label file per case)")
    predictions = [p for p in label_files(pred_dir) if not strip_suffix(p.name).endswith("_probabilities")
                   and (cases is None or strip_suffix(p.name) in cases)]
    if not predictions:
        raise DataError(f"pred={pred_dir}: no prediction files ({', '.join(SUFFIXES)}) found")
    labels_dir = label_folder(label)
    labels = {strip_suffix(p.name): p for p in label_files(labels_dir)}
    if not labels:
        raise DataError(f"label={labels_dir}: no label files ({', '.join(SUFFIXES)}) found")
    pairs = []
    for path in predictions:
        case = strip_suffix(path.name)
        if case not in labels:
            shown = ", ".join(sorted(labels)[:3]) + (", ..." if len(labels) > 3 else "")
            raise DataError(f"{path}: no label for case {case!r} in {labels_dir} (it holds {shown}); pass the label folder "
                            "of these cases, or remove the prediction")
        pairs.append(Pair(case, path, labels[case]))
    unmatched = sorted(set(labels) - {p.case for p in pairs})
    return pairs, unmatched


def check_pair(pair: Pair, geometry_tolerance: float = 0.05) -> None:
    """Readable single-channel files of one shape and (3D) one geometry; sets ``pair.spacing`` (mm, or pixels in 2D)."""
    from segtrain.data.readers import max_displacement, voxel_spacing

    spatial_dims = 2 if pair.label.name.lower().endswith(IMAGE_2D_SUFFIXES) else 3
    label = read_header(str(pair.label), spatial_dims)
    pred = read_header(str(pair.pred), spatial_dims)
    for header, what in ((label, "label"), (pred, "prediction")):
        if header.channels != 1:
            raise DataError(f"{header.path}: the {what} has {header.channels} channels; pass single-channel label maps "
                            "(class indices), not probabilities or colour images")
    if pred.shape != label.shape:
        raise DataError(f"{pair.pred}: prediction shape {list(pred.shape)} differs from its label {pair.label} shape "
                        f"{list(label.shape)}; predict on this label's image (segtrain-predict keeps each input's grid)")
    pair.spacing = voxel_spacing(label.affine, spatial_dims)
    if pred.affine is not None and label.affine is not None:
        shift = max_displacement(pred.affine, label.affine, label.shape)
        if shift > geometry_tolerance * min(pair.spacing):
            raise DataError(f"{pair.pred}: prediction geometry (affine) differs from its label {pair.label} by up to "
                            f"{shift:.3g} mm; predict on this label's image, or resample the prediction onto the label grid")


def read_label_map(path: Path, what: str, mapping: dict[int, int] | None = None) -> np.ndarray:
    """Integral class indices of a label or prediction file (spatial axes, MONAI's order), values remapped by ``mapping``."""
    raw, slope, intercept = read_voxels(str(path))
    if raw.ndim > 3 or (raw.ndim == 3 and path.name.lower().endswith(IMAGE_2D_SUFFIXES)):
        raw = raw.reshape(raw.shape[:3] if raw.ndim > 3 else raw.shape[:2]) if raw.shape[-1] == 1 else raw
    values = raw.astype(np.float64) * slope + intercept if (slope, intercept) != (1.0, 0.0) else raw
    if not np.issubdtype(values.dtype, np.integer):
        if not np.isfinite(values).all() or not np.array_equal(values, np.round(values)):
            raise DataError(f"{path}: the {what} has non-integral values; pass hard label maps (class indices 0, 1, ...)")
    values = np.asarray(values).astype(np.int32)
    if mapping:  # e.g. {255: 1} for 0/255 masks, as data.label_mapping did for training
        mapped = values.copy()
        for source, target in mapping.items():
            mapped[values == source] = target
        values = mapped
    return values


def read_label(path: str | Path, mapping: dict[int, int] | None = None) -> tuple[np.ndarray, list[float]]:
    """A label file's class indices (remapped by ``mapping``) and its voxel spacing in mm (pixels in 2D)."""
    from segtrain.data.readers import voxel_spacing

    path = Path(path)
    spatial_dims = 2 if path.name.lower().endswith(IMAGE_2D_SUFFIXES) else 3
    return read_label_map(path, "label", mapping), voxel_spacing(read_header(str(path), spatial_dims).affine, spatial_dims)


def _check_range(array: np.ndarray, path: Path, what: str, num_classes: int | None) -> None:
    low, high = int(array.min()), int(array.max())
    if low < 0 or (num_classes is not None and high >= num_classes):
        raise DataError(f"{path}: the {what} holds class {low if low < 0 else high}, outside 0..{(num_classes or 1) - 1} "
                        "(the dataset's classes); pass label maps of this dataset, or set num_classes")


def evaluate_pairs(pairs: list[Pair], settings: ScoreSettings, num_classes: int | None = None,
                   classes: list[int] | None = None, progress: bool = True,
                   label_mapping: dict[int, int] | None = None) -> list[dict]:
    """Rows of ``score_case`` with the ``case`` id, for every checked pair (a progress bar on a terminal).

    Classes: ``classes``, else 1..``num_classes``-1, else every foreground value found in any file.
    ``label_mapping`` remaps the label files' values first (``{255: 1}``).

    Raises:
        DataError: a bad file; or, with no class list, labels and predictions that share no foreground
            value at all (0/255 masks against class indices: a Dice of 0 that says nothing).
    """
    from tqdm.auto import tqdm

    wanted = classes if classes is not None else list(range(1, num_classes)) if num_classes else None
    rows = []
    seen_truth, seen_pred = set(), set()
    for pair in tqdm(pairs, desc="evaluate", unit="case", disable=not progress or None, leave=False):
        truth = read_label_map(pair.label, "label", label_mapping)
        _check_range(truth, pair.label, "label", num_classes)
        pred = read_label_map(pair.pred, "prediction")
        _check_range(pred, pair.pred, "prediction", num_classes)
        truth_values, pred_values = set(np.unique(truth).tolist()) - {0}, set(np.unique(pred).tolist()) - {0}
        seen_truth |= truth_values
        seen_pred |= pred_values
        found = wanted or sorted(truth_values | pred_values)
        rows += [{"case": pair.case, **row} for row in score_case(pred, truth, pair.spacing, found, settings)]
    if wanted is None:
        if seen_truth and seen_pred and not seen_truth & seen_pred:
            raise DataError(f"label={pairs[0].label.parent}: the labels hold the values {sorted(seen_truth)[:5]}, the predictions "
                            f"{sorted(seen_pred)[:5]}, never the same; map the label values to the classes, e.g. "
                            "label_mapping='{255: 1}' for 0/255 masks, or set num_classes")
        rows = _fill_classes(rows, pairs)  # every case gets a row for every class seen anywhere
    return rows


def _fill_classes(rows: list[dict], pairs: list[Pair]) -> list[dict]:
    """Without a class list, a class missing from a case's two files is a both-empty row (NaN scores, zero counts)."""
    from segtrain.evaluation.detection import COUNTS

    seen = sorted({r["class"] for r in rows})
    have = {(r["case"], r["class"]) for r in rows}
    nan = float("nan")
    for pair in pairs:
        for c in seen:
            if (pair.case, c) not in have:
                rows.append({"case": pair.case, "class": c, "tp": 0, "fp": 0, "fn": 0, "truth_voxels": 0, "pred_voxels": 0,
                             "empty": "both", "dice": nan, "iou": nan, "hd95": nan, "assd": nan, "nsd": nan,
                             **dict.fromkeys(COUNTS, 0)})
    return sorted(rows, key=lambda r: (r["case"], r["class"]))


def evaluate_folders(pred: str | Path, label: str | Path, output_dir: str | Path, evaluation: Mapping | None = None,
                     class_names: list[str] | dict[int, str] | None = None, num_classes: int | None = None,
                     classes: list[int] | None = None, geometry_tolerance: float = 0.05, progress: bool = True,
                     cases: list[str] | None = None, label_mapping: dict | str | None = None) -> dict:
    """Match, check, score and write ``metrics_per_case.csv``, ``summary.json``, ``summary.md``; returns the summary.

    ``evaluation``: the keys of configs/evaluation/default.yaml (scoring and bootstrap settings).
    ``cases``: score only these case ids among the predictions (``segtrain-predict label=DIR``: the ones it wrote).
    ``label_mapping``: label value → class index (``{255: 1}``, or its text), applied to the label files.
    """
    from segtrain.evaluation.summary import console_table, summarise_with, write_results

    evaluation = dict(evaluation or {})
    settings = ScoreSettings.from_config(evaluation)
    confidence = float(evaluation.get("confidence", 0.95))
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence={confidence} must lie strictly between 0 and 1 (e.g. 0.95)")
    pairs, unmatched = match_cases(pred, label, cases)
    for pair in pairs:
        check_pair(pair, geometry_tolerance)
    names = dict(enumerate(class_names)) if isinstance(class_names, list) else dict(class_names or {})
    if not names:
        names = class_names_near(label_folder(label))
    if num_classes is None and names:
        num_classes = max(names) + 1
    if unmatched and cases is None:
        log.warning("segtrain-evaluate: %d label(s) without a prediction left out (e.g. %s)", len(unmatched),
                    ", ".join(unmatched[:3]))
    from segtrain.data.options import parse_label_mapping

    rows = evaluate_pairs(pairs, settings, num_classes, classes, progress, parse_label_mapping(label_mapping, "label_mapping"))
    for row in rows:
        row["class_name"] = names.get(row["class"], f"class{row['class']}")
    summary = summarise_with(rows, {c: names.get(c, f"class{c}") for c in {r["class"] for r in rows}}, evaluation)
    summary["settings"].update(pred=str(Path(pred).expanduser().resolve()), label=str(label_folder(label).resolve()))
    summary["labels_without_prediction"] = unmatched if cases is None else []
    paths = write_results(output_dir, rows, summary)
    log.info("%s", console_table(summary))
    log.info("segtrain-evaluate: %d case(s); per case: %s; summary: %s", summary["cases"], paths[0], paths[2])
    return summary
