"""Speed knobs measured: model.channels_last and model.compile against the eager network, per training step.

A training step is forward, DiceCE loss, backward and an AdamW step on the default U-Net (configs/model/unet.yaml),
on random batches of the default runs' patch and batch sizes (3D: synthetic3d, 2D: synthetic2d) or your own.
Prints seconds per step (median of --steps after --warmup), the ratio to eager (below 1: faster), and for
compile the one-off compile time and the steps it takes to pay it back.

    python scripts/bench_speed.py                          # both default runs, on the GPU if there is one
    python scripts/bench_speed.py --dims 3 --patch 128 --batch 2 --precision bf16-mixed
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch


def build(dims: int, channels_last: bool = False, compile_mode: str | None = None, device: str = "cpu"):
    """The default U-Net (configs/model/unet.yaml's settings, 4 levels), with the knobs as segtrain applies them."""
    from monai.networks.nets import UNet
    from omegaconf import OmegaConf

    from segtrain.models import apply_speed_knobs

    net = UNet(spatial_dims=dims, in_channels=1, out_channels=2, channels=(16, 32, 64, 128), strides=(2, 2, 2),
               num_res_units=1, norm="instance", act="PRELU").to(device)
    knobs = OmegaConf.create({"channels_last": channels_last, "compile": compile_mode or False})
    return apply_speed_knobs(net, knobs, dims)


def autocast_dtype(precision: str):
    """The autocast dtype of a Lightning precision (None: float32)."""
    return {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}.get(precision)


def measure(dims: int, patch: int, batch: int, steps: int, warmup: int, device: str, precision: str,
            channels_last: bool, compile_mode: str | None) -> tuple[float, float]:
    """(median seconds per step after warm-up, seconds of the first step: compile time included)."""
    from monai.losses import DiceCELoss

    torch.manual_seed(0)
    net = build(dims, channels_last, compile_mode, device)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    shape = (batch, 1, *([patch] * dims))
    image = torch.randn(shape, device=device)
    label = (torch.rand(shape, device=device) > 0.95).long()
    dtype = autocast_dtype(precision)
    scaler = torch.amp.GradScaler(device, enabled=precision == "16-mixed")
    times = [timed_step(net, loss_fn, optimizer, scaler, image, label, dtype)[0] for _ in range(warmup + steps)]
    return statistics.median(times[warmup:]), times[0]


def timed_step(net, loss_fn, optimizer, scaler, image, label, dtype) -> tuple[float, float]:
    """One training step as Lightning's precision plugins run it (autocast, GradScaler for fp16): (seconds, loss)."""
    device = image.device.type
    start = time.perf_counter()
    with torch.autocast(device_type=device, dtype=dtype or torch.float32, enabled=dtype is not None):
        output = net(image)
    loss = loss_fn(output.float(), label)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, float(loss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dims", type=int, choices=(2, 3), default=None, help="default: both default runs")
    parser.add_argument("--patch", type=int, default=None, help="patch side (default: 48 in 3D, 96 in 2D)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: 2 in 3D, 8 in 2D)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--precision", default="32-true", choices=("32-true", "bf16-mixed", "16-mixed"))
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (it takes minutes on a CPU)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; precision {args.precision}")
    runs = [(args.dims, args.patch, args.batch)] if args.dims else [(3, args.patch, args.batch), (2, args.patch, args.batch)]
    for dims, patch, batch in runs:
        patch = patch or (48 if dims == 3 else 96)
        batch = batch or (2 if dims == 3 else 8)
        print(f"\n{dims}D U-Net, patch {patch}^{dims}, batch {batch}")
        eager, _ = measure(dims, patch, batch, args.steps, args.warmup, device, args.precision, False, None)
        print(f"  {'eager':<22} {eager:8.4f} s/step  1.00x")
        variants = [("channels_last", True, None)]
        if not args.no_compile:
            variants += [("compile", False, "default"), ("compile + channels_last", True, "default")]
        for label, channels_last, mode in variants:
            seconds, first = measure(dims, patch, batch, args.steps, args.warmup, device, args.precision,
                                     channels_last, mode)
            line = f"  {label:<22} {seconds:8.4f} s/step  {seconds / eager:.2f}x"
            if mode:
                gain = eager - seconds
                payback = f"pays back after {first / gain:,.0f} steps" if gain > 0 else "never pays back"
                line += f"  (first step {first:.1f} s: compile; {payback})"
            print(line)


if __name__ == "__main__":
    main()
