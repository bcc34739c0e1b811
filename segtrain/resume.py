"""Resuming a run: in its own directory, with its own configuration.

``segtrain resume=DIR`` (or ``ckpt_path=DIR/checkpoints/<name>.ckpt``, or ``ckpt_path=last
hydra.run.dir=DIR``) continues the run of ``DIR`` in ``DIR``:

1. ``prepare_argv`` (before Hydra starts): picks the newest resume point of the run
   (``interrupted.ckpt`` or ``last.ckpt``), points ``hydra.run.dir`` at ``DIR``, sends Hydra's
   own record of this launch to ``DIR/.hydra/resumed/<time>/`` so that ``DIR/.hydra`` keeps the
   record of the run's first launch, and selects the run's config groups (``loss=tversky``, ...,
   stored in the checkpoint) so that ``loss.alpha=0.5`` composes for a Tversky run. The
   checkpoint is read (and checked) here, before anything else.
2. ``resumed_config`` (in ``train``): the configuration is the one stored in the checkpoint;
   only the keys the command line names are taken from it. Keys that change what the run learns
   (``loss``, ``model``, ``optim``, ``data`` but where and how data is read, ``seed``) are refused
   with one line listing them, unless ``resume.allow_changes=true``. ``trainer.max_epochs`` and
   other settings of how the run runs may change (a longer run stretches its LR schedule).

A checkpoint outside a run directory (``ckpt_path=FILE``) starts a new run directory from it,
with the same rules for its configuration.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from segtrain.errors import ConfigError

log = logging.getLogger("segtrain")

RESUME_POINTS = ("checkpoints/interrupted.ckpt", "checkpoints/last.ckpt", "hpc_ckpt_*.ckpt")  # the last: Lightning's, under SLURM
LEARNED = ("loss", "model", "optim", "data", "seed")
# data.* keys that say where and how the data is read, not what is learned from it
DATA_RUNTIME = ("root", "num_workers", "pin_memory", "cache", "cache_rate", "cache_dir", "preflight_cache",
                "preflight_workers", "max_epochs")
RUNTIME = ("paths", "ckpt_path", "resume", "slurm")  # always from this launch


def newest_resume_point(run_dir: Path) -> Path | None:
    """The most recently written of the run's resume points (``RESUME_POINTS``); None when there is none."""
    found = [path for pattern in RESUME_POINTS for path in run_dir.glob(pattern) if path.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime_ns) if found else None


def resume_in_place(cfg: DictConfig, output_dir: Path) -> Path | None:
    """A run of a sweep whose folder already holds a resume point continues from it (returned): a SLURM job
    requeued after a preemption, or a sweep run again with its own ``hydra.sweep.dir``. None: a new run."""
    from omegaconf import open_dict

    if cfg.get("ckpt_path"):
        return None
    point = newest_resume_point(output_dir)
    if point is None:
        return None
    with open_dict(cfg):
        cfg.ckpt_path = str(point)
        cfg.resume = {**(OmegaConf.to_container(cfg.get("resume") or {})), "dir": str(output_dir)}
    return point


def _split(item: str) -> tuple[str, str] | None:
    """``key=value`` → (key, value without surrounding quotes); None for flags."""
    if item.startswith("-") or "=" not in item:
        return None
    key, value = item.split("=", 1)
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]
    return key.lstrip("+~"), value


def _quoted(path: Path) -> str:
    """A path as a Hydra override value: quoted, since run folders are named ``..._loss=tversky,loss.alpha=0.3``."""
    text = str(path)
    return f"'{text}'" if "'" not in text else '"' + text.replace('"', '\\"') + '"'


def prepare_argv(argv: list[str]) -> list[str]:
    """Rewrite a resume command line (see the module docstring); any other command line is returned unchanged.

    Raises:
        ConfigError: the run directory or its checkpoint does not exist, or a resume in a multirun.
    """
    values = {kv[0]: kv[1] for kv in map(_split, argv) if kv}
    resume = values.get("resume", values.get("resume.dir"))
    ckpt = values.get("ckpt_path")
    if resume in (None, "", "null") and ckpt in (None, "", "null"):
        return argv
    if any(a in ("-m", "--multirun") for a in argv):
        raise ConfigError("resume=/ckpt_path= continue one run; resume each run of a sweep separately (without -m)")
    given_dir = values.get("hydra.run.dir")
    if resume not in (None, "", "null"):
        run_dir = Path(resume).expanduser().resolve()
        if not (run_dir / ".hydra").is_dir() and not (run_dir / "checkpoints").is_dir():
            raise ConfigError(f"resume={resume}: not a segtrain run directory; give the folder that holds checkpoints/ "
                              "and .hydra/ (printed as 'run directory' by the run)")
        ckpt_file = newest_resume_point(run_dir)
        if ckpt_file is None:
            raise ConfigError(f"resume={resume}: the run saved no last.ckpt or interrupted.ckpt yet (it stopped in its "
                              "first epoch); start it again")
    elif ckpt == "last":
        if not given_dir:
            raise ConfigError("ckpt_path=last needs the run: segtrain resume=<run dir> (or ckpt_path=last hydra.run.dir=<run dir>)")
        run_dir = Path(given_dir).expanduser().resolve()
        ckpt_file = newest_resume_point(run_dir)
        if ckpt_file is None:
            raise ConfigError(f"ckpt_path=last: {run_dir}/checkpoints holds no last.ckpt or interrupted.ckpt")
    else:
        ckpt_file = Path(ckpt).expanduser().resolve()
        in_run = ckpt_file.parent.name == "checkpoints" and (ckpt_file.parent.parent / ".hydra").is_dir()
        run_dir = ckpt_file.parent.parent if in_run else None
        if given_dir and run_dir is not None and Path(given_dir).expanduser().resolve() != run_dir:
            run_dir = None  # an explicit other run directory: a new run that starts from this checkpoint
    from segtrain.checkpoints import read_checkpoint

    checkpoint = read_checkpoint(ckpt_file, key="ckpt_path" if run_dir is None or ckpt else "resume")
    given = {kv[0] for kv in map(_split, argv) if kv}
    choices = checkpoint["segtrain"].get("choices") or {}
    from segtrain.cli import config_dir
    from segtrain.config_check import split_command_line

    flags, overrides, folders = split_command_line(argv, config_dir())  # flags first: Hydra takes the overrides in one run
    _check_choices_exist(choices, given, folders)
    out = flags + [f"{group}={choice}" for group, choice in choices.items() if group not in given]
    out += [a for a in overrides if (_split(a) or ("",))[0] not in ("resume", "resume.dir", "ckpt_path")]
    out.append(f"ckpt_path={_quoted(ckpt_file)}")
    if run_dir is not None:
        out.append(f"resume.dir={_quoted(run_dir)}")
        if not given_dir:
            out.append(f"hydra.run.dir={_quoted(run_dir)}")
        if not any(a.startswith("hydra.output_subdir=") for a in argv):
            stamp = time.time()
            out.append(f"hydra.output_subdir=.hydra/resumed/{time.strftime('%Y-%m-%d_%H-%M-%S', time.localtime(stamp))}"
                       f".{int(stamp * 1000) % 1000:03d}")
    return out


def _check_choices_exist(choices: dict[str, str], given: set[str], folders: list[Path]) -> None:
    """A run made with ``--config-dir DIR`` (a loss of one's own) is resumed with it: one line if it is missing."""
    from segtrain.config_check import config_options

    for group, choice in choices.items():
        options = config_options(folders, group)
        if group not in given and options and choice not in options:
            raise ConfigError(f"resume: the run used {group}={choice}, which is not among the configs here; resume with "
                              f"the --config-dir the run was started with (segtrain --config-dir DIR resume=...)")


def discard_launch_record() -> None:
    """Remove this launch's ``.hydra/resumed/<time>/`` record: a resume refused before training changed nothing."""
    import shutil

    from hydra.core.hydra_config import HydraConfig

    try:
        hydra_cfg = HydraConfig.get()
    except ValueError:
        return
    if str(hydra_cfg.output_subdir or "").startswith(".hydra/resumed/"):
        record = Path(hydra_cfg.runtime.output_dir) / hydra_cfg.output_subdir
        shutil.rmtree(record, ignore_errors=True)
        try:
            record.parent.rmdir()  # .hydra/resumed/ itself, when this was its only record
        except OSError:
            pass


def user_overrides(argv: list[str]) -> list[str]:
    """The overrides a user typed (``key=value`` items), without the resume keys ``prepare_argv`` rewrites."""
    return [a for a in argv if (kv := _split(a)) and kv[0] not in ("resume", "resume.dir", "ckpt_path")
            and not kv[0].startswith("hydra")]


def _touched(overrides: list[str], groups: set[str], cfg: DictConfig) -> set[str]:
    """The config paths a command line sets: ``a.b=v`` → ``a.b``; a group choice ``loss=x`` → ``loss``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    touched = set()
    for override in OverridesParser.create().parse_overrides(overrides=list(overrides)):
        key = override.key_or_group
        if key.startswith("hydra") or key.split(".")[0] in RUNTIME:
            continue
        if key in groups and key not in cfg:  # a group that is not a config key (experiment=, hparams_search=)
            raise ConfigError(f"{override.input_line}: a preset cannot be applied to a resumed run; "
                              "give the settings it changes one by one (key=value)")
        touched.add(key.replace("/", "."))
    return touched


def _learned(path: str) -> bool:
    head, _, rest = path.partition(".")
    if head == "model" and rest.split(".")[0] in ("compile", "channels_last"):
        return False  # how the network runs (segtrain.models.apply_speed_knobs), not what it learns
    if head != "data":
        return head in LEARNED
    return not rest or rest.split(".")[0] not in DATA_RUNTIME


def _value(cfg: Any, path: str) -> Any:
    node = OmegaConf.select(cfg, path, default="<absent>", throw_on_missing=False)
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def resumed_config(cfg: DictConfig, run_config: dict, overrides: list[str], groups: set[str]) -> tuple[DictConfig, list[str]]:
    """The resumed run's config: the checkpoint's, with this launch's runtime keys and command-line keys.

    ``run_config``: the checkpoint's ``segtrain`` entry (``config_source``: the config as composed,
    interpolations kept, so that paths follow the run directory; ``config``: resolved, compared).
    Returns the config and the learned keys that change, as ``key (old → new)``; refuses them
    (``ConfigError``) unless ``resume.allow_changes`` is true.
    """
    merged = OmegaConf.create(run_config.get("config_source") or run_config["config"])
    touched = _touched(overrides, groups, cfg)
    for path in sorted(set(RUNTIME) | touched):
        node = OmegaConf.select(cfg, path, default="<absent>", throw_on_missing=False)
        if isinstance(node, str) and node == "<absent>":
            parent, _, leaf = path.rpartition(".")
            container = OmegaConf.select(merged, parent) if parent else merged
            if isinstance(container, DictConfig) and leaf in container:
                del container[leaf]
        else:
            OmegaConf.update(merged, path, node, merge=False, force_add=True)
    resolved_old = OmegaConf.create(run_config["config"])
    changes = []
    for path in sorted(p for p in touched if _learned(p)):
        changes += [f"{key} ({_short(old)} → {_short(new)})" for key, old, new in _leaf_changes(
            path, _value(resolved_old, path), _value(merged, path)) if _learned(key)]
    kept = [c for c in changes if c.split(" ", 1)[0] in FIXED_ON_RESUME]
    if kept:
        raise ConfigError(
            f"resume: {', '.join(kept)}: a resumed run keeps its optimiser and schedule kinds (the optimizer's moments "
            "and the schedule's position belong to them); their settings (lr, weight_decay, momentum, power, ...) may "
            "change with resume.allow_changes=true, or start a new run"
        )
    allow = bool(OmegaConf.select(cfg, "resume.allow_changes", default=False))
    if changes and not allow:
        raise ConfigError(
            f"resume: {', '.join(changes)} would change what the run learns; leave these out (the run's own settings "
            "are used), or add resume.allow_changes=true to apply them"
        )
    if changes:
        log.warning("segtrain: resume.allow_changes=true: the resumed run learns with %s", ", ".join(changes))
    return merged, changes


FIXED_ON_RESUME = ("optim.optimizer._target_", "optim.scheduler._target_", "optim.scheduler", "optim.interval")


def _leaf_changes(path: str, old: Any, new: Any) -> list[tuple[str, Any, Any]]:
    """The keys that differ between two values of ``path``, as leaves: a changed group (``loss=dice`` for a
    Tversky run) reads ``loss.name (tversky → dice), loss.alpha (0.3 → absent)``, not two cut-off dicts. A
    node that appears or disappears (``optim.scheduler=null``) is one change."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            out += _leaf_changes(f"{path}.{key}", old.get(key, "<absent>"), new.get(key, "<absent>"))
        return out
    return [(path, old, new)] if old != new else []


def _short(value: Any) -> str:
    text = "absent" if isinstance(value, str) and value == "<absent>" else str(value)
    return text if len(text) <= 40 else text[:37] + "..."
