"""The ``data`` config group as one typed object, validated once, before any file is read.

``configs/data/nifti.yaml`` (and the presets that start from it) carries ``_target_:
segtrain.data.options.DataOptions``: Hydra builds it, the yaml holds the defaults (none are copied
here), and every later step reads attributes, not ``cfg.get("key", default)``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from segtrain.errors import ConfigError

NORMALIZATIONS = ("zscore", "ct", "minmax", "none")
SAMPLINGS = ("posneg", "class_balanced")
CACHES = ("memory", "disk", "none")
PLAN_MODES = ("auto", "off")  # data.plan (segtrain/data/plan.py)


def parse_label_mapping(value, key: str = "data.label_mapping") -> dict[int, int] | None:
    """``data.label_mapping`` (or ``key``): ``{255: 1}`` or its text ``'{255: 1}'`` → ``{255: 1}``."""
    if not value:
        return None
    mapping = value
    if isinstance(mapping, str):
        import yaml

        try:
            mapping = yaml.safe_load(mapping)
        except yaml.YAMLError:
            mapping = None
    try:
        return {int(k): int(v) for k, v in dict(mapping).items()}
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value!r} must map label values to class indices, "
                          f"e.g. {key}='{{255: 1}}'") from None


def check_workers(value) -> int | None:
    """``data.num_workers``: ``auto`` (None) or a number of worker processes >= 0."""
    if value is None or str(value) == "auto":
        return None
    try:
        workers = int(value)
    except (TypeError, ValueError):
        workers = -1
    if workers < 0:
        raise ConfigError(f"data.num_workers={value!r} must be auto or a number of worker processes >= 0")
    return workers


@dataclass
class DataOptions:
    """Every ``data.*`` option (meanings: ``configs/data/nifti.yaml`` and docs/data.md#every-option)."""

    root: str | None
    layout: str
    num_classes: int | None
    label_mapping: dict | str | None
    plan: str
    plan_memory_gb: float
    patch_size: list[int] | None
    batch_size: int | None
    patches_per_epoch: int | str | None
    max_epochs: int
    pos_fraction: float
    sampling: str
    val_fraction: float
    test_fraction: float
    fold: int | None
    num_folds: int
    split_file: str | None
    normalize: str | list[str] | None
    orientation: str
    spacing: list[float] | str | None
    geometry_tolerance: float
    preflight_cache: bool
    preflight_workers: int | None
    cache: str
    cache_rate: float
    cache_dir: str | None
    num_workers: int | str
    pin_memory: bool | str | None
    synthetic: dict | None = None

    def __post_init__(self) -> None:
        from segtrain.data.layouts import LAYOUTS

        self.label_mapping = parse_label_mapping(self.label_mapping)
        if self.layout not in LAYOUTS:
            raise ConfigError(f"data.layout={self.layout!r} is unknown; use one of {', '.join(LAYOUTS)}")
        if self.plan not in PLAN_MODES:
            raise ConfigError(f"data.plan={self.plan!r} is unknown; use auto (nnU-Net's rules) or off")
        if float(self.plan_memory_gb) <= 0:
            raise ConfigError(f"data.plan_memory_gb={self.plan_memory_gb} must be > 0 (GPU memory in GB the plan fills)")
        if self.patch_size is not None:
            try:
                self.patch_size = [int(s) for s in self.patch_size]
            except (TypeError, ValueError):
                self.patch_size = []
            if not self.patch_size or min(self.patch_size) < 1:
                raise ConfigError(f"data.patch_size={self.patch_size!r} must be a list of positive sides, or null (planned)")
        for name in ("batch_size", "patches_per_epoch"):
            value = getattr(self, name)
            if name == "patches_per_epoch" and value == "auto":
                continue
            if value is not None and (not str(value).isdigit() or int(value) < 1):
                raise ConfigError(f"data.{name}={value!r} must be a positive integer (or null"
                                  + (", or auto: 250 steps per epoch)" if name == "patches_per_epoch" else ")"))
            setattr(self, name, None if value is None else int(value))
        if not 0.0 <= float(self.pos_fraction) <= 1.0:
            raise ConfigError(f"data.pos_fraction={self.pos_fraction} must lie in [0, 1] (share of patches centred on foreground)")
        if self.sampling not in SAMPLINGS:
            raise ConfigError(f"data.sampling={self.sampling!r} is unknown; use one of {', '.join(SAMPLINGS)}")
        if str(self.cache) in ("None", "False"):
            self.cache = "none"
        if self.cache not in CACHES:
            raise ConfigError(f"data.cache={self.cache!r} is unknown; use memory, disk or none")
        modes = [self.normalize] if isinstance(self.normalize, str) or self.normalize is None else list(self.normalize)
        for mode in modes:
            if mode is not None and str(mode) not in NORMALIZATIONS:
                raise ConfigError(f"data.normalize={mode!r} is unknown; use one of {', '.join(NORMALIZATIONS)} "
                                  "(or a list with one mode per channel, or null: planned)")
        if self.spacing is not None and self.spacing != "median":
            try:
                values = [float(s) for s in self.spacing]
            except (TypeError, ValueError):
                values = []
            if len(values) != 3 or min(values) <= 0:
                raise ConfigError(f"data.spacing={self.spacing!r} must be null, 'median' or three positive spacings in mm, "
                                  "e.g. [1, 1, 1]")
            self.spacing = values
        if float(self.geometry_tolerance) < 0:
            raise ConfigError(f"data.geometry_tolerance={self.geometry_tolerance} must be >= 0 (voxels)")
        if self.fold is None and not self.split_file and not 0.0 < float(self.val_fraction) < 1.0:
            raise ConfigError(f"data.val_fraction={self.val_fraction} must lie strictly between 0 and 1")
        if not 0.0 <= float(self.test_fraction) < 1.0:
            raise ConfigError(f"data.test_fraction={self.test_fraction} must lie in [0, 1) (0: no held-out test cases)")
        if not 0.0 < float(self.cache_rate) <= 1.0:
            raise ConfigError(f"data.cache_rate={self.cache_rate} must lie in (0, 1]")
        if self.pin_memory not in (True, False, None, "auto"):
            raise ConfigError(f"data.pin_memory={self.pin_memory!r} must be true, false or auto (pinned when training on a GPU)")
        check_workers(self.num_workers)

    @classmethod
    def from_config(cls, cfg) -> DataOptions:
        """A ``data`` config (a ``DictConfig`` with ``_target_``, a dict, or already ``DataOptions``) → ``DataOptions``."""
        if isinstance(cfg, DataOptions):
            return cfg
        from omegaconf import OmegaConf

        values = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
        target = values.pop("_target_", None)
        if target and target != f"{cls.__module__}.{cls.__qualname__}":  # a user's subclass: Hydra builds it
            from hydra.utils import instantiate

            return instantiate({"_target_": target, **values}, _convert_="all")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"data.{unknown[0]} is not a data option; the options are {', '.join(sorted(known))}")
        return cls(**values)
