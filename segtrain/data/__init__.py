"""Data: dataset layouts, synthetic data, preflight validation and the Lightning data module."""

from segtrain.data.datamodule import DataSpec, SegmentationDataModule, build_datamodule

__all__ = ["DataSpec", "SegmentationDataModule", "build_datamodule"]
