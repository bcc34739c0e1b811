"""A small loss benchmark on generated data, end to end: sweep, test-set scoring, grouped statistics.

For each dataset, one ``segtrain -m hparams_search=loss_benchmark`` sweep (losses × seeds, each run
scored on the held-out test set after training), then ``segtrain-compare --group-by loss
--baseline BASELINE --out OUT/<dataset>`` (tables, box plots, curves). Every command is printed and
saved in ``OUT/commands.txt``, with the wall time of each sweep.

Datasets (generated once into the cache, read back through the NIfTI/PNG path like users' data):

- ``tiny3d``: 1-2 spheres of radius 2-4 voxels in noise (0.45% of a 32³ volume measured, so about 0.06%
  at the default 64³);
- ``mixed3d``: 3-8 spheres of radius 2-12 voxels (tiny next to large objects; a few % at 64³);
- ``synthetic2d``: the built-in 2D set (small discs, 0.5-1%).

    python scripts/loss_benchmark.py --out benchmark                      # defaults: see --help
    python scripts/loss_benchmark.py --losses dice_ce,ce --seeds 0 --epochs 4 --out /tmp/b   # a smoke run

The sizes and lengths are for a 2-core CPU; on GPU nodes raise ``--epochs``, ``--cases`` and
``--shape`` (and ``--extra trainer=gpu``).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_LOSSES = "ce,wce,focal,dice,dice_ce,dice_focal,generalized_dice,tversky,focal_tversky,combo"


def dataset_overrides(name: str, cases: int, shape: int, epochs: int) -> list[str]:
    if name == "synthetic2d":
        return ["data=synthetic2d", f"data.synthetic.num_cases={cases}", f"data.max_epochs={epochs}",
                "data.patches_per_epoch=64"]
    objects, radius = {"tiny3d": ("[1,2]", "[2,4]"), "mixed3d": ("[3,8]", "[2,12]")}[name]
    patch = min(32, shape)
    return ["data=synthetic3d", f"data.synthetic.num_cases={cases}", f"data.synthetic.shape=[{shape},{shape},{shape}]",
            f"data.synthetic.num_objects={objects}", f"data.synthetic.radius={radius}",
            f"data.patch_size=[{patch},{patch},{patch}]", "data.batch_size=2", "data.patches_per_epoch=24",
            f"data.max_epochs={epochs}", "model.channels=[8,16,32,64]"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmark", help="folder of the sweeps and the grouped results")
    parser.add_argument("--losses", default=DEFAULT_LOSSES, help="comma-separated registry losses")
    parser.add_argument("--seeds", default="0,1", help="comma-separated seeds")
    parser.add_argument("--datasets", default="tiny3d,mixed3d,synthetic2d")
    parser.add_argument("--baseline", default="dice_ce")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--cases", type=int, default=20, help="generated cases per dataset (20%% held out as test)")
    parser.add_argument("--shape", type=int, default=64, help="side of the generated 3D volumes")
    parser.add_argument("--extra", default="", help="more segtrain overrides, e.g. 'trainer=gpu'")
    args = parser.parse_args(argv)
    bin_dir = Path(sys.executable).parent
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    log = []
    started = time.perf_counter()
    for name in args.datasets.split(","):
        sweep = out / name / "runs"
        train = [str(bin_dir / "segtrain"), "-m", "hparams_search=loss_benchmark", f"loss={args.losses}",
                 f"seed={args.seeds}", *dataset_overrides(name, args.cases, args.shape, args.epochs),
                 "trainer.enable_progress_bar=false", *shlex.split(args.extra), f"hydra.sweep.dir={sweep}"]
        compare = [str(bin_dir / "segtrain-compare"), str(sweep), "--group-by", "loss", "--out", str(out / name)]
        if args.baseline in args.losses.split(","):
            compare += ["--baseline", args.baseline]
        for command in (train, compare):
            line = shlex.join(command)
            print(f"$ {line}", flush=True)
            begin = time.perf_counter()
            result = subprocess.run(command, capture_output=command is train, text=True)
            seconds = time.perf_counter() - begin
            log.append(f"{line}\n# exit {result.returncode}, {seconds:.0f} s")
            if result.returncode:
                print((result.stderr or "")[-3000:], file=sys.stderr)
                sys.exit(result.returncode)
            print(f"# {seconds:.0f} s", flush=True)
    (out / "commands.txt").write_text("\n".join(log) + f"\n# total {time.perf_counter() - started:.0f} s\n")
    print(f"total {time.perf_counter() - started:.0f} s; results in {out}/<dataset>/grouped.md")


if __name__ == "__main__":
    main()
