"""Preflight: validate every image/label pair before any training step, and describe the dataset.

Two passes over the cases, each in a thread pool:

1. headers only (fast): files readable, image and label on the same voxel grid (shape) and in the
   same space (affine, within ``geometry_tolerance`` voxels at the far corner), channel counts;
2. voxels: labels integral and within ``[0, num_classes)`` (after ``label_mapping``), intensities
   finite; gathers voxel counts per class and a fixed-size sample of foreground intensities per
   case (nnU-Net's recipe for the ``ct`` normalisation statistics).

Every failure is a ``DataError``: one line naming the file, what is wrong and how to fix it.
Results are cached per dataset in ``<cache_dir>/preflight/`` and keyed by each case's file paths,
sizes and modification times, so a second run (or another DDP rank) re-reads only changed cases.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import logging
import os
import time
import zlib
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from segtrain.files import write_text_atomic
from segtrain.data.readers import _first_line, _Header, read_header, read_voxels  # noqa: F401
from segtrain.data.readers import max_displacement as _max_displacement, voxel_spacing as _spacing
from segtrain.data.report import CaseInfo, DatasetReport
from segtrain.errors import DataError

log = logging.getLogger(__name__)

PREFLIGHT_VERSION = 3          # bump when the checks or the cached fields change
MAX_INTENSITY = 1e30           # larger magnitudes overflow float32 sums and squares (max ~3.4e38) in normalisation and the network
INTENSITY_SAMPLES_PER_CASE = 2000  # foreground voxels sampled per case and channel (with replacement)
CHUNK = 1 << 22                # voxels per chunk: bounds the temporary memory of the checks


# -- the report: segtrain/data/report.py -----------------------------------------------------------
# -- reading: segtrain/data/readers.py -----------------------------------------------------------
def _chunks(array: np.ndarray):
    flat = array.reshape(-1, order="A")  # a view for C- or F-contiguous arrays
    for start in range(0, flat.size, CHUNK):
        yield start, flat[start:start + CHUNK]


@dataclass
class CheckSettings:
    spatial_dims: int
    num_classes: int | None
    label_mapping: dict[int, int] | None = None
    geometry_tolerance: float = 0.05  # voxels

    def key(self) -> dict:
        mapping = sorted(self.label_mapping.items()) if self.label_mapping else None
        return {"spatial_dims": self.spatial_dims, "num_classes": self.num_classes, "label_mapping": mapping,
                "geometry_tolerance": self.geometry_tolerance, "version": PREFLIGHT_VERSION}


def check_headers(case: dict, settings: CheckSettings) -> tuple[_Header, list[_Header]]:
    """Pass 1: readable headers, matching shapes and geometry, a single-channel label."""
    label = read_header(case["label"], settings.spatial_dims)
    if label.channels != 1:
        what = "colour channels" if settings.spatial_dims == 2 else "channels"
        raise DataError(f"{case['label']}: label has {label.channels} {what}; save labels as single-channel files whose "
                        "values are class indices (0, 1, 2, ...)")
    images = []
    for path in case["image"]:
        image = read_header(path, settings.spatial_dims)
        if image.shape != label.shape:
            raise DataError(
                f"{path}: image shape {list(image.shape)} differs from its label {case['label']} shape {list(label.shape)}; "
                "image and label must cover the same voxel grid: resample the label onto the image (nearest-neighbour)"
            )
        if image.affine is not None and label.affine is not None:
            spacing = min(_spacing(image.affine, 3))
            shift = _max_displacement(image.affine, label.affine, image.shape)
            if shift > settings.geometry_tolerance * spacing:
                raise DataError(
                    f"{path}: image geometry (affine) differs from its label {case['label']} by up to {shift:.3g} mm "
                    f"({shift / spacing:.2g} voxels); resample the label onto the image or copy the image header onto it "
                    f"if the voxels already match (tolerance: data.geometry_tolerance={settings.geometry_tolerance} voxels)"
                )
        images.append(image)
    return label, images


def _label_counts(path: str, raw: np.ndarray, settings: CheckSettings) -> dict[int, int]:
    """Voxels per label value (after ``label_mapping``), checking the values are integral and in range."""
    counts: dict[int, int] = {}
    floating = not np.issubdtype(raw.dtype, np.integer)
    for _, chunk in _chunks(raw):
        if floating:
            if not np.isfinite(chunk).all() or not np.array_equal(chunk, np.round(chunk)):
                bad = np.unique(chunk[~np.isfinite(chunk) | (chunk != np.round(chunk))])[:3]
                raise DataError(
                    f"{path}: label has non-integral values (e.g. {', '.join(f'{v:.4g}' for v in bad)}); labels must be "
                    "class indices (0, 1, 2, ...), not probabilities or interpolated masks: threshold or round them, "
                    "and resample labels with nearest-neighbour"
                )
        low, high = chunk.min(), chunk.max()
        if low < 0 or high > 65535:
            values, numbers = np.unique(chunk.astype(np.int64), return_counts=True)
        else:
            numbers = np.bincount(chunk.astype(np.uint16 if floating or high > 255 else np.uint8, copy=False).ravel())
            values = np.nonzero(numbers)[0]
            numbers = numbers[values]
        for v, n in zip(values.tolist(), numbers.tolist()):
            counts[int(v)] = counts.get(int(v), 0) + int(n)
    if settings.label_mapping:
        mapped: dict[int, int] = {}
        for v, n in counts.items():
            target = settings.label_mapping.get(v, v)
            mapped[target] = mapped.get(target, 0) + n
        counts = mapped
    num_classes = settings.num_classes
    found = sorted(counts)
    if found[0] < 0 or (num_classes is not None and found[-1] >= num_classes):
        bound = f"[0, {num_classes - 1}] for {num_classes} classes" if num_classes else "[0, ...)"
        if set(found) <= {0, 255} or set(found) <= {0, 1, 255}:
            hint = "it looks like a 0/255 mask: map it with data.label_mapping='{255: 1}'"
        else:
            hint = ("fix the label file, declare every class in dataset.json 'labels' (or set data.num_classes), "
                    "or remap values with data.label_mapping='{OLD: NEW}'")
        shown = ", ".join(map(str, found[:10])) + (", ..." if len(found) > 10 else "")
        raise DataError(f"{path}: label values [{shown}] fall outside {bound}; {hint}")
    return dict(sorted(counts.items()))


def _foreground_coordinates(raw: np.ndarray, settings: CheckSettings, counts: dict[int, int],
                            rng: np.random.RandomState, samples: int) -> tuple[np.ndarray, ...] | None:
    """``samples`` foreground voxel coordinates drawn uniformly with replacement (None: no foreground)."""
    mapping = settings.label_mapping or {}
    foreground_total = sum(n for v, n in counts.items() if v > 0)
    if foreground_total == 0:
        return None
    ranks = np.sort(rng.randint(0, foreground_total, size=samples))
    background_raw = [v for v, target in mapping.items() if target == 0 and v != 0]
    flat_indices, seen = [], 0
    for start, chunk in _chunks(raw):
        mask = chunk != 0
        for value in background_raw:  # raw values that the mapping sends to background
            mask &= chunk != value
        positions = np.flatnonzero(mask)
        lo, hi = np.searchsorted(ranks, [seen, seen + positions.size])
        flat_indices.append(start + positions[ranks[lo:hi] - seen])
        seen += positions.size
    flat = np.concatenate(flat_indices)
    return np.unravel_index(flat, raw.shape, order="F" if raw.flags.f_contiguous and not raw.flags.c_contiguous else "C")


def check_voxels(case: dict, headers: tuple[_Header, list[_Header]], settings: CheckSettings) -> tuple[CaseInfo, list[np.ndarray]]:
    """Pass 2: label values, finite intensities, class counts and foreground intensity samples."""
    label_header, image_headers = headers
    raw_label, _, _ = read_voxels(case["label"])
    if raw_label.ndim == settings.spatial_dims + 1 and raw_label.shape[-1] == 1:
        raw_label = raw_label[..., 0]
    counts = _label_counts(case["label"], raw_label, settings)
    rng = np.random.RandomState(zlib.crc32(case["id"].encode()))
    coordinates = _foreground_coordinates(raw_label, settings, counts, rng, INTENSITY_SAMPLES_PER_CASE)
    del raw_label
    samples, ranges, dtypes = [], [], set()
    for header in image_headers:
        raw, slope, inter = read_voxels(header.path)
        dtypes.add(str(raw.dtype))
        if raw.ndim == settings.spatial_dims:
            raw = raw[..., None]
        if not np.isfinite([slope, inter]).all():
            raise DataError(f"{header.path}: the header's intensity scaling (scl_slope {slope}, scl_inter {inter}) is not "
                            "finite; fix the header")
        for channel in range(raw.shape[-1]):
            data = raw[..., channel]
            low, high = np.inf, -np.inf
            for _, chunk in _chunks(data):
                if not np.issubdtype(chunk.dtype, np.integer) and not np.isfinite(chunk).all():
                    bad = int((~np.isfinite(chunk)).sum())
                    raise DataError(f"{header.path}: image contains NaN or Inf intensities ({bad}+ voxels); replace them "
                                    "(e.g. with the minimum intensity) before training")
                low, high = min(low, float(chunk.min())), max(high, float(chunk.max()))
            scaled = sorted([low * slope + inter, high * slope + inter])
            if max(abs(scaled[0]), abs(scaled[1])) > MAX_INTENSITY:
                raise DataError(f"{header.path}: intensities reach {max(scaled, key=abs):.3g}, beyond +-{MAX_INTENSITY:.0e}, where "
                                "float32 arithmetic overflows to Inf/NaN during training; rescale the image (or fix its "
                                "scl_slope/scl_inter header) before training")
            ranges.append(scaled)
            values = data[coordinates].astype(np.float64) * slope + inter if coordinates is not None else np.zeros(0)
            samples.append(values.astype(np.float32))
    info = CaseInfo(case["id"], list(label_header.shape), _spacing(label_header.affine, settings.spatial_dims),
                    sum(h.channels for h in image_headers), counts, _axcodes(label_header.affine),
                    ",".join(sorted(dtypes)), ranges)
    return info, samples


def _axcodes(affine: np.ndarray | None) -> str:
    if affine is None:
        return ""
    import nibabel as nib

    return "".join(c or "?" for c in nib.aff2axcodes(affine))


def intensity_statistics(samples_per_case: list[list[np.ndarray]], ranges: list[list[list[float]]],
                         channel_names: list[str]) -> list[dict]:
    """Per channel, over the foreground samples of all cases: mean, std, median, 0.5 and 99.5 percentiles."""
    stats = []
    for channel, name in enumerate(channel_names):
        values = [s[channel] for s in samples_per_case if len(s) > channel and s[channel].size]
        lows = [r[channel][0] for r in ranges if len(r) > channel]
        highs = [r[channel][1] for r in ranges if len(r) > channel]
        entry = {"channel": name, "min": float(min(lows)) if lows else 0.0, "max": float(max(highs)) if highs else 0.0,
                 "foreground_voxels_sampled": int(sum(v.size for v in values))}
        if values:
            pooled = np.concatenate(values).astype(np.float64)
            entry.update(mean=float(pooled.mean()), std=float(pooled.std()), median=float(np.median(pooled)),
                         percentile_00_5=float(np.percentile(pooled, 0.5)),
                         percentile_99_5=float(np.percentile(pooled, 99.5)))
        stats.append(entry)
    return stats


# -- the preflight cache ------------------------------------------------------------------------
def _fingerprint(case: dict) -> list:
    out = []
    for path in [*case["image"], case["label"]]:
        try:
            st = os.stat(path)
            out.append([path, st.st_size, st.st_mtime_ns])
        except OSError:
            out.append([path, None, None])
    return out


def _encode(array: np.ndarray) -> str:
    return base64.b64encode(np.asarray(array, np.float32).tobytes()).decode()


def _decode(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), np.float32)


class _PreflightCache:
    def __init__(self, cache_dir: str | Path | None, root: str, settings: CheckSettings):
        self.path = None
        self.entries: dict = {}
        if cache_dir is None:
            return
        key = hashlib.sha1(json.dumps({"root": str(root), **settings.key()}, sort_keys=True).encode()).hexdigest()[:16]
        self.path = Path(cache_dir).expanduser() / "preflight" / f"{Path(root).name}-{key}.json"
        try:
            self.entries = json.loads(self.path.read_text()).get("cases", {})
        except (OSError, ValueError):
            self.entries = {}

    def get(self, case: dict):
        entry = self.entries.get(case["id"])
        if entry is None or entry.get("fingerprint") != _fingerprint(case):
            return None
        info = entry["info"]
        info["class_voxels"] = {int(k): v for k, v in info["class_voxels"].items()}
        return CaseInfo(**info), [_decode(s) for s in entry["samples"]]

    def put(self, case: dict, info: CaseInfo, samples: list[np.ndarray]) -> None:
        self.entries[case["id"]] = {"fingerprint": _fingerprint(case), "info": asdict(info),
                                    "samples": [_encode(s) for s in samples]}

    def save(self) -> None:
        if self.path is None:
            return
        try:  # atomic: concurrent ranks never read half a file
            write_text_atomic(self.path, json.dumps({"version": PREFLIGHT_VERSION, "cases": self.entries}))
        except OSError as err:
            log.warning("preflight: could not write the cache %s (%s)", self.path, err)


def _check_contiguous(infos: list[CaseInfo], listing, label_mapping: dict | None) -> None:
    """Inferred classes (no ``labels`` in dataset.json, no ``data.num_classes``): the values found must be 0, 1, ..., K-1.

    A gap (e.g. 0/255 masks) would otherwise train a 256-class model on two classes.
    """
    found = sorted({v for info in infos for v in info.class_voxels})
    if found == list(range(len(found))):
        return
    top = found[-1]
    case = next(info.id for info in infos if top in info.class_voxels)
    label = next((c["label"] for c in listing.cases if c["id"] == case), case)
    if set(found) <= {0, 255} or set(found) <= {0, 1, 255}:
        hint = "data.label_mapping='{255: 1}'"
    else:
        hint = "data.label_mapping='{" + ", ".join(f"{v}: {i}" for i, v in enumerate(found) if v != i) + "}'"
    shown = ", ".join(map(str, found[:10])) + (", ..." if len(found) > 10 else "")
    mapped = " after data.label_mapping" if label_mapping else ""
    raise DataError(f"{label}: the labels hold the values [{shown}]{mapped}, not 0, 1, ..., K-1, so the classes cannot be "
                    f"inferred (value {top} would make {top + 1} classes); map them with {hint}, or name the classes in "
                    "dataset.json 'labels' (or set data.num_classes)")


# -- the whole pass -------------------------------------------------------------------------------
def _guarded(function, case: dict):
    """``function(case)``, with any unexpected failure turned into a ``DataError`` naming the case's files."""
    try:
        return function(case)
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - an odd file (dtype, layout) must not end in a bare traceback
        log.debug("preflight failed on case %s", case["id"], exc_info=True)
        files = ", ".join([*case["image"], case["label"]])
        raise DataError(f"{files}: preflight could not check case {case['id']} ({type(err).__name__}: {_first_line(err)}); "
                        "check that these files are ordinary scalar images of the same grid, or remove the case") from None


def _run_parallel(function, cases: list[dict], workers: int, label: str) -> list:
    """``function(case)`` for every case in a thread pool; the first failure (in case order) is raised."""
    function = functools.partial(_guarded, function)
    if not cases:
        return []
    if workers <= 1 or len(cases) == 1:
        return [function(case) for case in cases]
    results: dict[int, object] = {}
    started, last_log = time.monotonic(), time.monotonic()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="preflight") as pool:
        futures = {pool.submit(function, case): i for i, case in enumerate(cases)}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=10, return_when=FIRST_EXCEPTION)
            failed = [f for f in done if f.exception() is not None]
            if failed:
                for future in pending:
                    future.cancel()
                wait(pending)  # running checks finish: their failures compete for the earliest case
                failed += [f for f in pending if not f.cancelled() and f.exception() is not None]
                raise min(failed, key=futures.get).exception()
            results.update({futures[f]: f.result() for f in done})
            if time.monotonic() - last_log > 10:
                log.info("preflight (%s): %d/%d cases checked in %.0f s", label, len(results), len(cases),
                         time.monotonic() - started)
                last_log = time.monotonic()
    return [results[i] for i in range(len(cases))]


def run_preflight(listing, spatial_dims: int, num_classes: int | None, label_mapping: dict | None = None,
                  geometry_tolerance: float = 0.05, cache_dir: str | Path | None = None,
                  workers: int | None = None, part: str = "") -> DatasetReport:
    """Check every case of ``listing`` (see ``layouts.list_cases``); return the dataset report.

    Args:
        num_classes: classes including background; ``None`` infers the largest label value + 1.
        label_mapping: label value → class index, applied before the range check.
        geometry_tolerance: largest allowed image/label misplacement of a voxel, in voxels.
        cache_dir: where per-case results are cached (``None``: no cache).
        workers: threads reading files (``None``: up to 4, at most the CPU count).
        part: which cases these are, for the log line (``"test "``: the held-out test set).

    Raises:
        DataError: the first problem found, in case order within each pass.
    """
    settings = CheckSettings(spatial_dims, num_classes, label_mapping, float(geometry_tolerance))
    workers = workers or min(4, os.cpu_count() or 1)
    cache = _PreflightCache(cache_dir, str(listing.root), settings)
    started = time.monotonic()
    results: dict[str, tuple[CaseInfo, list[np.ndarray]]] = {}
    todo = []
    for case in listing.cases:
        cached = cache.get(case)
        if cached is None:
            todo.append(case)
        else:
            results[case["id"]] = cached
    headers = _run_parallel(lambda case: check_headers(case, settings), todo, workers, "headers")
    by_id = {case["id"]: h for case, h in zip(todo, headers)}

    def voxels(case):
        result = check_voxels(case, by_id[case["id"]], settings)
        results[case["id"]] = result
        cache.put(case, *result)
        return result

    try:
        _run_parallel(voxels, todo, workers, "voxels")
    finally:
        if todo and results:  # cases that passed are not re-read on the next run, even if another failed
            ids = {case["id"] for case in listing.cases}
            cache.entries = {k: v for k, v in cache.entries.items() if k in ids}
            cache.save()
    log.info("preflight: %d %scases checked (%d from cache) in %.1f s", len(listing.cases), part, len(listing.cases) - len(todo),
             time.monotonic() - started)
    infos = [results[case["id"]][0] for case in listing.cases]
    samples = [results[case["id"]][1] for case in listing.cases]

    channel_counts = {i.channels for i in infos}
    if len(channel_counts) > 1:
        first = {c: next(i.id for i in infos if i.channels == c) for c in sorted(channel_counts)}
        raise DataError(
            f"data.root={listing.root}: cases have different numbers of image channels ("
            + ", ".join(f"{c} in case {case_id}" for c, case_id in first.items())
            + "); convert the images so that all have the same channels (e.g. all grayscale or all RGB)"
        )
    if num_classes is None:
        _check_contiguous(infos, listing, label_mapping)
        num_classes = max(2, max(max(i.class_voxels) for i in infos) + 1)
    class_names = list(listing.class_names or [])[:num_classes]
    class_names += [f"class{i}" for i in range(len(class_names), num_classes)]
    channels = channel_counts.pop()
    channel_names = list(listing.channel_names or [])[:channels]
    channel_names += [f"channel{i}" for i in range(len(channel_names), channels)]
    intensity = intensity_statistics(samples, [i.intensity_range for i in infos], channel_names)
    return DatasetReport(listing.layout, str(listing.root), len(infos), num_classes, class_names, channel_names, infos,
                         intensity)
