"""Forward + backward time of every registry loss, next to MONAI and to the one-pass floor.

    python scripts/bench_losses.py                      # logits (2, 2, 96, 96, 96), ~1% foreground
    python scripts/bench_losses.py --size 64 --repeats 5 --classes 3

Prints a markdown table: median milliseconds of ``loss(logits, target).backward()`` for our loss,
for MONAI's loss with matching settings on the same tensors (where MONAI has one), their ratio,
and our time over the floor: softmax + one-hot + one reduction (``(softmax(x) * onehot).sum()``),
forward and backward, the least any loss built on softmax probabilities can cost. Each round
times the floor, ours and MONAI's back to back for every loss, and the ratios are medians of these
paired per-round ratios, so bursts of load from other processes cancel out. By default the times
are this process's CPU time on one thread (``--threads 1 --clock cpu``), the steadiest measure on a
shared machine (``--threads 0 --clock wall`` for elapsed time on all cores).

Label maps (``boundary``'s signed distances, ``distance_weighted_ce``'s border weights) are
computed once before timing, as the data pipeline does per case; ``boundary`` runs with
``alpha=0.5`` so that its distance term is timed too.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import torch


# Settings that differ from the registry defaults (shown in the table).
VARIANTS = {"boundary": {"alpha": 0.5}}


def make_batch(batch: int, classes: int, size: int, dims: int, foreground: float, seed: int = 0):
    """Logits ~ N(0, 1) and a label map of spheres covering ~``foreground`` of the volume."""
    rng = np.random.default_rng(seed)
    shape = (size,) * dims
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
    labels = np.zeros((batch, 1, *shape), dtype=np.int64)
    spheres = 8
    radius = (foreground * size**dims / spheres / (4 / 3 * np.pi if dims == 3 else np.pi)) ** (1 / dims)
    for b in range(batch):
        for i in range(spheres):
            centre = rng.uniform(radius, size - radius, size=dims).reshape(dims, *([1] * dims))
            inside = ((grid - centre) ** 2).sum(0) <= radius**2
            labels[b, 0][inside] = 1 + i % max(classes - 1, 1)
    logits = torch.randn(batch, classes, *shape, generator=torch.Generator().manual_seed(seed))
    return logits, torch.from_numpy(labels)


def monai_losses(classes: int) -> dict:
    """MONAI losses with the settings of our defaults (see tests/test_losses.py for the exact equalities)."""
    from monai import losses as M

    act = {"sigmoid": True} if classes == 1 else {"softmax": True, "to_onehot_y": True}
    losses = {
        "dice": M.DiceLoss(include_background=False, smooth_nr=1.0, smooth_dr=1.0, **act),
        "iou": M.DiceLoss(include_background=False, jaccard=True, smooth_nr=2.0, smooth_dr=2.0, **act),
        "tversky": M.TverskyLoss(include_background=False, alpha=0.3, beta=0.7, smooth_nr=1.0, smooth_dr=1.0, **act),
        "generalized_dice": M.GeneralizedDiceLoss(include_background=True, **act),
        "focal": M.FocalLoss(
            include_background=True, gamma=2.0, alpha=0.25, use_softmax=classes > 1, to_onehot_y=classes > 1
        ),
        "dice_ce": M.DiceCELoss(include_background=False, smooth_nr=1.0, smooth_dr=1.0, **act),
    }
    if classes == 1:
        losses["dice_focal"] = M.DiceFocalLoss(gamma=2.0, smooth_nr=1.0, smooth_dr=1.0, sigmoid=True)
    else:
        # MONAI's DiceFocalLoss takes a sigmoid focal term per one-hot channel with C >= 2 (another
        # loss): the same loss as ours is its DiceLoss plus its softmax FocalLoss.
        dice, focal = losses["dice"], M.FocalLoss(include_background=True, gamma=2.0, use_softmax=True, to_onehot_y=True)
        losses["dice_focal"] = lambda x, t: dice(x, t) + classes * focal(x, t)
    return losses


def floor(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Softmax + one-hot + one reduction (sigmoid + one reduction for one channel)."""
    if logits.shape[1] == 1:
        return (torch.sigmoid(logits.float()) * target).sum()
    p = torch.softmax(logits.float(), dim=1)
    g = torch.zeros_like(p).scatter_(1, target, 1.0)
    return (p * g).sum()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=96, help="side of the cubic (or square) volume")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--classes", type=int, default=2, help="logit channels C (1 = sigmoid)")
    parser.add_argument("--dims", type=int, default=3, choices=(2, 3))
    parser.add_argument("--foreground", type=float, default=0.01, help="fraction of foreground voxels")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds (after one warm-up round)")
    parser.add_argument("--losses", default="", help="comma-separated subset of the registry")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default); 1 is steadiest on a shared machine")
    parser.add_argument(
        "--clock", choices=("cpu", "wall"), default="cpu",
        help="cpu: this process's CPU time (immune to other processes on a shared machine; use with --threads 1); wall: elapsed time",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from segtrain.losses import available_losses, build_loss

    logits, target = make_batch(args.batch, args.classes, args.size, args.dims, args.foreground)
    names = [n for n in args.losses.split(",") if n] or available_losses()
    ours, maps = {}, {}
    for name in names:
        loss = build_loss(name, **VARIANTS.get(name, {}))
        ours[name] = loss
        maps[name] = {  # as the data pipeline computes them: with the dataset's class count
            key: torch.from_numpy(np.stack([fn(t, num_classes=max(args.classes, 2)) for t in target.numpy()]))
            for key, fn in loss.label_maps.items()
        }
    theirs = {k: v for k, v in monai_losses(args.classes).items() if k in ours}

    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    def run(fn) -> float:
        x = logits.clone().requires_grad_(True)
        start = clock()
        fn(x).backward()
        return clock() - start

    def floor_fn(x):
        return floor(x, target)

    # Paired timing: every round times, for each loss, the floor, ours and MONAI's back to back (in
    # alternating order), and the ratios are taken within the round. The medians of these paired
    # ratios hold steady when other processes load the machine in bursts.
    times: dict = {}
    ratios: dict = {}
    for round_ in range(args.repeats + 1):
        for name, loss in ours.items():
            group = {"floor": floor_fn, "ours": lambda x, loss=loss, name=name: loss(x, target, **maps[name])}
            if name in theirs:
                group["monai"] = lambda x, loss=theirs[name]: loss(x, target)
            order = list(group) if round_ % 2 else list(group)[::-1]
            elapsed = {kind: run(group[kind]) for kind in order}
            if not round_:
                continue  # warm-up
            for kind, value in elapsed.items():
                times.setdefault((kind, name), []).append(value)
            ratios.setdefault(("floor", name), []).append(elapsed["ours"] / elapsed["floor"])
            if "monai" in elapsed:
                ratios.setdefault(("monai", name), []).append(elapsed["ours"] / elapsed["monai"])
    median_time = {key: 1000 * statistics.median(v) for key, v in times.items()}
    median_ratio = {key: statistics.median(v) for key, v in ratios.items()}
    floor_ms = 1000 * statistics.median([t for (kind, _), v in times.items() if kind == "floor" for t in v])

    shape = (args.batch, args.classes, *([args.size] * args.dims))
    print(
        f"logits {shape} float32, {100 * float((target > 0).float().mean()):.2f}% foreground; "
        f"medians over {args.repeats} rounds of forward+backward ({args.clock} time); ratios are medians of "
        f"per-round paired ratios; torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
        f"{platform.processor() or platform.machine()}"
    )
    print(f"floor (softmax + one-hot + one reduction): {floor_ms:.1f} ms\n")
    print("| loss | ours ms | MONAI ms | ratio | ratio to floor |")
    print("|---|---:|---:|---:|---:|")
    for name in names:
        other = median_time.get(("monai", name))
        cells = [
            f"{median_time[('ours', name)]:.1f}",
            f"{other:.1f}" if other else "—",
            f"{median_ratio[('monai', name)]:.2f}" if other else "—",
            f"{median_ratio[('floor', name)]:.2f}",
        ]
        variant = ", ".join(f"{k}={v}" for k, v in VARIANTS.get(name, {}).items())
        print(f"| {name}{f' ({variant})' if variant else ''} | " + " | ".join(cells) + " |")

if __name__ == "__main__":
    main()
