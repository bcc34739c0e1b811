"""segtrain's defaults beside nnU-Net v2's, at the same budget, on the same split, scored by the same code.

For each dataset: write it in nnU-Net v2's raw layout (and segtrain's 2D layout where it differs), take
nnU-Net's own fold-0 split (``splits_final.json``, the cases of its 5-fold cross-validation), train
nnU-Net (``nnUNetv2_train``, its planned configuration) and segtrain (its defaults: ``data=images2d`` /
``data=nifti``, planned like nnU-Net) for the same number of iterations, predict the fold's held-out
cases with mirroring (nnU-Net's own validation; ``segtrain-predict tta=true``, final weights for both),
and score both folders with ``segtrain-evaluate``'s code. Writes a per-case Dice table (markdown, and
into docs/benchmarks.md between its ``compare_nnunet`` markers with ``--docs``).

Datasets (real labelled data shipped in packages, and segtrain's generated sets):
  chest2d      slicerio's chest CT (7 classes), its 34 axial slices as 2D images (CT windowed to 8 bits)
  synthetic2d  segtrain's 2D preset (40 images of discs in noise)
  synthetic3d  segtrain's 3D preset (32 volumes of spheres in noise)

nnU-Net goes in a scratch virtual environment, never in segtrain's ``.venv``:

    python3 -m venv /tmp/nnunet-venv && /tmp/nnunet-venv/bin/pip install torch nnunetv2
    python scripts/compare_nnunet.py --nnunet /tmp/nnunet-venv --datasets chest2d --iterations 1250 --runs 3

The script adds one trainer to that environment's nnU-Net (``nnUNetTrainer_SegtrainBudget``: nnU-Net's
own trainer with the number of epochs and iterations per epoch set from the environment); nothing else
of nnU-Net is changed. nnU-Net is not seeded by its trainer: its repeated runs differ by chance, segtrain's
by ``seed``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DATASETS = {"chest2d": (501, "2d"), "synthetic2d": (502, "2d"), "synthetic3d": (503, "3d_fullres")}
MARKERS = ("<!-- compare_nnunet:start -->", "<!-- compare_nnunet:end -->")
# Runs another checkout of segtrain (an earlier pipeline, for the ablation): its CLI, with the split file's fold
# as its train/validation split (a checkout older than data.split_file splits by itself otherwise).
LAUNCHER = """
import json, sys
checkout, split_file = sys.argv[1], sys.argv[2]
sys.path.insert(0, checkout)
sys.argv = ["segtrain", *sys.argv[3:]]
import segtrain.data.datamodule as datamodule
if not hasattr(datamodule, "DataOptions"):
    fold = json.load(open(split_file))[0]
    datamodule.split_cases = lambda ids, cfg: (sorted(fold["train"]), sorted(fold["val"]))
from segtrain.cli import main
main()
"""
TRAINER = '''"""Written by segtrain's scripts/compare_nnunet.py: nnU-Net's trainer with the budget set from the environment."""
import os

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainer_SegtrainBudget(nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = int(os.environ["SEGTRAIN_BUDGET_EPOCHS"])
        self.num_iterations_per_epoch = int(os.environ["SEGTRAIN_BUDGET_ITERATIONS"])
        self.num_val_iterations_per_epoch = int(os.environ.get("SEGTRAIN_BUDGET_VAL_ITERATIONS", "5"))
'''


# -- datasets ---------------------------------------------------------------------------------------------
def _save_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(array).astype(np.uint8)).save(path)


def write_chest2d(raw: Path, images2d: Path) -> tuple[list[str], dict[str, int]]:
    """slicerio's chest CT: every axial slice a 2D case (128×128, CT windowed [-1000, 1000] HU to 0-255)."""
    import nrrd
    import slicerio

    ct, _ = nrrd.read(slicerio.get_testdata_file("CTChest4.nrrd"), index_order="F")
    segmentation = slicerio.read_segmentation(slicerio.get_testdata_file("Segmentation.seg.nrrd"))
    label = np.asarray(segmentation["voxels"])
    names = {int(s["labelValue"]): s["name"] for s in segmentation["segments"]}
    window = np.clip((ct.astype(np.float32) + 1000.0) / 2000.0 * 255.0, 0, 255).round()
    cases = []
    for k in range(ct.shape[2]):
        case = f"chest_{k:03d}"
        for folder, image_name in ((raw / "imagesTr", f"{case}_0000.png"), (images2d / "images", f"{case}.png")):
            _save_png(folder / image_name, window[:, :, k])
        for folder in (raw / "labelsTr", images2d / "labels"):
            _save_png(folder / f"{case}.png", label[:, :, k])
        cases.append(case)
    labels = {"background": 0, **{names[v]: v for v in sorted(names)}}
    return cases, labels


def write_synthetic(kind: str, raw: Path, images2d: Path, cache: Path) -> tuple[list[str], dict[str, int]]:
    """segtrain's preset (configs/data/<kind>.yaml), copied into nnU-Net's layout (and segtrain's 2D layout)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers.cli import compose
    from omegaconf import OmegaConf

    from segtrain.data.synthetic import ensure_synthetic

    params = OmegaConf.to_container(compose([f"data={kind}"]).data.synthetic, resolve=True)
    source = ensure_synthetic(cache, params)
    cases = []
    if kind == "synthetic2d":
        for image in sorted((source / "images").glob("*.png")):
            case = image.stem
            shutil.copy(image, (raw / "imagesTr").mkdir(parents=True, exist_ok=True) or raw / "imagesTr" / f"{case}_0000.png")
            shutil.copy(source / "labels" / image.name, (raw / "labelsTr").mkdir(parents=True, exist_ok=True)
                        or raw / "labelsTr" / f"{case}.png")
            cases.append(case)
        shutil.copytree(source, images2d, dirs_exist_ok=True)
        return cases, {"background": 0, "disc": 1}
    for image in sorted((source / "imagesTr").glob("*.nii.gz")):
        case = image.name[: -len(".nii.gz")]
        (raw / "imagesTr").mkdir(parents=True, exist_ok=True)
        (raw / "labelsTr").mkdir(parents=True, exist_ok=True)
        shutil.copy(image, raw / "imagesTr" / f"{case}_0000.nii.gz")
        shutil.copy(source / "labelsTr" / image.name, raw / "labelsTr" / f"{case}.nii.gz")
        cases.append(case)
    return cases, {"background": 0, "sphere": 1}


def prepare_dataset(name: str, work: Path) -> dict:
    """Write ``name`` into ``work``; returns its folders, cases, fold-0 split and nnU-Net id."""
    from segtrain.data.split import nnunet_folds

    dataset_id, configuration = DATASETS[name]
    raw_root = work / "nnUNet_raw"
    raw = raw_root / f"Dataset{dataset_id}_{name}"
    images2d = work / "segtrain_layout" / name
    shutil.rmtree(raw, ignore_errors=True)
    shutil.rmtree(images2d, ignore_errors=True)
    if name == "chest2d":
        cases, labels = write_chest2d(raw, images2d)
        channel = "CT"
    else:
        cases, labels = write_synthetic(name, raw, images2d, work / "cache")
        channel = "synthetic"
    ending = ".nii.gz" if configuration == "3d_fullres" else ".png"
    (raw / "dataset.json").write_text(json.dumps({"channel_names": {"0": channel}, "labels": labels,
                                                  "numTraining": len(cases), "file_ending": ending}, indent=2))
    if configuration == "2d":
        (images2d / "dataset.json").write_text(json.dumps({"labels": {str(v): k for k, v in labels.items()}}))
    val = nnunet_folds(cases, 5)[0]
    split = [{"train": sorted(c for c in cases if c not in val), "val": val}]
    (work / f"{name}_splits_final.json").write_text(json.dumps(split, indent=2))
    return {"name": name, "id": dataset_id, "configuration": configuration, "raw_root": raw_root, "raw": raw,
            "segtrain_root": raw if configuration == "3d_fullres" else images2d, "cases": cases, "val": val,
            "split": work / f"{name}_splits_final.json", "ending": ending}


# -- nnU-Net ----------------------------------------------------------------------------------------------
def nnunet_env(work: Path, nnunet: Path, epochs: int, iterations: int, threads: int) -> dict:
    return {**os.environ, "nnUNet_raw": str(work / "nnUNet_raw"), "nnUNet_preprocessed": str(work / "nnUNet_preprocessed"),
            "nnUNet_results": str(work / "nnUNet_results"), "nnUNet_n_proc_DA": "1", "nnUNet_compile": "false",
            "OMP_NUM_THREADS": str(threads), "PATH": f"{nnunet / 'bin'}:{os.environ.get('PATH', '')}",
            "SEGTRAIN_BUDGET_EPOCHS": str(epochs), "SEGTRAIN_BUDGET_ITERATIONS": str(iterations)}


def install_trainer(nnunet: Path) -> None:
    """The one file this script adds to the scratch environment's nnU-Net (see the module docstring)."""
    probe = subprocess.run([str(nnunet / "bin" / "python"), "-c", "import nnunetv2, os; print(os.path.dirname(nnunetv2.__file__))"],
                           capture_output=True, text=True, check=True)
    target = Path(probe.stdout.strip()) / "training" / "nnUNetTrainer" / "variants" / "segtrain_budget.py"
    if not target.is_file() or target.read_text() != TRAINER:
        target.write_text(TRAINER)


def run(command: list[str], env: dict, log: Path, timeout: int) -> float:
    start = time.perf_counter()
    with log.open("a") as handle:
        handle.write(f"\n$ {' '.join(map(str, command))}\n")
        handle.flush()
        proc = subprocess.run([str(c) for c in command], env=env, stdout=handle, stderr=subprocess.STDOUT, timeout=timeout)
    if proc.returncode:
        raise RuntimeError(f"{command[0]} exited {proc.returncode}; see {log}")
    return time.perf_counter() - start


def train_nnunet(dataset: dict, work: Path, nnunet: Path, epochs: int, iterations: int, threads: int, index: int) -> dict:
    env = nnunet_env(work, nnunet, epochs, iterations, threads)
    log = work / f"{dataset['name']}_nnunet.log"
    configuration, dataset_id = dataset["configuration"], str(dataset["id"])
    preprocessed = work / "nnUNet_preprocessed" / dataset["raw"].name
    if not (preprocessed / "nnUNetPlans.json").is_file():
        run(["nnUNetv2_plan_and_preprocess", "-d", dataset_id, "-c", configuration, "-np", "1", "-npfp", "1"], env, log, 3600)
    shutil.copy(dataset["split"], preprocessed / "splits_final.json")  # the fold both tools train on
    results = work / "nnUNet_results" / dataset["raw"].name / f"nnUNetTrainer_SegtrainBudget__nnUNetPlans__{configuration}"
    shutil.rmtree(results / "fold_0", ignore_errors=True)
    seconds = run(["nnUNetv2_train", dataset_id, configuration, "0", "-tr", "nnUNetTrainer_SegtrainBudget", "-device", "cpu"],
                  env, log, 6 * 3600)
    keep = work / "predictions" / dataset["name"] / f"nnunet_{index}"
    shutil.rmtree(keep, ignore_errors=True)
    shutil.copytree(results / "fold_0" / "validation", keep)
    plans = json.loads((preprocessed / "nnUNetPlans.json").read_text())["configurations"][configuration]
    return {"tool": "nnU-Net", "run": index, "pred": keep, "seconds": seconds, "batch": plans["batch_size"],
            "patch": plans["patch_size"]}


# -- segtrain ---------------------------------------------------------------------------------------------
def train_segtrain(dataset: dict, work: Path, epochs: int, iterations: int, seed: int, extra: list[str], tag: str,
                   checkout: Path | None = None) -> dict:
    log = work / f"{dataset['name']}_segtrain.log"
    env = {**os.environ, "SEGTRAIN_CACHE_DIR": str(work / "cache")}
    layout = "nifti" if dataset["configuration"] == "3d_fullres" else "images2d"
    run_dir = work / "runs" / dataset["name"] / f"{tag}_{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    batch = next((int(a.split("=")[1]) for a in extra if a.startswith("data.batch_size=")), None)
    spec = segtrain_plan(dataset, layout, extra, work / "cache") if checkout is None else {"batch_size": batch,
                                                                                            "patch_size": "its own"}
    batch = int(spec["batch_size"])
    split = [f"data.split_file={dataset['split']}", "data.fold=0"] if checkout is None else []
    args = [f"data={layout}", f"data.root={dataset['segtrain_root']}", *split,
            f"data.patches_per_epoch={iterations * batch}", f"trainer.max_epochs={epochs}", f"seed={seed}",
            "trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}", *extra]
    program = [BIN / "segtrain"] if checkout is None else [sys.executable, "-c", LAUNCHER, checkout, dataset["split"]]
    seconds = run([*program, *args], env, log, 6 * 3600)
    pred = work / "predictions" / dataset["name"] / f"{tag}_{seed}"
    shutil.rmtree(pred, ignore_errors=True)
    images = work / "val_images" / dataset["name"]
    if not images.is_dir():
        source = dataset["raw"] / "imagesTr"
        images.mkdir(parents=True)
        for case in dataset["val"]:
            shutil.copy(source / f"{case}_0000{dataset['ending']}", images / f"{case}{dataset['ending']}")
    run([BIN / "segtrain-predict", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", f"input={images}", "tta=true",
         "inference.overlap=0.5", f"output_dir={pred}"], env, log, 3600)
    return {"tool": tag, "run": seed, "pred": pred, "seconds": seconds, "batch": batch, "patch": spec["patch_size"],
            "run_dir": run_dir}


def segtrain_plan(dataset: dict, layout: str, extra: list[str], cache: Path) -> dict:
    """segtrain's planned batch and patch for the dataset (the data module alone, nothing trained)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers.cli import compose

    from segtrain.data import build_datamodule

    cfg = compose([f"data={layout}", f"data.root={dataset['segtrain_root']}", *extra], cache_dir=cache)
    data = build_datamodule(cfg.data)
    return {"batch_size": data.batch_size, "patch_size": list(data.spec.patch_size)}


# -- scoring ----------------------------------------------------------------------------------------------
def per_case_dice(pred: Path, dataset: dict, out: Path) -> dict[str, float]:
    """Mean Dice over the foreground classes of each case (classes absent from both left out), segtrain-evaluate's code."""
    from segtrain.evaluation import evaluate_folders

    shutil.rmtree(out, ignore_errors=True)
    evaluate_folders(pred, dataset["raw"] / "labelsTr", out, progress=False, cases=dataset["val"])
    rows: dict[str, list[float]] = {}
    with (out / "metrics_per_case.csv").open() as handle:
        for row in csv.DictReader(handle):
            if row["dice"] not in ("", "nan"):
                rows.setdefault(row["case"], []).append(float(row["dice"]))
    return {case: statistics.fmean(values) if values else math.nan for case, values in
            ((c, rows.get(c, [])) for c in dataset["val"])}


def table(dataset: dict, results: list[dict], iterations: int) -> list[str]:
    columns = [f"{r['tool']} {'run' if r['tool'] == 'nnU-Net' else 'seed'} {r['run']}" for r in results]
    lines = [f"#### {dataset['name']}: {len(dataset['val'])} held-out cases (nnU-Net's fold 0), {iterations} iterations",
             "", "| case | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for case in dataset["val"]:
        lines.append(f"| {case} | " + " | ".join(f"{r['dice'].get(case, math.nan):.4f}" for r in results) + " |")
    means = [statistics.fmean(v for v in r["dice"].values() if not math.isnan(v)) for r in results]
    lines.append("| **mean** | " + " | ".join(f"**{m:.4f}**" for m in means) + " |")
    lines.append("")
    for tool in dict.fromkeys(r["tool"] for r in results):
        values = [m for m, r in zip(means, results) if r["tool"] == tool]
        if values:
            spread = f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else ""
            first = next(r for r in results if r["tool"] == tool)
            minutes = statistics.fmean(r["seconds"] for r in results if r["tool"] == tool) / 60
            lines.append(f"- {tool}: mean per-case Dice {statistics.fmean(values):.4f}{spread} over {len(values)} run(s); "
                         f"batch {first['batch']}, patch {first['patch']}; {minutes:.1f} min per run on this machine")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nnunet", type=Path, required=True, help="the scratch virtual environment holding nnunetv2")
    parser.add_argument("--datasets", default="chest2d,synthetic2d,synthetic3d")
    parser.add_argument("--iterations", type=int, default=1250, help="training iterations of each run (both tools)")
    parser.add_argument("--epochs", type=int, default=25, help="the iterations are split into this many epochs")
    parser.add_argument("--runs", type=int, default=3, help="runs per tool (segtrain: seeds 0, 1, ...)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each training process")
    parser.add_argument("--work", type=Path, default=Path("compare_nnunet"), help="folder for data, runs and logs")
    parser.add_argument("--segtrain-args", default="", help="extra segtrain overrides, space-separated")
    parser.add_argument("--tag", default="segtrain", help="segtrain's column name (ablation variants)")
    parser.add_argument("--checkout", type=Path, default=None,
                        help="run another checkout of segtrain (e.g. a git worktree of an earlier commit) instead of this one")
    parser.add_argument("--skip-nnunet", action="store_true", help="segtrain's runs only (their table columns)")
    parser.add_argument("--docs", action="store_true", help="write the tables into docs/benchmarks.md")
    args = parser.parse_args()
    if args.iterations % args.epochs:
        parser.error(f"--iterations {args.iterations} is not a multiple of --epochs {args.epochs}")
    per_epoch = args.iterations // args.epochs
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    extra = args.segtrain_args.split()
    if not args.skip_nnunet:
        install_trainer(args.nnunet)
    lines = [f"Command: `python scripts/compare_nnunet.py --datasets {args.datasets} --iterations {args.iterations} "
             f"--epochs {args.epochs} --runs {args.runs}{' --segtrain-args ' + repr(args.segtrain_args) if extra else ''}` "
             f"({time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPU cores, no GPU).", ""]
    for name in [d.strip() for d in args.datasets.split(",") if d.strip()]:
        dataset = prepare_dataset(name, work)
        results = []
        for index in range(args.runs):
            results.append(train_segtrain(dataset, work, args.epochs, per_epoch, index, extra, args.tag, args.checkout))
            if not args.skip_nnunet:
                results.append(train_nnunet(dataset, work, args.nnunet, args.epochs, per_epoch, args.threads, index))
        for result in results:
            result["dice"] = per_case_dice(result["pred"], dataset, work / "scores" / name / result["pred"].name)
        results.sort(key=lambda r: (r["tool"] == "nnU-Net", r["run"]))
        lines += table(dataset, results, args.iterations) + [""]
        (work / f"{name}_{args.tag}_results.md").write_text("\n".join(lines) + "\n")
        (work / f"{name}_{args.tag}_results.json").write_text(json.dumps(
            [{k: (str(v) if isinstance(v, Path) else v) for k, v in r.items()} for r in results], indent=1))
        print("\n".join(lines), flush=True)
    if args.docs:
        docs = ROOT / "docs" / "benchmarks.md"
        text = docs.read_text()
        start, end = text.index(MARKERS[0]) + len(MARKERS[0]), text.index(MARKERS[1])
        docs.write_text(text[:start] + "\n" + "\n".join(lines) + "\n" + text[end:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
