"""Entry points: ``segtrain`` (train), ``segtrain-predict`` (inference), ``segtrain-evaluate`` (score predictions),
``segtrain-losses`` (list the registry).

Thin on purpose: compose the config with Hydra, hand it to ``segtrain.train``, turn user errors
into one line on stderr and a non-zero exit. Heavy imports happen inside the functions.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import warnings
from pathlib import Path

import hydra
from omegaconf import DictConfig

from segtrain.errors import SegtrainError


def config_dir() -> str:
    """The configs shipped with the package (wheel) or beside it (source checkout, editable install)."""
    packaged = Path(__file__).resolve().parent / "configs"
    source = Path(__file__).resolve().parent.parent / "configs"
    return str(packaged if packaged.is_dir() else source)


def _quiet_writer_threads(previous):
    """``threading.excepthook`` that leaves TensorBoard's event-writer thread alone: its failure (a full disk)
    is raised again in the training thread at the next write, which ends the run with one line; the thread's
    own traceback would only repeat it. Every other thread's exception goes to ``previous``."""

    def hook(args) -> None:
        if type(args.thread).__name__ == "_AsyncWriterThread" and isinstance(args.exc_value, OSError):
            return
        previous(args)

    hook.segtrain = True
    return hook


def quiet_known_warnings() -> None:
    """Third-party warnings that say nothing actionable to a segtrain user (matched narrowly)."""
    import threading

    if not getattr(threading.excepthook, "segtrain", False):
        threading.excepthook = _quiet_writer_threads(threading.excepthook)
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*", module=r"lightning")
    warnings.filterwarnings("ignore", message=r"Num foregrounds 0, Num backgrounds", module=r"monai")
    # 2D prediction: nothing to invert (no resampling or reorientation of PNGs); the prediction is written as is
    warnings.filterwarnings("ignore", message=r"inverse has been called but no invertible transforms", module=r"monai")
    warnings.filterwarnings("ignore", message=r".*The number of training batches .* is smaller than the logging interval.*")
    # A SLURM login node has srun: a run started there without it is a local run, not a forgotten `srun`
    # (SLURM runs go through trainer=slurm and sbatch/srun, docs/reliability.md#slurm).
    warnings.filterwarnings("ignore", message=r"The `srun` command is available on your system but is not used",
                            module=r"lightning")
    # A resumed run writes into its own checkpoint folder on purpose.
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty", module=r"lightning")
    # a NaN loss fed to torchmetrics' mean: the non-finite guard reports it in one line (docs/reliability.md)
    warnings.filterwarnings("ignore", message=r"Encountered `nan` values in tensor", module=r"torchmetrics")
    # optuna 2 (hydra-optuna-sweeper's) on SQLAlchemy 1.4: a notice about SQLAlchemy 2.0, which the lock keeps out
    warnings.filterwarnings("ignore", message=r"Deprecated API features detected", module=r"optuna")
    os.environ.setdefault("SQLALCHEMY_SILENCE_UBER_WARNING", "1")
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning:torch.utils._pytree")


def fail(err: Exception) -> None:
    """One ``segtrain: <error|stopped>: ...`` line on stderr, then the error's exit code (docs/reliability.md).

    A stop that every DDP rank takes together (a signal, NaN) is printed by rank 0 only.
    """
    from segtrain.errors import NonFiniteError, RunInterrupted

    collective = isinstance(err, (RunInterrupted, NonFiniteError))
    if not collective or os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) == "0":
        print(f"segtrain: {getattr(err, 'label', 'error')}: {err}", file=sys.stderr)
    sys.exit(getattr(err, "exit_code", 2))


_typed_overrides: list[str] | None = None  # what the user typed, before main() added the resume settings
_existing_run_dir: str | None = None       # hydra.run.dir as given, when that folder existed before this launch


def _run_folder_is_new(output_dir: Path) -> bool:
    """True when Hydra made ``output_dir`` for this launch: nothing in it but its own records."""
    if _existing_run_dir and Path(_existing_run_dir).expanduser().resolve() == output_dir.resolve():
        return False
    return output_dir.is_dir() and {p.name for p in output_dir.iterdir()} <= {".hydra", "train.log"}


def _discard_run_folder(output_dir: Path, log_dir: Path | None = None) -> None:
    """A run refused before training leaves nothing behind: its new folder goes (with the folders above it up to
    ``log_dir`` that it leaves empty, such as ``train/runs/``), or a resume's launch record."""
    import shutil

    from segtrain.resume import discard_launch_record

    discard_launch_record()
    if output_dir.is_dir():
        shutil.rmtree(output_dir, ignore_errors=True)
    top = log_dir.resolve() if log_dir is not None else None
    parent = output_dir.resolve().parent
    while top is not None and parent != top and top in parent.parents:
        try:
            parent.rmdir()  # only when empty
        except OSError:
            break
        parent = parent.parent


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def _train_app(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    quiet_known_warnings()
    overrides = _typed_overrides if _typed_overrides is not None else list(HydraConfig.get().overrides.task)
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    new_folder = _run_folder_is_new(output_dir)
    in_sweep = HydraConfig.get().mode == RunMode.MULTIRUN
    lock = _lock_run_folder(output_dir, cfg, in_sweep)
    if lock is False:
        return None  # a run of a sweep whose folder another process holds: it is that process's run
    try:
        return _run(cfg, overrides, output_dir, new_folder, in_sweep)
    finally:
        if lock is not None:
            lock.release()


def _run(cfg: DictConfig, overrides: list[str], output_dir: Path, new_folder: bool, in_sweep: bool) -> float | None:
    """One run in its (locked) folder: train, and turn what ends it into the exit code or the sweeper's value."""
    from segtrain.callbacks.sweep import clear_failure
    from segtrain.errors import ConfigError, RunInterrupted
    from segtrain.resume import resume_in_place
    from segtrain.train import train

    if in_sweep:
        clear_failure(output_dir)
    # A sweep's run whose folder holds a checkpoint resumes it; so do the DDP workers Lightning starts for it.
    worker = os.environ.get("LOCAL_RANK", "0") != "0"
    if in_sweep or worker:
        point = resume_in_place(cfg, output_dir)
        if point is not None and not worker:
            print(f"segtrain: {output_dir} holds {point.relative_to(output_dir)}: resuming that run", file=sys.stderr)
    try:
        metrics = train(cfg, overrides=overrides)
    except SegtrainError as err:
        if in_sweep and not isinstance(err, RunInterrupted):  # the sweep goes on (segtrain/callbacks/sweep.py)
            return _failed_in_sweep(output_dir, getattr(err, "exit_code", 2), f"{getattr(err, 'label', 'error')}: {err}")
        if getattr(err, "before_training", False):
            if new_folder:
                _discard_run_folder(output_dir, Path(cfg.paths.log_dir))
            else:
                from segtrain.resume import discard_launch_record

                discard_launch_record()
        fail(err)
    except KeyboardInterrupt:
        print("segtrain: stopped: Ctrl-C before training started; nothing to save", file=sys.stderr)
        sys.exit(130)
    except Exception as err:  # noqa: BLE001 - a crash ends a single run with its traceback, one run of a sweep only
        if not in_sweep:
            raise
        logging.getLogger("segtrain").exception("segtrain: the run crashed")
        return _failed_in_sweep(output_dir, 1, f"crash: {type(err).__name__}: {err} (traceback in {output_dir}/train.log)")
    metric = cfg.get("optimized_metric")
    if not metric:
        return None
    if metric not in metrics:
        error = ConfigError(f"optimized_metric={metric}: this run has no such metric; it has: {', '.join(sorted(metrics))}")
        if in_sweep:
            return _failed_in_sweep(output_dir, 2, f"error: {error}")
        fail(error)
    value = float(metrics[metric])
    if in_sweep and not math.isfinite(value):  # Optuna ends a sweep on a NaN; no value is a failed trial
        logging.getLogger("segtrain").warning("segtrain: optimized_metric %s is %s: the sweeper records no value", metric, value)
        return None
    return value


def _lock_run_folder(output_dir: Path, cfg: DictConfig, in_sweep: bool):
    """The run folder's lock for this run (held until the process ends; ``segtrain.run_folder``): the lock, None
    when another process of this run holds it (DDP workers), False for a sweep run whose folder is in use."""
    from segtrain.errors import ConfigError
    from segtrain.run_folder import RunFolderLock, takes_the_lock

    devices, nodes = cfg.trainer.get("devices"), cfg.trainer.get("num_nodes") or 1
    world = int(devices) * int(nodes) if isinstance(devices, int) and devices > 0 else None
    if not takes_the_lock(world):
        return None
    try:
        return RunFolderLock(output_dir).acquire()
    except ConfigError as err:
        if in_sweep:
            print(f"segtrain: error: {err}", file=sys.stderr)
            return False
        fail(err)  # the folder is the other run's: nothing of it is removed


def _failed_in_sweep(output_dir: Path, exit_code: int, line: str) -> None:
    """One run of a sweep failed: its line now, ``failed.txt`` for the end of the sweep, no value for the sweeper
    (Optuna records a failed trial; a NaN would end its sweep)."""
    from segtrain.callbacks.sweep import record_failure

    if os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) == "0":
        print(f"segtrain: {line}", file=sys.stderr)
        record_failure(output_dir, exit_code, line)
    return None


def check_output_folder(argv: list[str]) -> None:
    """Fail with one line, before Hydra creates anything, when the run (or sweep, or log) folder cannot be used.

    - It cannot be created: the test creates and removes a temporary folder in the deepest existing
      ancestor, so it catches read-only filesystems, missing permissions and files in the way alike.
    - It holds another run's checkpoints and this is not a resume of it: a new run would overwrite them.
      (A sweep folder may be given again: each of its runs with a checkpoint resumes, see ``resume_in_place``.)
    """
    import tempfile

    from segtrain.errors import ConfigError

    if any(a in ("--help", "-h", "--hydra-help", "--info", "-i", "--cfg", "-c", "--shell-completion", "-sc") for a in argv):
        return  # nothing will be written
    values = dict(a.split("=", 1) for a in argv if "=" in a and not a.startswith("-"))
    for key in ("hydra.run.dir", "hydra.sweep.dir", "paths.log_dir"):
        if values.get(key):
            target = values[key]
            break
    else:
        key, target = "SEGTRAIN_LOG_DIR", os.environ.get("SEGTRAIN_LOG_DIR", "outputs")
    path = Path(target).expanduser().absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    try:
        if not existing.is_dir():
            raise NotADirectoryError(f"{existing} is a file")
        tempfile.TemporaryDirectory(dir=existing).cleanup()
    except OSError as err:
        reason = err.strerror or str(err)
        raise ConfigError(f"{key}={target}: cannot create the run folder there ({reason}); choose a writable folder, "
                          "e.g. hydra.run.dir=$HOME/segtrain-runs/NAME") from None
    resuming = values.get("resume.dir") not in (None, "", "null")
    if key == "hydra.run.dir" and not resuming and path.is_dir():
        found = sorted(path.glob("checkpoints/*.ckpt"))
        if found:
            raise ConfigError(f"{key}={target} already holds a run ({found[0].relative_to(path)}); a new run there would "
                              f"overwrite it: resume it with segtrain resume={found[0].parent.parent}, or choose another folder")


def user_config_dirs_on_path(argv: list[str]) -> None:
    """``--config-dir DIR`` folders go first on ``sys.path``: a loss or network of one's own in ``DIR/my_losses.py``
    is ``_target_: my_losses.MyLoss`` in ``DIR/loss/my_loss.yaml``, without installing anything (docs/losses.md)."""
    from segtrain.config_check import user_config_dirs

    for folder in user_config_dirs(argv):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))


HELP = """usage: segtrain [key=value ...]            train (the default: a small 3D U-Net on built-in data, about a minute)
       segtrain -m key=a,b ...               a sweep: one run per value (Hydra multirun)
       segtrain resume=<run dir> [key=value]  continue a run in its own folder, with its own config

Config groups (group=option; {folders}):
{groups}

  (your data, data=nifti or data=images2d, switches to augment=nnunet model=dynunet optim=sgd: nnU-Net's)

Common settings:
  data.root=DIR                 your dataset (data=nifti: MSD or nnU-Net v2 layout; data=images2d: images/ + labels/)
  loss.<param>=V                any parameter of the loss (segtrain-losses <name> lists them, with the formula)
  trainer.<arg>=V               any Lightning Trainer argument: trainer.devices=4, trainer.precision=bf16-mixed
  data.fold=0                   nnU-Net's fold 0 (or data.split_file=splits_final.json)
  hydra.run.dir=DIR             where everything of the run lands
  --config-dir DIR              your own presets and losses (DIR/loss/my_loss.yaml, DIR/my_losses.py)

More:
  segtrain --cfg job [key=value ...]   the composed config, every key with its value
  segtrain --hydra-help                Hydra's own help (flags, tab completion)
  segtrain-losses, segtrain-predict, segtrain-evaluate, segtrain-compare   (each with --help)
  docs: README.md, docs/data.md, docs/losses.md, docs/reliability.md, docs/diagnostics.md, docs/sweeps.md
"""


def print_help(argv: list[str]) -> None:
    """``segtrain --help``: the config groups and their options, read from the config folders (no composition:
    Hydra's help composes the config once per group and option, which grows with every preset)."""
    from segtrain.config_check import config_options, split_command_line

    folders = split_command_line(argv, config_dir())[2]
    groups = sorted({p.name for folder in folders if folder.is_dir() for p in folder.iterdir()
                     if p.is_dir() and not p.name.startswith(("_", ".", "hydra"))})
    defaults = _default_choices()
    lines = []
    for group in groups:
        options = config_options(folders, group)
        shown = ", ".join(f"{o} (default)" if defaults.get(group) == o else o for o in options)
        lines.append(f"  {group + ':':<16}{shown}")
    where = "packaged configs" + (", then --config-dir" if len(folders) > 1 else "")
    print(HELP.format(groups="\n".join(lines), folders=where), end="")


def _default_choices() -> dict[str, str]:
    """The default run's ``group: option``: train.yaml's defaults list, then the overrides its data preset makes
    (``override /model@_global_.model: unet``), read as text (no composition)."""
    import re

    folder = Path(config_dir())
    choices = {m.group(1): m.group(2) for m in re.finditer(r"^  - (\w+): (\w+)", (folder / "train.yaml").read_text(), re.M)}

    def apply(option: str) -> None:
        path = folder / "data" / f"{option}.yaml"
        if not path.is_file():
            return
        text = path.read_text()
        for m in re.finditer(r"^  - (\w+)\s*$", text, re.M):  # a data preset it builds on
            if m.group(1) != "_self_":
                apply(m.group(1))
        choices.update({m.group(1): m.group(2) for m in re.finditer(r"^  - override /(\w+)@_global_\.\w+: (\w+)", text, re.M)})

    apply(choices.get("data", ""))
    return choices


def main() -> None:
    """``segtrain k=v ...``: train; ``segtrain resume=<run dir>`` continues a run in its own directory."""
    global _typed_overrides, _existing_run_dir
    import json

    from segtrain.resume import prepare_argv, user_overrides

    if any(a in ("--help", "-h") for a in sys.argv[1:]):
        print_help(sys.argv[1:])
        return
    quiet_known_warnings()
    user_config_dirs_on_path(sys.argv[1:])
    inherited = os.environ.get("SEGTRAIN_TYPED_OVERRIDES")
    if inherited is not None and os.environ.get("LOCAL_RANK", "0") != "0":
        # A DDP worker that Lightning started with rank 0's command line, already prepared.
        _typed_overrides = json.loads(inherited)
        _train_app()
        return
    from segtrain.config_check import check_command_line

    try:
        argv = prepare_argv(sys.argv[1:])
        if os.environ.get("LOCAL_RANK", "0") == "0":  # DDP workers run rank 0's command line, already checked
            check_command_line(argv, config_dir(), "train")
            check_output_folder(argv)
    except SegtrainError as err:
        fail(err)
    given = [a.split("=", 1)[1].strip("'\"") for a in argv if a.startswith("hydra.run.dir=")]
    if given and Path(given[-1]).expanduser().exists():
        _existing_run_dir = given[-1]
    if argv != sys.argv[1:]:  # a resume: only what the user typed counts as a change to the run
        _typed_overrides = user_overrides(sys.argv[1:])
        os.environ["SEGTRAIN_TYPED_OVERRIDES"] = json.dumps(_typed_overrides)  # for DDP workers
    sys.argv = [sys.argv[0], *argv]
    _train_app()


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="predict")
def _predict_app(cfg: DictConfig) -> None:
    from segtrain.predict import predict

    quiet_known_warnings()
    try:
        predict(cfg)
    except SegtrainError as err:
        fail(err)


def predict_main() -> None:
    """``segtrain-predict ckpt_path=... input=...``: segment new images with a trained checkpoint."""
    from segtrain.config_check import check_command_line

    quiet_known_warnings()
    user_config_dirs_on_path(sys.argv[1:])  # a network of one's own (model._target_) is imported again
    try:
        check_command_line(sys.argv[1:], config_dir(), "predict")
        values = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a and not a.startswith("-"))
        if values.get("ckpt_path") not in (None, "", "???"):  # read before Hydra makes the run folder
            from segtrain.checkpoints import read_checkpoint

            read_checkpoint(values["ckpt_path"].strip("'\""))
    except SegtrainError as err:
        fail(err)
    _predict_app()


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="evaluate")
def _evaluate_app(cfg: DictConfig) -> None:
    from omegaconf import OmegaConf

    from segtrain.evaluation import evaluate_folders

    quiet_known_warnings()
    output_dir = Path(cfg.output_dir)
    try:
        classes = None if cfg.classes is None else [int(c) for c in cfg.classes]
        evaluate_folders(cfg.pred, cfg.label, output_dir, OmegaConf.to_container(cfg, resolve=True),
                         num_classes=cfg.num_classes, classes=classes, geometry_tolerance=float(cfg.geometry_tolerance),
                         progress=bool(cfg.progress), label_mapping=cfg.label_mapping)
    except SegtrainError as err:
        if output_dir.is_dir() and {p.name for p in output_dir.iterdir()} <= {"evaluate.log"}:
            import shutil

            shutil.rmtree(output_dir, ignore_errors=True)  # a refused evaluation leaves nothing behind
        fail(err)


def evaluate_main() -> None:
    """``segtrain-evaluate pred=DIR label=DIR``: Dice, IoU, HD95, ASSD, NSD and lesion counts per case, with CIs."""
    from segtrain.config_check import check_command_line

    from segtrain.errors import DataError

    quiet_known_warnings()
    try:
        check_command_line(sys.argv[1:], config_dir(), "evaluate")
        values = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a and not a.startswith("-"))
        for key in ("pred", "label"):  # before Hydra makes the output folder inside pred/
            if key in values and not Path(values[key]).expanduser().is_dir():
                raise DataError(f"{key}={values[key]}: no such folder; pass the folder of "
                                f"{'predicted label maps (segtrain-predict output_dir)' if key == 'pred' else 'true label maps'}")
    except SegtrainError as err:
        fail(err)
    _evaluate_app()


def losses_main(argv: list[str] | None = None) -> None:
    """``segtrain-losses [NAME]``: every registry loss with its summary and parameters (default, meaning)."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="segtrain-losses",
        description="List the loss registry. Train with one: segtrain loss=<name> loss.<param>=<value>.",
    )
    parser.add_argument("name", nargs="?", help="show one loss in full: formula, paper, when to pick it, parameters")
    args = parser.parse_args(argv)
    from segtrain.losses import available_losses, describe_losses
    from segtrain.losses.registry import _get

    if args.name and args.name not in available_losses():
        fail(ValueError(f"unknown loss '{args.name}'; available losses: {', '.join(available_losses())}"))
    rows = [r for r in describe_losses(config_dir()) if not args.name or r["name"] == args.name]

    def shown(value) -> str:  # defaults as they are written on the command line
        return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)

    if not args.name:
        print(f"{len(rows)} losses: segtrain loss=<name> loss.<param>=<value>; segtrain-losses <name> shows one in full\n")
    for row in rows:
        if args.name:
            import inspect

            print(f"{row['name']}\n\n{inspect.getdoc(_get(row['name']))}\n")
        else:
            print(f"{row['name']:<24} {row['summary'].replace('``', '')}")
        params = [f"{k} = {shown(v)}" for k, v in row["params"].items()]
        width = max((len(p) for p in params), default=0)
        for param, key in zip(params, row["params"]):
            print(f"    {param:<{width}}  {row['help'].get(key, '')}".rstrip())
        if args.name:
            example = " ".join(f"loss.{k}={shown(v)}" for k, v in row["params"].items())
            print(f"\nexample: segtrain loss={row['name']} {example}".rstrip())


if __name__ == "__main__":
    main()
