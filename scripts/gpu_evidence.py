"""GPU evidence in one command (docs/benchmarks.md#gpu): every figure the GPU issue asks for, as markdown.

1. ``precision``: training steps per second and peak memory for 32-true, 16-mixed and bf16-mixed on the
   default U-Net (48³ and 128³ patches, batch 2) and on the planned ``model=dynunet`` (nnU-Net's network,
   planned for the realistic set of part 5), with segtrain's dice_ce and AdamW.
2. ``numerics``: every registry loss on a 128³ batch of half-precision logits (ordinary and confident):
   value and gradient finite, and the value against float32 arithmetic.
3. ``guard``: ``scripts/bench_train.py`` under bf16: segtrain's Lightning step against a bare loop, and the
   non-finite guard's cost (its flag is read at the logging interval, not every step).
4. ``default``: the default run (``segtrain trainer=gpu`` on a GPU), its wall time and where it went.
5. ``data``: a realistic-size 3D set, generated here (20 volumes of 320×320×60 voxels at 0.7×0.7×3 mm with
   small objects), planned and trained with ``augment=nnunet`` and ``model=dynunet`` by ``bench_train.py``:
   the share of step time the GPU waits for data, and the data workers' throughput without a model.

    python scripts/gpu_evidence.py --out gpu_evidence.md        # on a GPU (one H200: about 3 minutes)
    python scripts/gpu_evidence.py --parts numerics,data        # some parts (on a CPU: those that need no CUDA)
    python scripts/gpu_evidence.py --smoke                      # tiny sizes, any machine (what the tests run)
"""

from __future__ import annotations

import argparse
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from bench_speed import autocast_dtype, build, timed_step  # noqa: E402 - scripts/bench_speed.py

PRECISIONS = ("32-true", "16-mixed", "bf16-mixed")
PARTS = ("precision", "numerics", "guard", "default", "data")
REALISTIC = {"num_cases": 20, "shape": (320, 320, 60), "spacing": (0.7, 0.7, 3.0)}
SMOKE_SET = {"num_cases": 4, "shape": (48, 48, 12), "spacing": (0.7, 0.7, 3.0)}


# -- 5's data, also the plan of 1's dynunet --------------------------------------------------------------
def write_realistic_set(root: Path, num_cases: int, shape, spacing, seed: int = 0) -> Path:
    """nnU-Net v2 raw layout: CT-like int16 volumes (soft tissue around 40 HU with noise and a smooth bias), each
    with 1-4 small bright ellipsoids (about 3-10 mm across, a few slices thick) labelled 1; every 5th case empty."""
    import json

    import nibabel as nib

    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    grid = np.ogrid[tuple(slice(0, s) for s in shape)]
    affine = np.diag([*spacing, 1.0])
    for case in range(num_cases):
        image = rng.normal(40.0, 25.0, shape).astype(np.float32)
        image += (15.0 * np.sin(grid[0] / shape[0] * np.pi) * np.cos(grid[1] / shape[1] * np.pi)).astype(np.float32)
        label = np.zeros(shape, np.uint8)
        for _ in range(0 if case % 5 == 4 else int(rng.integers(1, 5))):
            centre = [rng.integers(s // 6, s - s // 6) for s in shape]
            radii = [rng.uniform(1.5, 5.0) / sp for sp in spacing]  # mm → voxels
            inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0
            label[inside] = 1
            image[inside] += 60.0
        name = f"case_{case:03d}"
        nib.save(nib.Nifti1Image(np.round(image).astype(np.int16), affine), root / "imagesTr" / f"{name}_0000.nii")
        nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / f"{name}.nii")
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "mri"}, "labels": {"background": 0, "lesion": 1},
                                                   "numTraining": num_cases, "file_ending": ".nii"}))
    return root


def planned_spec(dataset: dict):
    """The ``DataSpec`` segtrain plans for a set of ``dataset``'s shape and spacing (nnU-Net's rules, 8 GB)."""
    from segtrain.data.plan import make_plan
    from segtrain.data.spec import DataSpec

    shapes, spacings = [dataset["shape"]] * dataset["num_cases"], [dataset["spacing"]] * dataset["num_cases"]
    plan = make_plan(shapes, spacings, ["mri"], 2, int(0.8 * dataset["num_cases"]))
    return DataSpec(3, 1, 2, ["background", "lesion"], ["mri"], tuple(plan.patch_size), spacing=plan.spacing,
                    strides=plan.strides, kernel_sizes=plan.kernel_sizes), plan.batch_size


# -- 1 ---------------------------------------------------------------------------------------------------
def train_steps(net, device: str, precision: str, shape, steps: int, warmup: int) -> dict:
    """Median seconds per step, steps/s and peak memory of ``net`` with dice_ce and AdamW on random batches
    (deep supervision's extra outputs included, as in training)."""
    from segtrain.losses import build_loss
    from segtrain.losses.deep_supervision import DeepSupervisionLoss

    loss_fn = DeepSupervisionLoss(build_loss("dice_ce"))
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    dtype = autocast_dtype(precision)
    scaler = torch.amp.GradScaler(device, enabled=dtype is torch.float16)
    image = torch.randn(*shape, device=device)
    label = (torch.rand(*shape, device=device) > 0.995).long()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    results = [timed_step(net, loss_fn, optimizer, scaler, image, label, dtype) for _ in range(warmup + steps)]
    seconds = statistics.median(t for t, _ in results[warmup:])
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else math.nan
    return {"s": seconds, "steps_per_s": 1 / seconds, "peak": peak, "finite": all(math.isfinite(v) for _, v in results)}


def part_precision(device: str, precisions, smoke: bool, steps: int) -> list[str]:
    from omegaconf import OmegaConf

    from segtrain.models import build_model

    dataset = SMOKE_SET if smoke else REALISTIC
    spec, batch = planned_spec(dataset)
    dynunet = OmegaConf.load(ROOT / "configs" / "model" / "dynunet.yaml")
    networks = [("U-Net (default)", lambda: build(3, device=device), [(16, 2)] if smoke else [(48, 2), (128, 2)])]
    networks.append((f"dynunet (planned: {len(spec.strides)} stages)", lambda: build_model(dynunet, spec).to(device),
                     [(tuple(spec.patch_size), batch)]))
    lines = ["| network | patch | batch | precision | s/step | steps/s | peak GiB | finite |", "|---|---|---|---|---|---|---|---|"]
    ratios = []
    for name, make, shapes in networks:
        for patch, size in shapes:
            sides = patch if isinstance(patch, tuple) else (patch,) * 3
            speed = {}
            for precision in precisions:
                torch.manual_seed(0)
                r = train_steps(make(), device, precision, (size, 1, *sides), 2 if smoke else steps, 1 if smoke else 3)
                speed[precision] = r["steps_per_s"]
                lines.append(f"| {name} | {'×'.join(map(str, sides))} | {size} | {precision} | {r['s']:.4f} | "
                             f"{r['steps_per_s']:.1f} | {r['peak']:.2f} | {'yes' if r['finite'] else 'NO'} |")
            if "bf16-mixed" in speed:
                ratios.append(f"{name} {'×'.join(map(str, sides))}: bf16 / fp32 steps/s = "
                              f"{speed['bf16-mixed'] / speed['32-true']:.2f}")
    return lines + [""] + [f"- {r}" for r in ratios]


# -- 2 ---------------------------------------------------------------------------------------------------
def part_numerics(device: str, precision: str, side: int) -> tuple[list[str], bool]:
    from segtrain.losses import available_losses, build_loss

    generator = torch.Generator().manual_seed(0)
    grid = torch.stack(torch.meshgrid(*[torch.arange(side, dtype=torch.float32)] * 3, indexing="ij"))
    label = torch.zeros(2, 1, side, side, side, dtype=torch.long)
    for sample in range(2):  # a few small lesions (2-6 voxels across), as the losses meet them
        for _ in range(4):
            centre = torch.randint(side // 8, side - side // 8, (3, 1, 1, 1), generator=generator).float()
            radius = 1.0 + float(torch.rand((), generator=generator)) * side / 32
            label[sample, 0][((grid - centre) ** 2).sum(0) <= radius**2] = 1
    label = label.to(device)
    base = torch.randn(2, 2, side, side, side, generator=generator).to(device)
    dtype = autocast_dtype(precision) or torch.float32
    rows = []
    for name in available_losses():
        loss = build_loss(name, **({"alpha": 0.5} if name == "boundary" else {}))
        for case, scale in (("ordinary", 3.0), ("confident", 60.0)):
            start = time.perf_counter()
            logits = (base * scale).to(dtype).requires_grad_(True)  # what a network under autocast hands the loss
            with torch.autocast(device, dtype=dtype, enabled=dtype is not torch.float32):
                value = loss(logits, label)
            (grad,) = torch.autograd.grad(value, logits)
            reference = float(loss((base * scale).to(dtype).float(), label))
            finite = bool(torch.isfinite(value) and torch.isfinite(grad).all())
            rows.append({"loss": name, "case": case, "value": float(value), "float32": reference, "finite": finite,
                         "rel": abs(float(value) - reference) / max(abs(reference), 1e-6), "s": time.perf_counter() - start})
    bad = [r for r in rows if not r["finite"]]
    worst = max(rows, key=lambda r: r["rel"])
    slowest = max(rows, key=lambda r: r["s"])
    lines = [f"Every registry loss under {precision}, {side}³ batch of 2, ordinary and confident logits: "
             f"{len(rows) - len(bad)} of {len(rows)} finite (value and gradient); largest difference to float32 "
             f"{worst['rel']:.2e} ({worst['loss']}, {worst['case']}); slowest call {slowest['s']:.2f} s ({slowest['loss']}, "
             "label maps computed on the device).", "", "| loss | logits | value | float32 | rel. diff | s | finite |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['loss']} | {r['case']} | {r['value']:.6g} | {r['float32']:.6g} | {r['rel']:.1e} | {r['s']:.3f} | "
              f"{'yes' if r['finite'] else 'NO'} |" for r in rows]
    return lines, not bad


# -- 3, 4, 5: real command lines --------------------------------------------------------------------------
def run(command: list[str], timeout: int, env: dict | None = None) -> tuple[int, str, float]:
    start = time.perf_counter()
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
        return proc.returncode, proc.stdout + proc.stderr, time.perf_counter() - start
    except subprocess.TimeoutExpired as err:
        out = (err.stdout or b"").decode() if isinstance(err.stdout, bytes) else err.stdout or ""
        return 124, out + f"\n(stopped after {timeout} s)", time.perf_counter() - start


def bench_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(("device:", "|", "ratio", "data ("))]


def part_guard(smoke: bool, precision: str, steps: int) -> list[str]:
    extra = ["--steps", "3", "--warmup", "1", "debug=tiny"] if smoke else ["--steps", str(steps)]
    code, out, seconds = run([sys.executable, str(ROOT / "scripts" / "bench_train.py"), *extra,
                              f"trainer.precision={precision}"], 600)
    return [f"`scripts/bench_train.py {' '.join(extra)} trainer.precision={precision}` (exit {code}, {seconds:.0f} s):", "",
            *(bench_lines(out) or [out.strip()[-800:]])]


def part_default(device: str, smoke: bool, log_dir: Path) -> list[str]:
    args = ["debug=tiny"] if smoke else (["trainer=gpu"] if device == "cuda" else [])
    code, out, seconds = run([sys.executable, "-m", "segtrain.cli", *args], 900, env={"SEGTRAIN_LOG_DIR": str(log_dir)})
    keep = [line.strip() for line in out.splitlines() if re.match(r"\s*(segtrain: finished|best val/dice|time:)", line)]
    return [f"`segtrain {' '.join(args)}` (exit {code}, {seconds:.1f} s with the interpreter's start):", "",
            *(f"    {line}" for line in keep or [out.strip()[-800:]])]


def loader_throughput(overrides: list[str], batches: int) -> list[str]:
    """Batches per second the training loader delivers, no model: its workers reading, cutting and drawing the
    parameters (as when a GPU augments), and also augmenting (as when training on a CPU)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers.cli import compose

    from segtrain.augment import build_augmentation
    from segtrain.data import build_datamodule

    cfg = compose(overrides)
    data = build_datamodule(cfg.data, augmentation=build_augmentation(cfg.get("augment")), seed=0)
    data.use_device("cuda" if torch.cuda.is_available() else "cpu")
    data.setup("fit")
    lines = []
    for where in ("cuda", "cpu"):  # who augments: the training device after the transfer, or the workers
        data.augment_device = where
        loader = iter(data.train_dataloader())
        next(loader)  # the workers' start
        start = time.perf_counter()
        for _ in range(batches):
            try:
                next(loader)
            except StopIteration:
                loader = iter(data.train_dataloader())
                next(loader)
        rate = batches / (time.perf_counter() - start)
        what = "cut only (a GPU augments)" if where == "cuda" else "cut and augmented in the workers (a CPU trains)"
        lines.append(f"loader alone, {what}: {data.num_workers} worker(s), batch {data.batch_size}, patch "
                     f"{list(data.spec.patch_size)}: {rate:.1f} batches/s")
    return lines


def part_data(smoke: bool, precision: str, steps: int, work: Path, device: str) -> list[str]:
    dataset = SMOKE_SET if smoke else REALISTIC
    start = time.perf_counter()
    root = write_realistic_set(work / "realistic", **dataset)
    written = time.perf_counter() - start
    overrides = ["data=nifti", f"data.root={root}", "augment=nnunet", "model=dynunet", f"data.cache_dir={work / 'cache'}"]
    if smoke:
        overrides += ["data.patch_size=[32,32,8]", "data.batch_size=2", "model.filters=[4,8,16,32]"]
    lines = [f"{dataset['num_cases']} volumes of {'×'.join(map(str, dataset['shape']))} voxels at "
             f"{'×'.join(map(str, dataset['spacing']))} mm written in {written:.1f} s.", ""]
    extra = ["--steps", "3", "--warmup", "1"] if smoke else ["--steps", str(steps)]
    if device == "cuda" or smoke:
        code, out, seconds = run([sys.executable, str(ROOT / "scripts" / "bench_train.py"), *extra, *overrides,
                                  f"trainer.precision={precision}"], 900)
        lines += [f"`scripts/bench_train.py {' '.join(extra)} data=nifti data.root=<set> augment=nnunet model=dynunet "
                  f"trainer.precision={precision}` (exit {code}, {seconds:.0f} s):", "", *(bench_lines(out) or [out.strip()[-800:]])]
    else:
        lines.append("(no GPU: the training steps of the planned dynunet at this patch take tens of seconds on a CPU, "
                     "so only the loader is measured)")
    lines += ["", *loader_throughput(overrides, 4 if smoke else 40)]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and few steps (any machine)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown here")
    args = parser.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    warnings.filterwarnings("ignore")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU (no GPU), {torch.get_num_threads()} threads"
    precisions = PRECISIONS if device == "cuda" else ("32-true", "bf16-mixed")  # fp16 autocast is a GPU mode
    mixed = "bf16-mixed"
    lines = [f"Device: **{name}**, torch {torch.__version__}{' (smoke sizes)' if args.smoke else ''}"]
    ok = True
    started = time.perf_counter()
    print(lines[0], flush=True)
    with tempfile.TemporaryDirectory(prefix="gpu-evidence-") as work:
        for part in parts:
            begun = time.perf_counter()
            shown = len(lines)
            lines += ["", f"### {part}", ""]
            if part == "precision":
                lines += part_precision(device, precisions, args.smoke, args.steps)
            elif part == "numerics":
                body, finite = part_numerics(device, "16-mixed" if device == "cuda" else mixed, 16 if args.smoke else 128)
                lines += body
                ok &= finite
            elif part == "guard":
                lines += part_guard(args.smoke, mixed if device == "cuda" else "32-true", args.steps * 2)
            elif part == "default":
                lines += part_default(device, args.smoke, Path(work) / "runs")
            elif part == "data":
                lines += part_data(args.smoke, mixed if device == "cuda" else "32-true", args.steps, Path(work), device)
            lines.append(f"\n({part}: {time.perf_counter() - begun:.0f} s)")
            print("\n".join(lines[shown:]), flush=True)  # each part as it is done
    lines.append(f"\nAll parts: {time.perf_counter() - started:.0f} s.")
    print(lines[-1])
    text = "\n".join(lines)
    if args.out:
        args.out.write_text(text + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
