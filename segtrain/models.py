"""Architecture factory: a MONAI network from ``configs/model/*.yaml`` sized by the data and its plan.

The model config is a Hydra ``_partial_`` of any MONAI network class; the factory adds what the
data decides (``spatial_dims``, ``in_channels``, ``out_channels``), so ``model=unet`` works in 2D
and 3D alike and ``model._target_=monai.networks.nets.SegResNet`` needs no code.

``auto`` values come from the data plan (``segtrain/data/plan.py``, ``DataSpec.strides`` and
``kernel_sizes``): for ``model=unet`` (MONAI ``UNet``) the per-axis strides and one feature width
per stage; for ``model=dynunet`` (MONAI ``DynUNet``, nnU-Net's architecture) strides, kernel sizes
and filters. Without a plan (``data.plan=off``) ``auto`` means 2x pooling in every axis, 4 stages.
"""

from __future__ import annotations

from collections.abc import Sequence

from omegaconf import DictConfig

from segtrain.errors import ConfigError

AUTO = "auto"
UNPLANNED_STAGES = 4
FIXED_DIVISORS = {"BasicUNetPlusPlus": 16, "BasicUNet": 16}  # four 2x poolings in every axis


def _is_auto(value) -> bool:
    return isinstance(value, str) and value == AUTO


def _class_name(model_cfg: DictConfig) -> str:
    return str(model_cfg.get("_target_", "")).rsplit(".", 1)[-1]


def _unplanned_strides(dims: int) -> list[list[int]]:
    return [[1] * dims] + [[2] * dims] * (UNPLANNED_STAGES - 1)


SPEED_KNOBS = ("compile", "channels_last")


def apply_speed_knobs(net, model_cfg: DictConfig, spatial_dims: int, single_cpu_process: bool = False):
    """How the network runs, not what it is (docs/benchmarks.md#speed-knobs has the measurements):

    - ``model.channels_last``: weights, and so activations, in channels-last layout (``channels_last_3d`` in
      3D). ``auto``: on where it was measured faster, 3D in one CPU process (a training step 0.75x); off
      elsewhere (DDP's gradient buckets do not match the layout of 1x1x1 kernels and warn of slower steps).
    - ``model.compile``: ``torch.compile`` of the network's forward, in place (``nn.Module.compile``: the
      state-dict keys stay the same, so checkpoints load into an uncompiled network for prediction);
      ``true`` or a mode (``default``, ``reduce-overhead``, ``max-autotune``). Off by default: the compile
      time (about 30 s for the default 3D U-Net on a CPU) pays back only after hundreds of steps.
    """
    import torch

    layout = model_cfg.get("channels_last", False)
    if layout not in (True, False, None, "auto"):
        raise ConfigError(f"model.channels_last={layout}: use true, false or auto (3D in one CPU process)")
    if layout is True or (layout == "auto" and spatial_dims == 3 and single_cpu_process):
        net = net.to(memory_format=torch.channels_last_3d if spatial_dims == 3 else torch.channels_last)
    mode = model_cfg.get("compile")
    if mode:
        if mode is not True and mode not in ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"):
            raise ConfigError(f"model.compile={mode}: use true, false or a torch.compile mode (default, reduce-overhead, "
                              "max-autotune)")
        net.compile(**({} if mode is True else {"mode": mode}))
    return net


def resolve(model_cfg: DictConfig, spec) -> dict:
    """The model's arguments with every ``auto`` filled from the plan in ``spec`` (a ``DataSpec``)."""
    from omegaconf import OmegaConf

    args = OmegaConf.to_container(model_cfg, resolve=True)
    dims = spec.spatial_dims
    stages = [list(s) for s in (spec.strides or _unplanned_strides(dims))]
    kernels = [list(k) for k in (spec.kernel_sizes or [[3] * dims] * len(stages))]
    if "channels" in args and "strides" in args:  # MONAI UNet
        if _is_auto(args["strides"]):
            # explicit channels: the plan's first poolings; levels beyond the plan's stages do not pool (stride 1)
            count = len(args["channels"]) if not _is_auto(args["channels"]) else len(stages)
            planned = [s if len(set(s)) > 1 else s[0] for s in stages[1:count]]
            args["strides"] = planned + [1] * (count - 1 - len(planned))
        if _is_auto(args["channels"]):
            base, top = int(args.pop("base_channels", 16)), int(args.pop("max_channels", 256))
            args["channels"] = [min(top, base * 2 ** i) for i in range(len(args["strides"]) + 1)]
    args.pop("base_channels", None)
    args.pop("max_channels", None)
    base, top = int(args.pop("base_filters", 32)), args.pop("max_filters", AUTO)
    for knob in SPEED_KNOBS:  # how the network runs, not what it is (apply_speed_knobs)
        args.pop(knob, None)
    if "kernel_size" in args and "upsample_kernel_size" in args:  # MONAI DynUNet
        if _is_auto(args["strides"]):
            args["strides"] = stages
        if _is_auto(args["kernel_size"]):
            args["kernel_size"] = kernels[:len(args["strides"])]
        if _is_auto(args["upsample_kernel_size"]):
            args["upsample_kernel_size"] = args["strides"][1:]
        if _is_auto(args.get("filters")):
            top = (320 if dims == 3 else 512) if _is_auto(top) else int(top)
            args["filters"] = [min(top, base * 2 ** i) for i in range(len(args["strides"]))]
        if _is_auto(args.get("deep_supr_num")):  # nnU-Net: every decoder output but the lowest resolution
            args["deep_supr_num"] = max(len(args["strides"]) - 3, 0)
        if args.get("deep_supervision") and not args.get("deep_supr_num"):
            args["deep_supervision"], args["deep_supr_num"] = False, 1  # too few stages for a second output
    return args


def divisor_per_axis(model_cfg: DictConfig, spec) -> list[int]:
    """Per axis, the factor every patch side must be a multiple of for the network's down-sampling."""
    dims = spec.spatial_dims
    name = _class_name(model_cfg)
    if name in FIXED_DIVISORS:
        return [FIXED_DIVISORS[name]] * dims
    return _stride_product(resolve(model_cfg, spec).get("strides") or [], dims)


def _stride_product(strides, dims: int) -> list[int]:
    """Per axis, the product of the strides (each an int for every axis, or one per axis)."""
    divisor = [1] * dims
    for stage in strides:
        stage = list(stage) if isinstance(stage, Sequence) and not isinstance(stage, str) else [int(stage)] * dims
        divisor = [d * int(s) for d, s in zip(divisor, stage)]
    return divisor


def fixed_divisor(model_cfg: DictConfig, spatial_dims: int) -> list[int] | None:
    """The per-axis patch multiple of a network whose down-sampling the plan cannot change (``None``: it can)."""
    name = _class_name(model_cfg)
    if name in FIXED_DIVISORS:
        return [FIXED_DIVISORS[name]] * spatial_dims
    strides = model_cfg.get("strides")
    if strides is None or _is_auto(strides):
        return None
    return _stride_product(strides, spatial_dims)


def check_patch_size(model_cfg: DictConfig, spec) -> None:
    divisor = divisor_per_axis(model_cfg, spec)
    patch = list(spec.patch_size)
    bad = [i for i, (s, d) in enumerate(zip(patch, divisor)) if s % d or s < 2 * d and d > 1]
    if bad:
        shown = divisor[0] if len(set(divisor)) == 1 else divisor
        suggestion = [max(2 * d, round(s / d) * d) for s, d in zip(patch, divisor)]
        raise ConfigError(
            f"data.patch_size={patch} does not suit the model: every side must be a multiple of {shown} (the product "
            f"of its down-sampling strides) and at least twice that; e.g. data.patch_size=[{','.join(map(str, suggestion))}]"
        )


def build_model(model_cfg: DictConfig, spec):
    """Instantiate the network of ``model_cfg`` for the data of ``spec`` (dims, channels, classes, plan)."""
    from hydra.utils import instantiate

    args = resolve(model_cfg, spec)
    if "channels" in args and "strides" in args and len(args["strides"]) != len(args["channels"]) - 1:
        raise ConfigError(
            f"model.strides has {len(args['strides'])} entries but model.channels has {len(args['channels'])}: "
            "strides needs one entry fewer than channels"
        )
    if "features" in args and len(args["features"]) != 6:
        raise ConfigError(f"model.features must list 6 integers (5 encoder levels + head), got {list(args['features'])}")
    factory = instantiate(args, _convert_="all")
    try:
        return factory(spatial_dims=spec.spatial_dims, in_channels=spec.in_channels, out_channels=spec.num_classes)
    except (TypeError, ValueError, AssertionError) as err:
        raise ConfigError(f"cannot build model {model_cfg.get('_target_')}: {err}") from err
