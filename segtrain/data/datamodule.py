"""The Lightning data module: list → preflight → split → cached MONAI datasets → loaders."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from torch.utils.data import DistributedSampler

from segtrain.errors import ConfigError, DataError

log = logging.getLogger(__name__)


@dataclass
class DataSpec:
    """What the rest of the program needs to know about the data."""

    spatial_dims: int
    in_channels: int
    num_classes: int  # including background
    class_names: list[str]
    channel_names: list[str]
    patch_size: tuple[int, ...]


def _label_mapping(cfg: DictConfig) -> dict[int, int] | None:
    mapping = cfg.get("label_mapping")
    if not mapping:
        return None
    if isinstance(mapping, str):
        import yaml

        mapping = yaml.safe_load(mapping)
    try:
        return {int(k): int(v) for k, v in dict(mapping).items()}
    except (TypeError, ValueError):
        raise ConfigError(f"data.label_mapping={mapping!r} must map label values to class indices, e.g. '{{255: 1}}'") from None


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


def build_datamodule(cfg: DictConfig, output_dir: str | Path | None = None, label_maps: dict | None = None) -> SegmentationDataModule:
    """Resolve the dataset of ``cfg`` (generating the synthetic one if asked), run preflight, split it.

    ``label_maps``: name → function of the label (see ``SegmentationLoss.label_maps``), computed once
    per case in the cached part of the pipeline and cropped together with the label.
    """
    from segtrain.data.layouts import list_cases
    from segtrain.data.preflight import run_preflight
    from segtrain.data.synthetic import ensure_synthetic

    root = cfg.get("root")
    if cfg.get("synthetic"):
        synthetic = OmegaConf.to_container(cfg.synthetic, resolve=True)
        root = ensure_synthetic(cfg.cache_dir, synthetic)
    listing = list_cases(root, cfg.get("layout", "auto"))
    spatial_dims = 2 if listing.layout == "images2d" else 3
    patch_size = tuple(int(s) for s in cfg.patch_size)
    if len(patch_size) != spatial_dims:
        raise ConfigError(
            f"data.patch_size={list(patch_size)} has {len(patch_size)} sides but the data is {spatial_dims}D; "
            f"give {spatial_dims} values"
        )
    num_classes = cfg.get("num_classes") or (len(listing.class_names) if listing.class_names else None)
    mapping = _label_mapping(cfg)
    report = run_preflight(listing, spatial_dims, num_classes, mapping)
    log.info("%s", report.summary())
    if output_dir is not None:
        report.save(output_dir)
    spec = DataSpec(
        spatial_dims=spatial_dims,
        in_channels=report.cases[0].channels,
        num_classes=report.num_classes,
        class_names=report.class_names,
        channel_names=report.channel_names,
        patch_size=patch_size,
    )
    train_ids, val_ids = split_cases([c["id"] for c in listing.cases], cfg)
    by_id = {c["id"]: c for c in listing.cases}
    if output_dir is not None:
        import json

        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / "split.json").write_text(json.dumps({"train": train_ids, "val": val_ids}, indent=2))
    return SegmentationDataModule(cfg, spec, [by_id[i] for i in train_ids], [by_id[i] for i in val_ids], mapping, report,
                                  label_maps=label_maps)


class _Repeat:
    """A dataset seen ``length`` times per epoch (cases cycle), so an epoch is a fixed number of patches."""

    def __init__(self, dataset, length: int):
        self.dataset, self.length = dataset, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        return self.dataset[index % len(self.dataset)]


def _lightning_base():
    from lightning.pytorch import LightningDataModule

    return LightningDataModule


class SegmentationDataModule(_lightning_base()):
    """Training patches (foreground-oversampled) and whole validation cases."""

    def __init__(self, cfg: DictConfig, spec: DataSpec, train_cases: list[dict], val_cases: list[dict],
                 label_mapping: dict | None = None, report=None, label_maps: dict | None = None):
        super().__init__()
        self.label_maps = dict(label_maps or {})
        self.cfg, self.spec, self.report = cfg, spec, report
        self.train_cases, self.val_cases = train_cases, val_cases
        self.label_mapping = label_mapping
        self.train_set = self.val_set = None

    def _dataset(self, cases: list[dict], transforms: list, cached: int):
        from monai.data import CacheDataset, Dataset, PersistentDataset
        from monai.transforms import Compose

        items = [{"image": c["image"] if len(c["image"]) > 1 else c["image"][0], "label": c["label"], "id": c["id"]} for c in cases]
        cache = self.cfg.get("cache", "memory")
        pipeline = Compose(transforms)
        if cache == "memory":
            return CacheDataset(items, pipeline, cache_rate=1.0, num_workers=None, progress=False)
        if cache == "disk":
            cache_dir = Path(self.cfg.cache_dir).expanduser() / "persistent"
            return PersistentDataset(items, pipeline, cache_dir=cache_dir)
        if cache in ("none", None, False):
            return Dataset(items, pipeline)
        raise ConfigError(f"data.cache={cache!r} is unknown; use memory, disk or none")

    def setup(self, stage: str | None = None) -> None:
        from segtrain.data.transforms import LabelMapsd, deterministic_transforms, indices_transform, train_transforms

        if self.train_set is not None:
            return
        base = deterministic_transforms(self.cfg, self.spec.spatial_dims, self.label_mapping)
        if self.label_maps:
            base.append(LabelMapsd(self.label_maps))
        train_base = base + [indices_transform()]
        random_part = train_transforms(self.cfg, self.spec.patch_size, extra_keys=list(self.label_maps))
        self.train_set = self._dataset(self.train_cases, train_base + random_part, len(train_base))
        self.val_set = self._dataset(self.val_cases, base, len(base))

    def _loader(self, dataset, batch_size: int, shuffle: bool):
        from monai.data import DataLoader

        workers = int(self.cfg.get("num_workers", 0))
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=bool(self.cfg.get("pin_memory", False)),
        )

    def train_dataloader(self):
        per_epoch = self.cfg.get("patches_per_epoch") or len(self.train_set)
        return self._loader(_Repeat(self.train_set, int(per_epoch)), int(self.cfg.batch_size), shuffle=True)

    def val_dataloader(self):
        from monai.data import DataLoader

        dataset, sampler = self.val_set, None
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dataset = _PaddedShards(self.val_set, dist.get_world_size())
            sampler = _ShardSampler(dataset, dist.get_world_size(), dist.get_rank())
        return DataLoader(dataset, batch_size=1, sampler=sampler, num_workers=int(self.cfg.get("num_workers", 0)))


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
