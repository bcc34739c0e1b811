"""``DataSpec``: what the rest of the program needs to know about the data (``data_spec.json``, checkpoints)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from segtrain.files import write_text_atomic


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
