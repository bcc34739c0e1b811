"""Dataset layouts on disk → a list of cases ``{"id", "image": [paths], "label": path}`` and class names.

- MSD: ``dataset.json`` with a ``training`` list of ``{"image", "label"}`` paths relative to the root,
  ``labels`` as ``{"0": "background", "1": "tumour"}`` and ``modality`` as ``{"0": "CT"}``.
- nnU-Net v2 raw: ``imagesTr/CASE_XXXX<ending>``, ``labelsTr/CASE<ending>``, ``dataset.json`` with
  ``labels`` as ``{"background": 0, "tumour": 1}``, ``channel_names`` and ``file_ending``.
- 2D image folders: ``images/NAME.<png|tif|tiff|jpg|jpeg>`` and ``labels/NAME.png``; an optional
  ``dataset.json`` with ``labels`` gives the class names.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from segtrain.errors import DataError

IMAGE_2D_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass
class DatasetListing:
    layout: str
    root: Path
    cases: list[dict]
    class_names: list[str] | None = None  # index → name, background first
    channel_names: list[str] | None = None
    extra: dict = field(default_factory=dict)


def detect_layout(root: Path) -> str:
    """MSD has a ``training`` list in dataset.json (its files often sit in imagesTr/ too)."""
    meta_path = root / "dataset.json"
    if meta_path.is_file() and isinstance(_read_json(meta_path).get("training"), list):
        return "msd"
    if (root / "imagesTr").is_dir():
        return "nnunet"
    if (root / "images").is_dir() and (root / "labels").is_dir():
        return "images2d"
    if meta_path.is_file():
        return "msd"
    raise DataError(
        f"data.root={root}: no dataset found; expected dataset.json with a 'training' list (MSD), "
        "imagesTr/ + labelsTr/ + dataset.json (nnU-Net v2), or images/ + labels/ (2D)"
    )


def list_cases(root: str | Path, layout: str = "auto") -> DatasetListing:
    """List the cases of the dataset at ``root`` (``layout``: auto, msd, nnunet or images2d)."""
    if root is None or str(root) in ("", "None", "???"):
        raise DataError("data.root is not set: pass data.root=DIR with your dataset (MSD, nnU-Net v2 or images2d layout)")
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"data.root={root} does not exist or is not a directory; pass data.root=DIR with your dataset")
    if layout == "auto":
        layout = detect_layout(root)
    readers = {"msd": _list_msd, "nnunet": _list_nnunet, "images2d": _list_images2d}
    if layout not in readers:
        raise DataError(f"data.layout={layout!r} is unknown; use auto, msd, nnunet or images2d")
    listing = readers[layout](root)
    if not listing.cases:
        raise DataError(f"data.root={root}: the {layout} dataset has no training cases")
    return listing


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: file not found; the {path.parent.name} dataset needs a dataset.json") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}); fix the file") from None


def _names_from_index_map(mapping: dict | None) -> list[str] | None:
    """``{"0": "background", "1": "tumour"}`` → ["background", "tumour"]."""
    if not mapping:
        return None
    try:
        items = sorted((int(k), str(v)) for k, v in mapping.items())
    except (TypeError, ValueError):
        return None
    names = [f"class{i}" for i in range(items[-1][0] + 1)]
    for index, name in items:
        names[index] = name
    return names


def _names_from_name_map(mapping: dict | None) -> list[str] | None:
    """nnU-Net v2 ``{"background": 0, "tumour": 1}`` → ["background", "tumour"] (regions not supported)."""
    if not mapping:
        return None
    items = []
    for name, value in mapping.items():
        if isinstance(value, (list, tuple)):
            raise DataError(
                f"dataset.json label {name!r} is a region (list of labels); region-based training is not supported, "
                "list each label as an integer"
            )
        items.append((int(value), str(name)))
    items.sort()
    names = [f"class{i}" for i in range(items[-1][0] + 1)]
    for index, name in items:
        names[index] = name
    return names


def _resolve(root: Path, rel: str) -> Path:
    rel = str(rel)
    return (root / rel[2:] if rel.startswith("./") else root / rel).resolve()


def _list_msd(root: Path) -> DatasetListing:
    meta = _read_json(root / "dataset.json")
    training = meta.get("training")
    if not isinstance(training, list):
        raise DataError(f"{root / 'dataset.json'}: no 'training' list of {{'image', 'label'}} entries (MSD layout)")
    cases = []
    for i, entry in enumerate(training):
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            raise DataError(f"{root / 'dataset.json'}: training entry {i} needs 'image' and 'label' paths, got {entry!r}")
        images = entry["image"] if isinstance(entry["image"], list) else [entry["image"]]
        image_paths = [str(_resolve(root, p)) for p in images]
        case_id = _strip_suffix(Path(image_paths[0]).name)
        cases.append({"id": case_id, "image": image_paths, "label": str(_resolve(root, entry["label"]))})
    modality = meta.get("modality") or meta.get("channel_names")
    return DatasetListing(
        "msd", root, cases, class_names=_names_from_index_map(meta.get("labels")), channel_names=_names_from_index_map(modality)
    )


def _strip_suffix(name: str) -> str:
    for suffix in VOLUME_SUFFIXES + IMAGE_2D_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _list_nnunet(root: Path) -> DatasetListing:
    meta = _read_json(root / "dataset.json")
    ending = meta.get("file_ending", ".nii.gz")
    channels = _names_from_index_map(meta.get("channel_names") or meta.get("modality")) or ["image"]
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    if not labels_dir.is_dir():
        raise DataError(f"{labels_dir}: missing; an nnU-Net v2 dataset needs labelsTr/ next to imagesTr/")
    pattern = re.compile(rf"^(?P<case>.+)_(?P<channel>\d{{4}}){re.escape(ending)}$")
    by_case: dict[str, dict[int, str]] = {}
    for path in sorted(images_dir.iterdir()):
        match = pattern.match(path.name)
        if match:
            by_case.setdefault(match["case"], {})[int(match["channel"])] = str(path)
    cases = []
    for case_id, channel_files in sorted(by_case.items()):
        missing = [c for c in range(len(channels)) if c not in channel_files]
        if missing:
            raise DataError(
                f"{images_dir}: case {case_id} lacks channel file(s) "
                + ", ".join(f"{case_id}_{c:04d}{ending}" for c in missing)
                + f"; dataset.json declares {len(channels)} channel(s)"
            )
        cases.append(
            {
                "id": case_id,
                "image": [channel_files[c] for c in range(len(channels))],
                "label": str(labels_dir / f"{case_id}{ending}"),
            }
        )
    if not cases and any(images_dir.iterdir()):
        raise DataError(
            f"{images_dir}: no file matches CASE_XXXX{ending} (file_ending from dataset.json); "
            "rename the images as nnU-Net v2 expects or fix file_ending"
        )
    return DatasetListing("nnunet", root, cases, class_names=_names_from_name_map(meta.get("labels")), channel_names=channels)


def _list_images2d(root: Path) -> DatasetListing:
    images_dir, labels_dir = root / "images", root / "labels"
    cases = []
    for path in sorted(images_dir.iterdir()):
        if path.suffix.lower() not in IMAGE_2D_SUFFIXES:
            continue
        label = labels_dir / f"{path.stem}.png"
        cases.append({"id": path.stem, "image": [str(path)], "label": str(label)})
    meta_path = root / "dataset.json"
    class_names = None
    if meta_path.is_file():
        meta = _read_json(meta_path)
        labels = meta.get("labels")
        class_names = _names_from_index_map(labels) if labels and all(str(k).isdigit() for k in labels) else _names_from_name_map(labels)
    return DatasetListing("images2d", root, cases, class_names=class_names)
