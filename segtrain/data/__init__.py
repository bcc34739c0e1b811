"""Data: dataset layouts, synthetic data, preflight validation, the plan and the Lightning data module.

The names below load on first use, so that ``segtrain.data.layouts`` or ``readers`` (used by
``segtrain-evaluate``) do not import Lightning.
"""

from __future__ import annotations

import importlib

_EXPORTS = {"SegmentationDataModule": "datamodule", "build_datamodule": "datamodule", "DataOptions": "options",
            "DataSpec": "spec"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"segtrain.data.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'segtrain.data' has no attribute {name!r}")
