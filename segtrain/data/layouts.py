"""Dataset layouts on disk → a list of cases ``{"id", "image": [paths], "label": path}`` and class names.

- MSD: ``dataset.json`` with a ``training`` list of ``{"image", "label"}`` paths relative to the root,
  ``labels`` as ``{"0": "background", "1": "tumour"}`` and ``modality`` as ``{"0": "CT"}``.
- nnU-Net v2 raw: ``imagesTr/CASE_XXXX<ending>``, ``labelsTr/CASE<ending>``, ``dataset.json`` with
  ``labels`` as ``{"background": 0, "tumour": 1}``, ``channel_names`` and ``file_ending``
  (``.nii.gz``, ``.nii`` or ``.nrrd``).
- 2D image folders: ``images/NAME.<png|tif|tiff|jpg|jpeg>`` and ``labels/NAME.<png|tif|tiff>``; an
  optional ``dataset.json`` with ``labels`` gives the class names.

Listing checks what the layout promises (the files it names exist); ``preflight`` reads them.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from segtrain.errors import DataError

from segtrain.data.readers import IMAGE_2D_SUFFIXES, LABEL_2D_SUFFIXES, VOLUME_SUFFIXES  # noqa: E402  (one registry)

LAYOUTS = ("auto", "msd", "nnunet", "images2d")
CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")  # nnU-Net's CASE_0000 naming (without the ending)


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
    raise DataError(f"data.root={root}: {_what_is_there(root)}; expected dataset.json with a 'training' list (MSD), "
                    f"imagesTr/ + labelsTr/ + dataset.json (nnU-Net v2), or images/ + labels/ (2D){_nearby_roots(root)}")


def _what_is_there(root: Path) -> str:
    entries = sorted(p.name for p in itertools.islice(root.iterdir(), 500) if not p.name.startswith("."))
    if not entries:
        return "the folder is empty"
    shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
    return f"no dataset found (it holds {shown})"


def _nearby_roots(root: Path) -> str:
    """A hint when the user pointed one level too high or too low (e.g. at imagesTr/ or at nnUNet_raw/)."""
    candidates = []
    for child in sorted(p for p in itertools.islice(root.iterdir(), 500) if p.is_dir()):
        if (child / "dataset.json").is_file() or (child / "imagesTr").is_dir() or (child / "images").is_dir():
            candidates.append(child)
    if root.name in ("imagesTr", "labelsTr", "images", "labels") and (root.parent / "dataset.json").is_file():
        candidates.insert(0, root.parent)
    if not candidates:
        return ""
    return "; did you mean " + " or ".join(f"data.root={c}" for c in candidates[:3]) + "?"


def list_cases(root: str | Path, layout: str = "auto") -> DatasetListing:
    """List the cases of the dataset at ``root`` (``layout``: auto, msd, nnunet or images2d).

    Raises:
        DataError: no root, no dataset there, a file the layout names is missing, or no cases.
    """
    if root is None or str(root) in ("", "None", "???"):
        raise DataError("data.root is not set: pass data.root=DIR with your dataset (MSD, nnU-Net v2 or images2d layout)")
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"data.root={root} does not exist or is not a directory; pass data.root=DIR with your dataset")
    if layout == "auto":
        layout = detect_layout(root)
    required = {"nnunet": ["imagesTr", "dataset.json"], "images2d": ["images", "labels"], "msd": ["dataset.json"]}
    missing = [name for name in required.get(layout, []) if not (root / name).exists()]
    if missing:
        raise DataError(f"data.root={root}: {_what_is_there(root)}; data.layout={layout} needs {' and '.join(missing)} "
                        f"there{_nearby_roots(root)}")
    readers = {"msd": _list_msd, "nnunet": _list_nnunet, "images2d": _list_images2d}
    if layout not in readers:
        raise DataError(f"data.layout={layout!r} is unknown; use one of {', '.join(LAYOUTS)}")
    listing = readers[layout](root)
    if not listing.cases:
        where = {"msd": "dataset.json lists no training cases", "nnunet": "imagesTr/ holds no images",
                 "images2d": "images/ holds no images"}[layout]
        raise DataError(f"data.root={root}: the {layout} dataset has no training cases ({where}); add cases or fix data.root")
    return listing


def list_test_cases(listing: DatasetListing) -> list[dict]:
    """Held-out labelled cases of the dataset: ``imagesTs/`` with ``labelsTs/`` beside ``imagesTr/`` (any layout).

    Files are named as in training: nnU-Net's ``CASE_0000<ending>`` images and ``CASE<ending>`` labels, or one
    image per case with the label's name. Images without a label are left out (they can only be predicted).

    Raises:
        DataError: a case without all its channel files.
    """
    images_dir, labels_dir = listing.root / "imagesTs", listing.root / "labelsTs"
    if not (images_dir.is_dir() and labels_dir.is_dir()):
        return []
    channels = len(listing.cases[0]["image"]) if listing.cases else 1
    labels = {strip_suffix(p.name): p for p in sorted(labels_dir.iterdir()) if p.is_file() and not p.name.startswith(".")}
    by_case: dict[str, dict[int, str]] = {}
    for path in sorted(images_dir.iterdir()):
        if not path.is_file() or path.name.startswith(".") or strip_suffix(path.name) == path.name:
            continue
        stem = strip_suffix(path.name)
        match = CHANNEL_FILE.match(stem)
        case, channel = (match["case"], int(match["channel"])) if match and stem not in labels else (stem, 0)
        by_case.setdefault(case, {})[channel] = str(path)
    cases = []
    for case_id, files in sorted(by_case.items()):
        if case_id not in labels:
            continue
        missing = [c for c in range(channels) if c not in files]
        if missing and len(files) != 1:
            raise DataError(f"{images_dir}: test case {case_id} lacks channel file {case_id}_{missing[0]:04d}; "
                            f"the training cases have {channels} channel(s)")
        cases.append({"id": case_id, "image": [files[c] for c in sorted(files)], "label": str(labels[case_id])})
    return cases


def _read_json(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: file not found; the {path.parent.name} dataset needs a dataset.json") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}); fix the file") from None
    if not isinstance(meta, dict):
        raise DataError(f"{path}: expected a JSON object with 'labels' (and 'training' for MSD), got {type(meta).__name__}")
    return meta


def _names_from_index_map(mapping: dict | list | None) -> list[str] | None:
    """``{"0": "background", "1": "tumour"}`` (or a list) → ["background", "tumour"]."""
    if not mapping:
        return None
    if isinstance(mapping, list):
        return [str(v) for v in mapping]
    try:
        items = sorted((int(k), str(v)) for k, v in mapping.items())
    except (TypeError, ValueError, AttributeError):
        return None
    names = [f"class{i}" for i in range(items[-1][0] + 1)]
    for index, name in items:
        names[index] = name
    return names


def _names_from_name_map(mapping: dict | None, meta_path: Path) -> list[str] | None:
    """nnU-Net v2 ``{"background": 0, "tumour": 1}`` → ["background", "tumour"] (regions not supported)."""
    if not mapping:
        return None
    items = []
    for name, value in mapping.items():
        if isinstance(value, (list, tuple)):
            raise DataError(
                f"{meta_path}: label {name!r} is a region (list of labels); region-based training is not supported, "
                "list each label as an integer"
            )
        try:
            items.append((int(value), str(name)))
        except (TypeError, ValueError):
            raise DataError(f"{meta_path}: label {name!r} has value {value!r}; 'labels' must map names to integers "
                            "(nnU-Net v2: {\"background\": 0, \"tumour\": 1})") from None
    items.sort()
    names = [f"class{i}" for i in range(items[-1][0] + 1)]
    for index, name in items:
        names[index] = name
    return names


def _class_names(labels, meta_path: Path) -> list[str] | None:
    """Either convention: MSD ``{"0": "background"}`` or nnU-Net ``{"background": 0}``."""
    if not labels:
        return None
    if isinstance(labels, dict) and all(str(k).lstrip("-").isdigit() for k in labels):
        return _names_from_index_map(labels)
    return _names_from_name_map(labels, meta_path)


def _resolve(root: Path, rel: str) -> Path:
    rel = str(rel)
    return (root / rel[2:] if rel.startswith("./") else root / rel).resolve()


def strip_suffix(name: str) -> str:
    for suffix in VOLUME_SUFFIXES + IMAGE_2D_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _list_msd(root: Path) -> DatasetListing:
    meta_path = root / "dataset.json"
    meta = _read_json(meta_path)
    training = meta.get("training")
    if not isinstance(training, list):
        raise DataError(f"{meta_path}: no 'training' list of {{'image', 'label'}} entries (MSD layout)")
    cases, seen = [], set()
    for i, entry in enumerate(training):
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            raise DataError(f"{meta_path}: training entry {i} needs 'image' and 'label' paths, got {entry!r}")
        images = entry["image"] if isinstance(entry["image"], list) else [entry["image"]]
        image_paths = [_resolve(root, p) for p in images]
        label_path = _resolve(root, entry["label"])
        for rel, path in [*zip(images, image_paths), (entry["label"], label_path)]:
            if not path.is_file():
                raise DataError(
                    f"{meta_path}: training entry {i} names {rel}, but {path} does not exist; "
                    "fix the path in dataset.json or add the file"
                )
        case_id = strip_suffix(image_paths[0].name)
        if case_id in seen:
            case_id = f"{case_id}_{i}"
        seen.add(case_id)
        cases.append({"id": case_id, "image": [str(p) for p in image_paths], "label": str(label_path)})
    modality = meta.get("modality") or meta.get("channel_names")
    return DatasetListing("msd", root, cases, class_names=_class_names(meta.get("labels"), meta_path),
                          channel_names=_names_from_index_map(modality))


def _list_nnunet(root: Path) -> DatasetListing:
    meta_path = root / "dataset.json"
    meta = _read_json(meta_path)
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
                f"{images_dir / f'{case_id}_{missing[0]:04d}{ending}'}: channel file missing for case {case_id}; "
                f"dataset.json declares {len(channels)} channel(s) ({', '.join(channels)}): add the file or fix 'channel_names'"
            )
        label = labels_dir / f"{case_id}{ending}"
        if not label.is_file():
            raise DataError(
                f"{label}: label file missing for image {channel_files[0]}; add the label, or move the case out of imagesTr/"
            )
        cases.append({"id": case_id, "image": [channel_files[c] for c in range(len(channels))], "label": str(label)})
    if not cases and any(p.name.endswith(VOLUME_SUFFIXES) for p in images_dir.iterdir()):
        raise DataError(
            f"{images_dir}: no file matches CASE_XXXX{ending} (file_ending from dataset.json); "
            "rename the images as nnU-Net v2 expects (e.g. case1_0000.nii.gz) or fix 'file_ending'"
        )
    return DatasetListing("nnunet", root, cases, class_names=_class_names(meta.get("labels"), meta_path),
                          channel_names=channels)


def _list_images2d(root: Path) -> DatasetListing:
    images_dir, labels_dir = root / "images", root / "labels"
    cases = []
    for path in sorted(images_dir.iterdir()):
        if path.suffix.lower() not in IMAGE_2D_SUFFIXES:
            continue
        label = next((labels_dir / f"{path.stem}{s}" for s in LABEL_2D_SUFFIXES if (labels_dir / f"{path.stem}{s}").is_file()), None)
        if label is None:
            jpeg = [p.name for p in labels_dir.glob(f"{path.stem}.*") if p.suffix.lower() in (".jpg", ".jpeg")]
            hint = (f"; {jpeg[0]} is a JPEG, which blurs class indices: save labels as PNG" if jpeg else
                    "; add the mask (pixel values = class indices) or remove the image")
            raise DataError(f"{labels_dir / (path.stem + '.png')}: label file missing for image {path}{hint}")
        cases.append({"id": path.stem, "image": [str(path)], "label": str(label)})
    meta_path = root / "dataset.json"
    class_names = _class_names(_read_json(meta_path).get("labels"), meta_path) if meta_path.is_file() else None
    return DatasetListing("images2d", root, cases, class_names=class_names)
