"""Whole-case logits by sliding window: the one function validation, the test split and ``segtrain-predict`` share.

The windows, their overlap and blending are MONAI's ``sliding_window_inference``; the ``inference``
config (``configs/train.yaml``, stored in every checkpoint) says how, with the defaults below.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import Tensor

DEFAULTS: dict[str, Any] = {"roi_size": None, "sw_batch_size": 4, "overlap": 0.25, "mode": "gaussian"}


def inference_settings(*layers: Mapping[str, Any] | None) -> dict[str, Any]:
    """``DEFAULTS`` updated by each layer in turn (a run's ``inference`` config, then command-line values); None values skipped."""
    settings = dict(DEFAULTS)
    for layer in layers:
        settings.update({k: v for k, v in (layer or {}).items() if v is not None})
    return settings


def sliding_window_logits(image: Tensor, predictor: Callable[[Tensor], Tensor], settings: Mapping[str, Any],
                          patch_size: Sequence[int] | None = None) -> Tensor:
    """Logits (B, C, *S) of a whole case ``image`` (B, channels, *S); windows of ``roi_size``, else ``patch_size``, else the image."""
    from monai.inferers import sliding_window_inference

    roi = settings.get("roi_size") or patch_size or image.shape[2:]
    return sliding_window_inference(image, roi_size=list(roi), sw_batch_size=int(settings["sw_batch_size"]),
                                    predictor=predictor, overlap=float(settings["overlap"]), mode=str(settings["mode"]))
