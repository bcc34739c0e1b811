"""segtrain's plan beside nnU-Net v2's for datasets planned by both (the table in docs/data.md).

    python scripts/compare_plans.py NNUNET_PLANS.json RAW_DIR
NNUNET_PLANS.json: per dataset folder name, nnU-Net's ``3d_fullres`` / ``2d`` plan (spacing, patch_size, batch_size,
normalization_schemes, strides, kernel_sizes) and its fingerprint (``spacings``, ``shapes_after_crop``), as
written from ``nnUNetv2_plan_experiment``'s nnUNetPlans.json. RAW_DIR: the nnU-Net raw folders. segtrain's plan is
made from segtrain's own preflight of each folder (3D) or from nnU-Net's fingerprint (2D PNG sets).
nnU-Net lists axes as SimpleITK does (z, y, x), then coarse-first; segtrain's are in RAS order (x, y, z): they are
printed reversed, so both read (z, y, x) for these datasets.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _ours_3d(root: Path):
    from segtrain.data import DataOptions
    from segtrain.data.datamodule import plan_dataset
    from segtrain.data.layouts import list_cases
    from segtrain.data.preflight import run_preflight

    listing = list_cases(root)
    report = run_preflight(listing, 3, len(listing.class_names) if listing.class_names else None)
    from helpers.cli import compose  # tests/helpers/cli.py: the shipped configs with Hydra's compose API

    options = DataOptions.from_config(compose(["data=nifti", f"data.root={root}"]).data)
    return plan_dataset(options, report, 3)


def _ours_2d(fingerprint: dict, classes: int):
    from segtrain.data.plan import make_plan

    shapes = [s[1:] for s in fingerprint["shapes_after_crop"]]
    return make_plan(shapes, [[1.0, 1.0]] * len(shapes), ["gray"], classes, len(shapes))




def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    plans, raw = json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2])
    print("| dataset | planner | spacing (mm) | patch | batch | normalize | first strides | first kernels |")
    print("|---|---|---|---|---|---|---|---|")
    for name, entry in plans.items():
        if not isinstance(entry, dict) or "configurations" not in entry:
            continue
        configs = entry["configurations"]
        key = "3d_fullres" if "3d_fullres" in configs else "2d"
        theirs = configs[key]
        if key == "3d_fullres":
            ours = _ours_3d(raw / name)
        else:
            ours = _ours_2d(entry["fingerprint"], len(json.loads((raw / name / "dataset.json").read_text())["labels"]))
        rev = lambda values: [list(v)[::-1] for v in values]  # noqa: E731
        spacing = ours.spacing or [1.0] * len(ours.patch_size)
        print(f"| {name} ({key}) | nnU-Net v2 | {[round(s, 3) for s in theirs['spacing']]} | {theirs['patch_size']} | "
              f"{theirs['batch_size']} | {theirs['normalization_schemes']} | {theirs['strides'][1:3]} | {theirs['kernel_sizes'][:2]} |")
        print(f"| | segtrain | {[round(s, 3) for s in spacing[::-1]]} | {ours.patch_size[::-1]} | {ours.batch_size} | "
              f"{ours.normalize} | {rev(ours.strides[1:3])} | {rev(ours.kernel_sizes[:2])} |")


if __name__ == "__main__":
    main()
