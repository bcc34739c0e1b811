"""Data: dataset layouts, synthetic data, preflight validation, the plan and the Lightning data module."""

from segtrain.data.datamodule import SegmentationDataModule, build_datamodule
from segtrain.data.options import DataOptions
from segtrain.data.spec import DataSpec

__all__ = ["DataOptions", "DataSpec", "SegmentationDataModule", "build_datamodule"]
