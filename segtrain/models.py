"""Architecture factory: a MONAI network from ``configs/model/*.yaml`` sized by the data.

The model config is a Hydra ``_partial_`` of any MONAI network class; the factory adds what the
data decides (``spatial_dims``, ``in_channels``, ``out_channels``), so ``model=unet`` works in 2D
and 3D alike and ``model._target_=monai.networks.nets.SegResNet`` needs no code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from omegaconf import DictConfig

from segtrain.errors import ConfigError


def required_divisor(model_cfg: DictConfig) -> int:
    """The factor every patch side must be divisible by for the network's down-sampling path."""
    if "strides" in model_cfg:
        return int(math.prod(int(s) if not isinstance(s, Sequence) else max(s) for s in model_cfg.strides))
    if "features" in model_cfg:  # BasicUNet / BasicUNetPlusPlus: four 2x poolings
        return 16
    return 1


def check_patch_size(model_cfg: DictConfig, patch_size: Sequence[int]) -> None:
    divisor = required_divisor(model_cfg)
    bad = [s for s in patch_size if s % divisor or s < 2 * divisor]
    if bad:
        raise ConfigError(
            f"data.patch_size={list(patch_size)} does not suit the model: every side must be a multiple of "
            f"{divisor} (the product of its down-sampling strides) and at least {2 * divisor}; e.g. data.patch_size="
            f"[{','.join(str(max(2 * divisor, round(s / divisor) * divisor)) for s in patch_size)}]"
        )


def build_model(model_cfg: DictConfig, spatial_dims: int, in_channels: int, out_channels: int):
    """Instantiate the network of ``model_cfg`` for data of the given dimensions and classes."""
    from hydra.utils import instantiate

    if "channels" in model_cfg and "strides" in model_cfg and len(model_cfg.strides) != len(model_cfg.channels) - 1:
        raise ConfigError(
            f"model.strides has {len(model_cfg.strides)} entries but model.channels has {len(model_cfg.channels)}: "
            "strides needs one entry fewer than channels"
        )
    if "features" in model_cfg and len(model_cfg.features) != 6:
        raise ConfigError(f"model.features must list 6 integers (5 encoder levels + head), got {list(model_cfg.features)}")
    factory = instantiate(model_cfg, _convert_="all")
    try:
        return factory(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels)
    except (TypeError, ValueError, AssertionError) as err:
        raise ConfigError(f"cannot build model {model_cfg.get('_target_')}: {err}") from err
