"""GPU evidence in one command: what docs/benchmarks.md#gpu asks of a GPU, printed as markdown.

1. Training steps per second and peak memory for 32-true, 16-mixed and bf16-mixed, on the default 3D run's
   patch (48³, batch 2) and on a 128³ patch (batch 2): the default U-Net, segtrain's dice_ce loss, AdamW,
   a GradScaler under 16-mixed, as Lightning's precision plugins do.
2. Loss numerics under 16-mixed: every registry loss on a 128³ batch of half-precision logits (ordinary
   and confident, |logit| up to 60): value and gradient finite, and the value against float32 arithmetic on
   the same logits (segtrain's losses reduce in float32 under autocast: the difference shows if one does not).
3. ``scripts/bench_train.py`` (segtrain's Lightning step against a bare loop) for each precision.

    python scripts/gpu_evidence.py --out gpu_evidence.md      # on a GPU machine (a few minutes)
    python scripts/gpu_evidence.py --smoke                    # tiny sizes, any machine (what the tests run)
"""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from bench_speed import autocast_dtype, build, timed_step  # noqa: E402 - scripts/bench_speed.py

PRECISIONS = ("32-true", "16-mixed", "bf16-mixed")


def train_steps(device: str, precision: str, patch: int, batch: int, steps: int, warmup: int) -> dict:
    """Seconds per step (median), steps/s and peak memory of the default U-Net with dice_ce."""
    from segtrain.losses import build_loss

    torch.manual_seed(0)
    net = build(3, device=device)
    loss_fn = build_loss("dice_ce")
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    dtype = autocast_dtype(precision)
    scaler = torch.amp.GradScaler(device, enabled=dtype is torch.float16)
    image = torch.randn(batch, 1, patch, patch, patch, device=device)
    label = (torch.rand(batch, 1, patch, patch, patch, device=device) > 0.995).long()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, losses = zip(*(timed_step(net, loss_fn, optimizer, scaler, image, label, dtype) for _ in range(warmup + steps)))
    seconds = statistics.median(times[warmup:])
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else math.nan
    return {"s_per_step": seconds, "steps_per_s": 1 / seconds, "peak_gib": peak,
            "finite": all(math.isfinite(v) for v in losses)}


def loss_numerics(device: str, precision: str, side: int) -> list[dict]:
    """Every registry loss on half-precision logits of a (2, 2, side³) batch against its float32 value."""
    from segtrain.losses import available_losses, build_loss

    generator = torch.Generator().manual_seed(0)
    label = (torch.rand(2, 1, side, side, side, generator=generator) > 0.995).long().to(device)
    base = torch.randn(2, 2, side, side, side, generator=generator).to(device)
    dtype = autocast_dtype(precision) or torch.float32
    rows = []
    for name in available_losses():
        loss = build_loss(name, **({"alpha": 0.5} if name == "boundary" else {}))
        for case, scale in (("ordinary", 3.0), ("confident", 60.0)):
            logits = (base * scale).to(dtype).requires_grad_(True)  # what a network under autocast hands the loss
            with torch.autocast(device, dtype=dtype, enabled=dtype is not torch.float32):
                value = loss(logits, label)
            (grad,) = torch.autograd.grad(value, logits)
            reference = float(loss((base * scale).to(dtype).float(), label))
            finite = bool(torch.isfinite(value) and torch.isfinite(grad).all())
            rel = abs(float(value) - reference) / max(abs(reference), 1e-6)
            rows.append({"loss": name, "case": case, "value": float(value), "float32": reference, "rel_diff": rel,
                         "finite": finite, "dtype": str(value.dtype).removeprefix("torch.")})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and few steps (any machine)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown here")
    parser.add_argument("--no-bench-train", action="store_true")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU (no GPU)"
    patches = [(16, 2)] if args.smoke else [(48, 2), (128, 2)]
    steps, warmup, side = (2, 1, 16) if args.smoke else (args.steps, 3, 128)
    precisions = PRECISIONS if device == "cuda" else ("32-true", "bf16-mixed")  # fp16 autocast is a GPU mode
    lines = [f"Device: **{name}**, torch {torch.__version__}", "",
             "| precision | patch | batch | s/step | steps/s | peak memory (GiB) | losses finite |", "|---|---|---|---|---|---|---|"]
    for precision in precisions:
        for patch, batch in patches:
            r = train_steps(device, precision, patch, batch, steps, warmup)
            lines.append(f"| {precision} | {patch}³ | {batch} | {r['s_per_step']:.4f} | {r['steps_per_s']:.2f} | "
                         f"{r['peak_gib']:.2f} | {'yes' if r['finite'] else 'NO'} |")
    check = "16-mixed" if device == "cuda" else "bf16-mixed"
    rows = loss_numerics(device, check, side)
    bad = [r for r in rows if not r["finite"]]
    worst = max(rows, key=lambda r: r["rel_diff"])
    lines += ["", f"Loss numerics under {check}, {side}³ batch of 2, every registry loss ({len(rows) // 2} losses, "
              f"ordinary and confident logits): {len(rows) - len(bad)} of {len(rows)} finite (value and gradient); "
              f"largest difference to float32: {worst['rel_diff']:.2e} ({worst['loss']}, {worst['case']}).", "",
              "| loss | logits | value | float32 | rel. diff | finite |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['loss']} | {r['case']} | {r['value']:.6g} | {r['float32']:.6g} | {r['rel_diff']:.1e} | "
              f"{'yes' if r['finite'] else 'NO'} |" for r in rows]
    if not args.no_bench_train:
        for precision in precisions:
            extra = ["--steps", "3", "--warmup", "1", "debug=tiny"] if args.smoke else []
            proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_train.py"), *extra,
                                   f"trainer.precision={precision}"], capture_output=True, text=True)
            ratios = [line for line in proc.stdout.splitlines() if line.startswith(("ratio", "|", "data"))]
            lines += ["", f"`scripts/bench_train.py trainer.precision={precision}` (exit {proc.returncode}):", "",
                      *(ratios or [proc.stderr.strip()[-500:]])]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
