"""The Lightning data module: list → preflight → split → cached MONAI datasets → loaders."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch import LightningDataModule
from omegaconf import DictConfig, OmegaConf

from torch.utils.data import DistributedSampler

from segtrain.augment import worker_threads
from segtrain.checkpoints import write_text_atomic
from segtrain.errors import ConfigError, DataError

log = logging.getLogger(__name__)


@dataclass
class DataSpec:
    """What the rest of the program needs to know about the data (saved as ``data_spec.json`` in the run dir).

    The geometry and intensity fields are what ``transforms.inference_transforms`` needs to prepare
    a new image exactly as the training images were.
    """

    spatial_dims: int
    in_channels: int
    num_classes: int  # including background
    class_names: list[str]
    channel_names: list[str]
    patch_size: tuple[int, ...]
    orientation: str = "RAS"                              # axis codes every volume is reoriented to (3D)
    spacing: list[float] | None = None                    # target voxel spacing (mm); None keeps each case's own
    normalize: list[str] = field(default_factory=list)    # per channel: zscore | ct | minmax | none
    intensity: list[dict] = field(default_factory=list)   # per channel foreground statistics (``ct`` uses them)
    strides: list[list[int]] | None = None                # planned network strides per stage (the first all 1)
    kernel_sizes: list[list[int]] | None = None           # planned convolution kernels per stage

    def __post_init__(self) -> None:
        if not self.normalize:
            self.normalize = ["zscore"] * self.in_channels

    def to_dict(self) -> dict:
        data = asdict(self)
        data["patch_size"] = list(self.patch_size)
        return data

    def save(self, path: str | Path) -> None:
        write_text_atomic(path, json.dumps(self.to_dict(), indent=2))

    @classmethod
    def from_dict(cls, data: dict) -> DataSpec:
        """Inverse of ``to_dict`` (unknown keys from other versions are ignored)."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["patch_size"] = tuple(values["patch_size"])
        return cls(**values)

    @classmethod
    def load(cls, path: str | Path) -> DataSpec:
        return cls.from_dict(json.loads(Path(path).read_text()))


def _label_mapping(cfg: DictConfig) -> dict[int, int] | None:
    mapping = cfg.get("label_mapping")
    if not mapping:
        return None
    if isinstance(mapping, str):
        import yaml

        try:
            mapping = yaml.safe_load(mapping)
        except yaml.YAMLError:
            mapping = None
    try:
        return {int(k): int(v) for k, v in dict(mapping).items()}
    except (TypeError, ValueError):
        raise ConfigError(f"data.label_mapping={cfg.get('label_mapping')!r} must map label values to class indices, "
                          "e.g. data.label_mapping='{255: 1}'") from None


def split_cases(case_ids: list[str], cfg: DictConfig) -> tuple[list[str], list[str]]:
    """Deterministic split by sorted case id: fold ``fold`` of ``num_folds`` or a ``val_fraction``."""
    ids = sorted(case_ids)
    order = np.random.RandomState(12345).permutation(len(ids))
    shuffled = [ids[i] for i in order]
    if len(ids) < 2:
        raise DataError(f"data.root has {len(ids)} case(s); at least 2 are needed (one to train, one to validate)")
    fold = cfg.get("fold")
    if fold is not None:
        k = int(cfg.get("num_folds", 5))
        if k < 2 or k > len(ids):
            raise ConfigError(f"data.num_folds={k} must lie in [2, {len(ids)}] (the number of cases)")
        if not 0 <= int(fold) < k:
            raise ConfigError(f"data.fold={fold} must lie in [0, {k - 1}] for data.num_folds={k}")
        val = set(shuffled[int(fold)::k])
    else:
        fraction = float(cfg.get("val_fraction", 0.2))
        if not 0.0 < fraction < 1.0:
            raise ConfigError(f"data.val_fraction={fraction} must lie strictly between 0 and 1")
        n_val = min(len(ids) - 1, max(1, round(fraction * len(ids))))
        val = set(shuffled[:n_val])
    return [i for i in ids if i not in val], [i for i in ids if i in val]


def _check_options(cfg: DictConfig) -> None:
    """Cheap configuration checks, before any file is read."""
    from segtrain.data.layouts import LAYOUTS
    from segtrain.data.transforms import NORMALIZATIONS, SAMPLINGS

    if cfg.get("layout", "auto") not in LAYOUTS:
        raise ConfigError(f"data.layout={cfg.get('layout')!r} is unknown; use one of {', '.join(LAYOUTS)}")
    pos = float(cfg.get("pos_fraction", 0.33))
    if not 0.0 <= pos <= 1.0:
        raise ConfigError(f"data.pos_fraction={pos} must lie in [0, 1] (share of patches centred on foreground)")
    if cfg.get("sampling", "posneg") not in SAMPLINGS:
        raise ConfigError(f"data.sampling={cfg.get('sampling')!r} is unknown; use one of {', '.join(SAMPLINGS)}")
    if str(cfg.get("cache", "memory")) not in ("memory", "disk", "none", "None", "False"):
        raise ConfigError(f"data.cache={cfg.get('cache')!r} is unknown; use memory, disk or none")
    normalize = cfg.get("normalize", "zscore")
    for mode in [normalize] if isinstance(normalize, str) or normalize is None else list(normalize):
        if str(mode) not in NORMALIZATIONS and mode is not None:
            raise ConfigError(f"data.normalize={mode!r} is unknown; use one of {', '.join(NORMALIZATIONS)} "
                              "(or a list with one mode per channel)")
    spacing = cfg.get("spacing")
    if spacing is not None and spacing != "median":
        try:
            values = [float(s) for s in spacing]
        except (TypeError, ValueError):
            values = []
        if len(values) != 3 or min(values) <= 0:
            raise ConfigError(f"data.spacing={spacing!r} must be null, 'median' or three positive spacings in mm, e.g. [1, 1, 1]")
    from segtrain.data.plan import PLAN_MODES

    if str(cfg.get("plan", "off")) not in PLAN_MODES:
        raise ConfigError(f"data.plan={cfg.get('plan')!r} is unknown; use auto (nnU-Net's rules) or off")
    if float(cfg.get("plan_memory_gb", 8)) <= 0:
        raise ConfigError(f"data.plan_memory_gb={cfg.get('plan_memory_gb')} must be > 0 (GPU memory in GB the plan fills)")
    batch = cfg.get("batch_size")
    if batch is not None and (not str(batch).isdigit() or int(batch) < 1):
        raise ConfigError(f"data.batch_size={batch!r} must be a positive integer (or null: from the plan)")
    tolerance = float(cfg.get("geometry_tolerance", 0.05))
    if tolerance < 0:
        raise ConfigError(f"data.geometry_tolerance={tolerance} must be >= 0 (voxels)")


def plan_dataset(cfg: DictConfig, report, spatial_dims: int, model_divisor=None):
    """The ``Plan`` of ``cfg`` (``data.plan``, explicit ``data.*`` values winning) for a preflight report."""
    from segtrain.data.plan import make_plan, reoriented

    orientation = str(cfg.get("orientation", "RAS"))
    shapes, spacings = [], []
    for case in report.cases:
        if spatial_dims == 3:
            shape, spacing = reoriented(case.shape, case.spacing, case.axcodes, orientation)
        else:
            shape, spacing = case.shape, case.spacing
        shapes.append(shape)
        spacings.append(spacing)
    patch = cfg.get("patch_size")
    return make_plan(
        shapes, spacings, report.channel_names, report.num_classes, report.num_cases,
        mode=str(cfg.get("plan", "off")), memory_gb=float(cfg.get("plan_memory_gb", 8)),
        spacing=(cfg.get("spacing") or None) if spatial_dims == 3 else None,
        patch_size=[int(p) for p in patch] if patch is not None else None,
        batch_size=cfg.get("batch_size"),
        normalize=OmegaConf.to_container(cfg.normalize) if OmegaConf.is_config(cfg.get("normalize")) else cfg.get("normalize"),
        model_divisor=model_divisor,
    )


def _report_notes(cfg: DictConfig, report, spec: DataSpec, train_cases: int) -> list[str]:
    """Configuration-dependent hints for the dataset report."""
    notes = []
    for stats, mode, name in zip(report.intensity, spec.normalize, spec.channel_names):
        looks_ct = "ct" in name.lower().split() or name.lower() == "ct" or stats.get("min", 0) <= -500
        if looks_ct and mode != "ct" and spec.spatial_dims == 3:
            notes.append(f"hint: channel {name!r} looks like CT (intensities from {stats.get('min', 0):.0f}): "
                         "data.normalize=ct clips to the foreground 0.5-99.5 percentiles and z-scores, as nnU-Net does")
    spacings = np.array([c.spacing for c in report.cases])
    median = np.median(spacings, 0)
    if spec.spatial_dims == 3 and median.max() > 3 * median.min() and not spec.spacing:
        notes.append(f"hint: anisotropic spacing (median {np.round(median, 3).tolist()} mm): give data.patch_size fewer "
                     "voxels along the coarse axis, or resample with data.spacing")
    shapes = np.array([c.shape for c in report.cases], float)
    if spec.spacing:
        shapes = shapes * spacings / np.array(spec.spacing)
    small = [i for i, (p, s) in enumerate(zip(spec.patch_size, np.median(shapes, 0))) if p > s]
    if small:
        notes.append(f"note: data.patch_size={list(spec.patch_size)} exceeds the median case shape "
                     f"{np.median(shapes, 0).astype(int).tolist()} along axis {small}: cases are zero-padded to the patch")
    if str(cfg.get("cache", "memory")) == "memory":
        per_voxel = 4 * spec.in_channels + 1
        total = float(np.prod(np.maximum(shapes, spec.patch_size), 1).sum()) * per_voxel
        memory = _total_memory()
        if memory and total > 0.5 * memory:
            notes.append(f"warning: caching the cases in memory needs about {total / 2**30:.1f} GiB of "
                         f"{memory / 2**30:.1f} GiB RAM; use data.cache=disk (or lower data.cache_rate)")
    return notes


def _total_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def build_datamodule(cfg: DictConfig, output_dir: str | Path | None = None, label_maps: dict | None = None,
                     seed: int = 0, model_divisor=None, augmentation=None) -> SegmentationDataModule:
    """Resolve the dataset of ``cfg`` (generating the synthetic one if asked), run preflight, split it.

    Writes ``dataset_report.{txt,json}``, ``split.json`` and ``data_spec.json`` into ``output_dir``.
    ``label_maps``: name → function of the label (see ``SegmentationLoss.label_maps``), computed once
    per case in the cached part of the pipeline and cropped together with the label.
    ``seed``: the run's seed; the order of the training patches and their augmentation follow it.
    ``augmentation``: an ``augment.Augmentation`` (``None``: mirroring only).
    ``model_divisor``: per axis, the patch multiple a network with fixed down-sampling needs (see
    ``models.fixed_divisor``); ``None``: the network takes the planned strides. Writes ``plan.json`` too.

    Raises:
        DataError: the dataset is missing, empty or fails preflight (one line naming the file and the fix).
        ConfigError: a ``data.*`` option is invalid.
    """
    from segtrain.data.layouts import list_cases
    from segtrain.data.preflight import run_preflight
    from segtrain.data.synthetic import ensure_synthetic
    from segtrain.data.transforms import normalize_modes

    _check_options(cfg)
    root = cfg.get("root")
    if cfg.get("synthetic"):
        synthetic = OmegaConf.to_container(cfg.synthetic, resolve=True)
        root = ensure_synthetic(cfg.cache_dir, synthetic)
    listing = list_cases(root, cfg.get("layout", "auto"))
    spatial_dims = 2 if listing.layout == "images2d" else 3
    if cfg.get("patch_size") is not None and len(cfg.patch_size) != spatial_dims:
        raise ConfigError(
            f"data.patch_size={list(cfg.patch_size)} has {len(cfg.patch_size)} sides but the data is {spatial_dims}D; "
            f"give {spatial_dims} values (or null: from the plan)"
        )
    if model_divisor is not None and len(model_divisor) != spatial_dims:
        model_divisor = [model_divisor[0]] * spatial_dims
    num_classes = cfg.get("num_classes") or (len(listing.class_names) if listing.class_names else None)
    mapping = _label_mapping(cfg)
    report = run_preflight(
        listing, spatial_dims, num_classes, mapping,
        geometry_tolerance=float(cfg.get("geometry_tolerance", 0.05)),
        cache_dir=Path(cfg.cache_dir).expanduser() if cfg.get("cache_dir") and cfg.get("preflight_cache", True) else None,
        workers=cfg.get("preflight_workers"),
    )
    in_channels = report.cases[0].channels
    plan = plan_dataset(cfg, report, spatial_dims, model_divisor)
    spec = DataSpec(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        num_classes=report.num_classes,
        class_names=report.class_names,
        channel_names=report.channel_names,
        patch_size=tuple(plan.patch_size),
        orientation=str(cfg.get("orientation", "RAS")),
        spacing=plan.spacing if spatial_dims == 3 else None,
        normalize=normalize_modes(plan.normalize, in_channels),
        intensity=report.intensity,
        strides=plan.strides,
        kernel_sizes=plan.kernel_sizes,
    )
    train_ids, val_ids = split_cases([c["id"] for c in listing.cases], cfg)
    report.notes = [plan.summary(), *_report_notes(cfg, report, spec, len(train_ids))]
    log.info("%s", report.summary())
    by_id = {c["id"]: c for c in listing.cases}
    if output_dir is not None:
        output_dir = Path(output_dir)
        report.save(output_dir)
        write_text_atomic(output_dir / "split.json", json.dumps({"train": train_ids, "val": val_ids}, indent=2))
        spec.save(output_dir / "data_spec.json")
        plan.save(output_dir / "plan.json")
    return SegmentationDataModule(cfg, spec, [by_id[i] for i in train_ids], [by_id[i] for i in val_ids], mapping,
                                  report, label_maps=label_maps, dataset_root=listing.root, seed=seed,
                                  batch_size=plan.batch_size, augmentation=augmentation)


def _file_hash(item: dict) -> bytes:
    """PersistentDataset key of a case: its paths, sizes and modification times (a replaced file is re-read)."""
    paths = item["image"] if isinstance(item["image"], (list, tuple)) else [item["image"]]
    stamp = []
    for path in [*paths, item["label"]]:
        st = os.stat(path)
        stamp.append([str(path), st.st_size, st.st_mtime_ns])
    return hashlib.sha1(json.dumps(stamp).encode()).hexdigest().encode()


def collate_patches(items: list[dict]) -> dict:
    """Stack training patches with NumPy (single-threaded), other values into lists.

    torch.stack in the training process wakes torch's intra-op thread pool for every batch; on a busy
    small CPU box that cost ~25 ms per batch of two 48^3 patches, against <1 ms for np.stack.
    """
    out = {}
    for key in items[0]:
        values = [item[key] for item in items]
        if all(torch.is_tensor(v) or isinstance(v, np.ndarray) for v in values):
            arrays = [v.detach().cpu().numpy() if torch.is_tensor(v) else v for v in values]
            out[key] = torch.from_numpy(np.stack(arrays))
        elif all(isinstance(v, (int, float)) for v in values):
            out[key] = torch.tensor(values)
        else:
            out[key] = values
    return out


def patch_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of training item ``index`` in ``epoch``: a pure function, so any worker, rank or resumed run draws the same patch."""
    return int(np.random.SeedSequence([int(seed), int(epoch), int(index)]).generate_state(1)[0])


class _Repeat:
    """The training cases seen ``length`` times per epoch (cases cycle), so an epoch is a fixed number of patches.

    Items are addressed by ``(epoch, index)`` (``EpochSampler``); the random part of the pipeline
    (patch centre, flips) is re-seeded from ``patch_seed(seed, epoch, index)`` before each item.
    """

    def __init__(self, dataset, length: int, seed: int = 0):
        self.dataset, self.length, self.seed = dataset, length, int(seed or 0)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key):
        epoch, index = key if isinstance(key, tuple) else (0, key)
        self.dataset.transform.set_random_state(seed=patch_seed(self.seed, epoch, index))
        return self.dataset[index % len(self.dataset)]


class EpochSampler(DistributedSampler):
    """The order of the training items: a permutation per epoch from ``(seed, epoch)``, sharded across DDP ranks.

    Yields ``(epoch, index)`` keys (see ``_Repeat``). A ``DistributedSampler``, so that Lightning
    keeps it under DDP and calls ``set_epoch`` each epoch; ``skip`` drops the first items of the next
    iteration only (a resumed epoch skips what the interrupted run already trained on).
    """

    def __init__(self, dataset, seed: int, num_replicas: int = 1, rank: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=int(seed or 0), drop_last=False)
        self.skip = 0

    def __iter__(self):
        epoch, skip, self.skip = self.epoch, self.skip, 0
        return iter([(epoch, index) for index in list(super().__iter__())[skip:]])


class ResumableLoader(torch.utils.data.DataLoader):
    """A training loader that Lightning checkpoints mid-epoch (its ``state_dict`` goes into every checkpoint).

    The state is the epoch and the number of batches handed out; ``load_state_dict`` makes the next
    iteration start after them. With ``EpochSampler``'s order and ``_Repeat``'s seeding, the rest of
    a resumed epoch is batch for batch what the uninterrupted run trained on, whatever the workers.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches_done = 0

    def __iter__(self):
        self.batches_done = self.sampler.skip // max(self.batch_size or 1, 1)
        for batch in super().__iter__():
            self.batches_done += 1
            yield batch

    def state_dict(self) -> dict:
        return {"epoch": self.sampler.epoch, "batches": self.batches_done}

    def load_state_dict(self, state: dict) -> None:
        epoch, batches = int(state.get("epoch", 0)), int(state.get("batches", 0))
        if batches >= len(self):  # saved at the epoch's end: the next epoch starts afresh
            epoch, batches = epoch + 1, 0
        self.sampler.set_epoch(epoch)
        self.sampler.skip = batches * int(self.batch_size or 1)


class SegmentationDataModule(LightningDataModule):
    """Training patches (foreground-oversampled) and whole validation cases."""

    def __init__(self, cfg: DictConfig, spec: DataSpec, train_cases: list[dict], val_cases: list[dict],
                 label_mapping: dict | None = None, report=None, label_maps: dict | None = None,
                 dataset_root: Path | None = None, seed: int = 0, batch_size: int | None = None, augmentation=None):
        super().__init__()
        self.augmentation = augmentation
        self.num_workers = resolve_workers(cfg.get("num_workers", "auto"), augmentation)
        self.batch_size = int(batch_size or cfg.get("batch_size") or 2)
        self.seed = int(seed or 0)
        self.dataset_root = dataset_root
        self.label_maps = dict(label_maps or {})
        self.cfg, self.spec, self.report = cfg, spec, report
        self.train_cases, self.val_cases = train_cases, val_cases
        self.label_mapping = label_mapping
        self.train_set = self.val_set = None
        self._train_loader: ResumableLoader | None = None
        self._resume_position: dict | None = None

    def _items(self, cases: list[dict]) -> list[dict]:
        return [{"image": c["image"] if len(c["image"]) > 1 else c["image"][0], "label": c["label"], "id": c["id"]}
                for c in cases]

    def _persistent_dir(self, part: str) -> Path:
        """One folder per preprocessing recipe, so a changed option never reads stale cached cases."""
        recipe = {"part": part, "spec": self.spec.to_dict(), "label_mapping": sorted((self.label_mapping or {}).items()),
                  "label_maps": sorted(f"{k}:{getattr(v, '__module__', '')}.{getattr(v, '__qualname__', repr(v))}"
                                       for k, v in self.label_maps.items()),
                  "root": str(self.dataset_root), "version": 2}
        key = hashlib.sha1(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:16]
        return Path(self.cfg.cache_dir).expanduser() / "persistent" / key

    def _dataset(self, cases: list[dict], transforms: list, part: str):
        from monai.data import CacheDataset, Dataset, PersistentDataset
        from monai.transforms import Compose

        items = self._items(cases)
        cache = str(self.cfg.get("cache", "memory"))
        pipeline = Compose(transforms)
        if cache == "memory":
            # copy_cache=False: the random part never writes into cached tensors (the crop slices, flips copy).
            return CacheDataset(items, pipeline, cache_rate=float(self.cfg.get("cache_rate", 1.0)), num_workers=None,
                                progress=False, copy_cache=False)
        if cache == "disk":
            # Plain tensors only (track_meta=False): the cache is read back with weights_only=True.
            return PersistentDataset(items, pipeline, cache_dir=self._persistent_dir(part), hash_func=_file_hash,
                                     track_meta=False, weights_only=True)
        if cache in ("none", "None", "False"):
            return Dataset(items, pipeline)
        raise ConfigError(f"data.cache={cache!r} is unknown; use memory, disk or none")

    def setup(self, stage: str | None = None) -> None:
        from segtrain.data.transforms import (LabelMapsd, deterministic_transforms, train_cached_transforms,
                                              train_random_transforms)

        if self.train_set is not None:
            return
        base = deterministic_transforms(self.cfg, self.spec, self.label_mapping)
        extra = list(self.label_maps)
        train = base + train_cached_transforms(self.spec.patch_size, self.label_maps)
        spacing = self.spec.spacing or (self.report.median_spacing() if self.report is not None else None)
        train += train_random_transforms(self.spec.patch_size, float(self.cfg.get("pos_fraction", 0.33)),
                                         str(self.cfg.get("sampling", "posneg")), self.augmentation,
                                         spacing if self.spec.spatial_dims == 3 else None, extra_keys=extra)
        val = base + ([LabelMapsd(self.label_maps)] if self.label_maps else [])
        self.train_set = self._dataset(self.train_cases, train, "train")
        self.val_set = self._dataset(self.val_cases, val, "val")

    def train_dataloader(self):
        per_epoch = int(self.cfg.get("patches_per_epoch") or len(self.train_set))
        dataset = _Repeat(self.train_set, per_epoch, self.seed)
        world, rank = _world()
        workers = self.num_workers
        self._train_loader = ResumableLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=EpochSampler(dataset, self.seed, num_replicas=world, rank=rank),
            num_workers=workers,
            persistent_workers=workers > 0,
            worker_init_fn=worker_threads if workers > 0 else None,
            pin_memory=bool(self.cfg.get("pin_memory", False)),
            collate_fn=collate_patches,
        )
        if self._resume_position:
            self._train_loader.load_state_dict(self._resume_position)
            self._resume_position = None
        return self._train_loader

    # The training position travels in checkpoints twice: Lightning saves the loader's state, but
    # restores it only when it builds the loader after the restore; a schedule whose length follows
    # the run (estimated_stepping_batches) builds it before. The data module is restored before
    # either, so it hands the position to the loader it builds (setting it twice is harmless).
    def state_dict(self) -> dict:
        return {"train_position": self._train_loader.state_dict()} if self._train_loader is not None else {}

    def load_state_dict(self, state_dict: dict) -> None:
        self._resume_position = state_dict.get("train_position")

    def val_dataloader(self):
        from monai.data import DataLoader

        dataset, sampler = self.val_set, None
        world, rank = _world()
        if world > 1:
            dataset = _PaddedShards(self.val_set, world)
            sampler = _ShardSampler(dataset, world, rank)
        workers = self.num_workers if str(self.cfg.get("num_workers", "auto")) != "auto" else 0  # cached whole cases: nothing to compute
        return DataLoader(dataset, batch_size=1, sampler=sampler, num_workers=workers,
                          worker_init_fn=worker_threads if workers > 0 else None)


def resolve_workers(value, augmentation=None) -> int:
    """``data.num_workers``: a number, or ``auto``: none for mirroring only (cheap, in-process), else CPUs - 1 up to 4."""
    if value is None or str(value) == "auto":
        if augmentation is None or not (augmentation.spatial or augmentation.noise_prob or augmentation.blur_prob
                                        or augmentation.low_resolution_prob or augmentation.gamma_prob):
            return 0
        return max(1, min(4, (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1) - 1))
    try:
        workers = int(value)
    except (TypeError, ValueError):
        workers = -1
    if workers < 0:
        raise ConfigError(f"data.num_workers={value!r} must be auto or a number of worker processes >= 0")
    return workers


def _world() -> tuple[int, int]:
    """(world size, rank) of the DDP process group, (1, 0) outside DDP."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class _PaddedShards:
    """Validation cases padded to a multiple of the world size; padding items carry ``count = 0``.

    Every rank runs the same number of steps (no rank idles through a collective), while the
    metrics skip the padding, so the summed counts are exactly those of each case once.
    """

    def __init__(self, dataset, world_size: int):
        self.dataset = dataset
        self.length = -(-len(dataset) // world_size) * world_size

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        item = dict(self.dataset[index % len(self.dataset)])
        item["count"] = int(index < len(self.dataset))
        return item


class _ShardSampler(DistributedSampler):
    """Rank ``r`` takes items r, r + W, r + 2W, ... (a DistributedSampler so that Lightning keeps it)."""

    def __init__(self, dataset, num_replicas: int, rank: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)

    def __iter__(self):
        return iter(range(self.rank, len(self.dataset), self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, len(self.dataset), self.num_replicas))
