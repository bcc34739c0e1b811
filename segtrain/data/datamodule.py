"""The Lightning data module: list → preflight → plan → split → cached MONAI datasets → loaders.

The parts live beside it: ``options`` (the typed ``data`` config), ``layouts`` and ``readers``
(files on disk), ``preflight`` and ``report`` (checks and the fingerprint), ``plan``, ``split``,
``transforms`` and ``loaders``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
from lightning.pytorch import LightningDataModule

from segtrain.files import write_text_atomic
from segtrain.data.loaders import (EpochSampler, PrepareBatch, ResumableLoader, TrainCollate, _PaddedShards, _Repeat,
                                   _ShardSampler, _world, resolve_workers, worker_threads)
from segtrain.data.options import DataOptions
from segtrain.data.spec import DataSpec
from segtrain.data.split import split_cases
from segtrain.errors import ConfigError

log = logging.getLogger(__name__)

STEPS_PER_EPOCH = 250  # nnU-Net's iterations per epoch (data.patches_per_epoch=auto)


def plan_dataset(options: DataOptions, report, spatial_dims: int, model_divisor=None):
    """The ``Plan`` of ``options`` (``data.plan``, explicit ``data.*`` values winning) for a preflight report."""
    from segtrain.data.plan import make_plan, reoriented

    orientation = options.orientation
    shapes, spacings = [], []
    for case in report.cases:
        if spatial_dims == 3:
            shape, spacing = reoriented(case.shape, case.spacing, case.axcodes, orientation)
        else:
            shape, spacing = case.shape, case.spacing
        shapes.append(shape)
        spacings.append(spacing)
    return make_plan(
        shapes, spacings, report.channel_names, report.num_classes, report.num_cases,
        mode=options.plan, memory_gb=float(options.plan_memory_gb),
        spacing=options.spacing if spatial_dims == 3 else None, patch_size=options.patch_size,
        batch_size=options.batch_size, normalize=options.normalize, model_divisor=model_divisor,
    )


def _report_notes(options: DataOptions, report, spec: DataSpec, train_cases: int) -> list[str]:
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
    shapes = np.round(shapes)
    planned = options.plan == "auto" and options.patch_size is None  # nnU-Net pads its patch to the pooling divisor
    small = [] if planned else [i for i, (p, s) in enumerate(zip(spec.patch_size, np.median(shapes, 0))) if p > s]
    if small:
        notes.append(f"note: data.patch_size={list(spec.patch_size)} exceeds the median case shape "
                     f"{np.median(shapes, 0).astype(int).tolist()} along axis {small}: cases are zero-padded to the patch")
    if options.cache == "memory":
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


def build_datamodule(cfg, output_dir: str | Path | None = None, label_maps: dict | None = None,
                     seed: int = 0, model_divisor=None, augmentation=None,
                     split: dict | None = None) -> SegmentationDataModule:
    """Resolve the dataset of ``cfg`` (generating the synthetic one if asked), run preflight, plan, split it.

    ``cfg``: the ``data`` config or a ``DataOptions``.

    Writes ``dataset_report.{txt,json}``, ``split.json`` and ``data_spec.json`` into ``output_dir``.
    ``label_maps``: name → function of the label (see ``SegmentationLoss.label_maps``), computed once
    per case in the cached part of the pipeline and cropped together with the label.
    ``seed``: the run's seed; the order of the training patches and their augmentation follow it.
    ``augmentation``: an ``augment.Augmentation`` (``None``: mirroring only).
    ``model_divisor``: per axis, the patch multiple a network with fixed down-sampling needs (see
    ``models.fixed_divisor``); ``None``: the network takes the planned strides. Writes ``plan.json`` too.
    ``split``: a resumed run's own ``{"train": [...], "val": [...]}``, kept when the dataset holds exactly its cases.

    Raises:
        DataError: the dataset is missing, empty or fails preflight (one line naming the file and the fix).
        ConfigError: a ``data.*`` option is invalid.
    """
    from dataclasses import replace

    from segtrain.data.layouts import list_cases, list_test_cases
    from segtrain.data.preflight import run_preflight
    from segtrain.data.split import hold_out
    from segtrain.data.synthetic import ensure_synthetic
    from segtrain.data.transforms import normalize_modes

    options = DataOptions.from_config(cfg)
    root = options.root
    if options.synthetic:
        try:
            root = ensure_synthetic(options.cache_dir, options.synthetic)
        except OSError as err:  # a read-only or misplaced cache; users' data only warns (its caches are optional)
            raise ConfigError(f"cannot write the synthetic dataset into {options.cache_dir} (paths.cache_dir): "
                              f"{err.strerror or err}; set SEGTRAIN_CACHE_DIR (or paths.cache_dir) to a writable folder") from None
    listing = list_cases(root, options.layout)
    spatial_dims = 2 if listing.layout == "images2d" else 3
    test_cases = list_test_cases(listing)  # imagesTs/ + labelsTs/ win over data.test_fraction
    test_source = "imagesTs/ + labelsTs/"
    if not test_cases and options.test_fraction:
        test_source = f"data.test_fraction={options.test_fraction}"
        kept, test_ids = hold_out([c["id"] for c in listing.cases], options.test_fraction)
        test_cases = [c for c in listing.cases if c["id"] in set(test_ids)]
        listing = replace(listing, cases=[c for c in listing.cases if c["id"] in set(kept)])  # the plan never sees them
    if options.patch_size is not None and len(options.patch_size) != spatial_dims:
        raise ConfigError(
            f"data.patch_size={options.patch_size} has {len(options.patch_size)} sides but the data is {spatial_dims}D; "
            f"give {spatial_dims} values (or null: from the plan)"
        )
    if model_divisor is not None and len(model_divisor) != spatial_dims:
        model_divisor = [model_divisor[0]] * spatial_dims
    num_classes = options.num_classes or (len(listing.class_names) if listing.class_names else None)
    mapping = options.label_mapping
    report = run_preflight(
        listing, spatial_dims, num_classes, mapping,
        geometry_tolerance=float(options.geometry_tolerance),
        cache_dir=Path(options.cache_dir).expanduser() if options.cache_dir and options.preflight_cache else None,
        workers=options.preflight_workers,
    )
    if test_cases:  # the same checks, against the training classes; its own preflight cache
        test_cache = Path(options.cache_dir).expanduser() / "preflight-test" if options.cache_dir and options.preflight_cache else None
        run_preflight(replace(listing, cases=test_cases, root=listing.root / "test"), spatial_dims, report.num_classes,
                      mapping, geometry_tolerance=float(options.geometry_tolerance), cache_dir=test_cache,
                      workers=options.preflight_workers, part="test ")
    in_channels = report.cases[0].channels
    plan = plan_dataset(options, report, spatial_dims, model_divisor)
    spec = DataSpec(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        num_classes=report.num_classes,
        class_names=report.class_names,
        channel_names=report.channel_names,
        patch_size=tuple(plan.patch_size),
        orientation=options.orientation,
        spacing=plan.spacing if spatial_dims == 3 else None,
        normalize=normalize_modes(plan.normalize, in_channels),
        intensity=report.intensity,
        strides=plan.strides,
        kernel_sizes=plan.kernel_sizes,
    )
    ids = [c["id"] for c in listing.cases]
    if split and set(split.get("train", [])) | set(split.get("val", [])) == set(ids):
        train_ids, val_ids = sorted(split["train"]), sorted(split["val"])  # a resume keeps its split
    else:
        train_ids, val_ids = split_cases(ids, options.fold, options.num_folds, options.val_fraction, options.split_file)
    report.notes = [plan.summary(), *_report_notes(options, report, spec, len(train_ids))]
    log.info("%s", report.summary())
    if test_cases:
        log.info("test set: %d held-out case(s) from %s, scored after training with the best checkpoint",
                 len(test_cases), test_source)
    by_id = {c["id"]: c for c in listing.cases}
    if output_dir is not None:
        output_dir = Path(output_dir)
        report.save(output_dir)
        split = {"train": train_ids, "val": val_ids, **({"test": [c["id"] for c in test_cases]} if test_cases else {})}
        write_text_atomic(output_dir / "split.json", json.dumps(split, indent=2))
        spec.save(output_dir / "data_spec.json")
        plan.save(output_dir / "plan.json")
    return SegmentationDataModule(options, spec, [by_id[i] for i in train_ids], [by_id[i] for i in val_ids], mapping,
                                  report, label_maps=label_maps, dataset_root=listing.root, seed=seed,
                                  batch_size=plan.batch_size, augmentation=augmentation, test_cases=test_cases)


def _file_hash(item: dict) -> bytes:
    """PersistentDataset key of a case: its paths, sizes and modification times (a replaced file is re-read)."""
    paths = item["image"] if isinstance(item["image"], (list, tuple)) else [item["image"]]
    stamp = []
    for path in [*paths, item["label"]]:
        st = os.stat(path)
        stamp.append([str(path), st.st_size, st.st_mtime_ns])
    return hashlib.sha1(json.dumps(stamp).encode()).hexdigest().encode()


class SegmentationDataModule(LightningDataModule):
    """Training patches (foreground-oversampled) and whole validation cases."""

    def __init__(self, options: DataOptions, spec: DataSpec, train_cases: list[dict], val_cases: list[dict],
                 label_mapping: dict | None = None, report=None, label_maps: dict | None = None,
                 dataset_root: Path | None = None, seed: int = 0, batch_size: int | None = None, augmentation=None,
                 test_cases: list[dict] | None = None):
        super().__init__()
        self.test_cases = list(test_cases or [])
        self.test_set = self._test_pipeline = None
        self.augmentation = augmentation
        self.options = options
        self.training_device = self.augment_device = "cpu"
        self.num_workers = resolve_workers(options.num_workers, augmentation)
        self.batch_size = int(batch_size or options.batch_size or 2)
        self.seed = int(seed or 0)
        self.dataset_root = dataset_root
        self.label_maps = dict(label_maps or {})
        self.spec, self.report = spec, report
        self.train_cases, self.val_cases = train_cases, val_cases
        self.label_mapping = label_mapping
        self.train_set = self.val_set = None
        self._train_loader: ResumableLoader | None = None
        self._resume_position: dict | None = None
        self._prepare: PrepareBatch | None = None

    def use_device(self, training_device: str, processes_per_node: int = 1) -> None:
        """Where the model trains (``cpu`` or ``cuda``) and how many training processes share this node's CPUs:
        decides where batches are augmented (``augment.device``), ``data.num_workers=auto`` and pinned memory."""
        from segtrain.data.transforms import default_augmentation

        self.training_device = training_device
        self.augment_device = (self.augmentation or default_augmentation()).resolve_device(training_device)
        self.num_workers = resolve_workers(self.options.num_workers, self.augmentation, self.augment_device,
                                           processes_per_node)

    @property
    def pin_memory(self) -> bool:
        """``data.pin_memory``: true, false, or auto (null): pinned when training on a GPU (non-blocking copies)."""
        value = self.options.pin_memory
        return self.training_device == "cuda" if value is None or str(value) == "auto" else bool(value)

    def _prepare_batch(self) -> PrepareBatch:
        from segtrain.augment.batched import BatchAugmenter
        from segtrain.data.transforms import default_augmentation

        spacing = self.spec.spacing or (self.report.median_spacing() if self.report is not None else None)
        spacing = spacing if self.spec.spatial_dims == 3 else None
        augmenter = BatchAugmenter(self.augmentation or default_augmentation(), self.spec.patch_size, spacing)
        return PrepareBatch(augmenter, self.label_maps, spacing, self.spec.num_classes)

    def augment_batch(self, batch: dict) -> dict:
        """A collated training batch, augmented and with its label maps, on the device it is on (a GPU after the transfer)."""
        if self._prepare is None:
            self._prepare = self._prepare_batch()
        return self._prepare(batch)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Lightning's hook, after the batch reached the training device: a training batch is augmented there."""
        from segtrain.augment.params import PARAMS_KEY

        if isinstance(batch, dict) and PARAMS_KEY in batch:
            return self.augment_batch(batch)
        return batch

    @property
    def patches_per_epoch(self) -> int:
        """``data.patches_per_epoch``: a number; ``auto``, nnU-Net's 250 steps of the batch; null, one per training case."""
        value = self.options.patches_per_epoch
        if value == "auto":
            return STEPS_PER_EPOCH * self.batch_size
        return int(value or len(self.train_cases))

    def _items(self, cases: list[dict]) -> list[dict]:
        return [{"image": c["image"] if len(c["image"]) > 1 else c["image"][0], "label": c["label"], "id": c["id"]}
                for c in cases]

    def _persistent_dir(self, part: str) -> Path:
        """One folder per preprocessing recipe, so a changed option never reads stale cached cases."""
        recipe = {"part": part, "spec": self.spec.to_dict(), "label_mapping": sorted((self.label_mapping or {}).items()),
                  "label_maps": sorted(f"{k}:{getattr(v, '__module__', '')}.{getattr(v, '__qualname__', repr(v))}"
                                       for k, v in self.label_maps.items()),
                  "root": str(self.dataset_root), "version": 3}
        key = hashlib.sha1(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:16]
        return Path(self.options.cache_dir).expanduser() / "persistent" / key

    def _dataset(self, cases: list[dict], transforms: list, part: str):
        from monai.data import CacheDataset, Dataset, PersistentDataset
        from monai.transforms import Compose

        items = self._items(cases)
        cache = self.options.cache
        pipeline = Compose(transforms)
        if cache == "memory":
            # copy_cache=False: the random part never writes into cached tensors (the crop slices, flips copy).
            return CacheDataset(items, pipeline, cache_rate=float(self.options.cache_rate), num_workers=None,
                                progress=False, copy_cache=False)
        if cache == "disk":
            # Plain tensors only (track_meta=False): the cache is read back with weights_only=True.
            return PersistentDataset(items, pipeline, cache_dir=self._persistent_dir(part), hash_func=_file_hash,
                                     track_meta=False, weights_only=True)
        return Dataset(items, pipeline)

    def setup(self, stage: str | None = None) -> None:
        from segtrain.data.transforms import (LabelMapsd, deterministic_transforms, train_cached_transforms,
                                              train_random_transforms)

        if self.train_set is not None:
            return
        base = deterministic_transforms(self.options, self.spec, self.label_mapping)
        train = base + train_cached_transforms(self.spec.patch_size)
        spacing = self.spec.spacing or (self.report.median_spacing() if self.report is not None else None)
        train += train_random_transforms(self.spec.patch_size, float(self.options.pos_fraction),
                                         self.options.sampling, self.augmentation,
                                         spacing if self.spec.spatial_dims == 3 else None)
        val = base + ([LabelMapsd(self.label_maps, self.spec.num_classes)] if self.label_maps else [])
        self.train_set = self._dataset(self.train_cases, train, "train")
        self.val_set = self._dataset(self.val_cases, val, "val")

    def train_dataloader(self):
        per_epoch = self.patches_per_epoch
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
            pin_memory=self.pin_memory,
            collate_fn=TrainCollate(self._prepare_batch() if self.augment_device == "cpu" else None),
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
        workers = self.num_workers if str(self.options.num_workers) != "auto" else 0  # cached whole cases: nothing to compute
        return DataLoader(dataset, batch_size=1, sampler=sampler, num_workers=workers,
                          worker_init_fn=worker_threads if workers > 0 else None)

    # -- the held-out test set: whole cases, scored on their own grid against the label files ---------
    def _test_dataset(self):
        from monai.data import Dataset

        from segtrain.data.transforms import inference_transforms

        if self.test_set is None:
            self._test_pipeline = inference_transforms(None, self.spec)
            items = [{"image": c["image"] if len(c["image"]) > 1 else c["image"][0], "label_path": c["label"], "id": c["id"]}
                     for c in self.test_cases]
            self.test_set = Dataset(items, self._test_pipeline)  # not cached: read once, meta kept for the inversion
        return self.test_set

    def test_dataloader(self):
        from monai.data import DataLoader

        dataset, sampler = self._test_dataset(), None
        world, rank = _world()
        if world > 1:
            dataset = _PaddedShards(dataset, world)
            sampler = _ShardSampler(dataset, world, rank)
        return DataLoader(dataset, batch_size=1, sampler=sampler, num_workers=0)

    def restore_prediction(self, pred, batch: dict) -> np.ndarray:
        """A test case's hard prediction (1, 1, *S) mapped back onto its label file's grid (orientation, spacing undone)."""
        from monai.data import decollate_batch

        from segtrain.data.transforms import label_dtype, prediction_inverter, with_meta_of

        item = decollate_batch(batch)[0]
        item["pred"] = with_meta_of(pred[0].detach().cpu().to(label_dtype(self.spec.num_classes)), item["image"])
        restored = prediction_inverter(self._test_pipeline)(item)["pred"]
        return np.asarray(restored.detach().cpu())[0]
