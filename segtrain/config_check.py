"""The command line checked before Hydra starts: a typo is one line with the closest names, no run folder.

Hydra reports an unknown option (``loss=tverksy``) with 27 lines and exit 1, and an unknown key
(``loss.alhpa=0.3``) with advice to append it (``+loss.alhpa``), which is the wrong fix. Here the
command line is composed once with Hydra's compose API (the same config folders, ``--config-dir``
included) and each problem becomes a ``ConfigError`` naming the override, what exists and the
nearest match:

    loss=tverksy: there is no loss 'tverksy'; did you mean tversky? (segtrain-losses lists them)
    loss.alhpa=0.3: loss 'tversky' has no parameter 'alhpa'; did you mean alpha? Its parameters: alpha, beta, ...

A sweep (``-m loss=dice,tversky``) is checked option by option, and its keys with the first value.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from segtrain.errors import ConfigError

HYDRA_FLAGS_WITH_VALUE = ("--config-dir", "-cd", "--config-path", "-cp", "--config-name", "-cn", "--experimental-rerun")
HYDRA_FLAGS_WITH_WORD = ("--cfg", "-c", "--package", "-p", "--info", "-i", "--shell-completion", "-sc")  # job, hydra, ...


def split_command_line(argv: list[str], primary: str) -> tuple[list[str], list[str], list[Path]]:
    """(Hydra's flags with their values, the overrides, the config search folders) of a command line.

    ``--config-dir DIR`` (or ``--config-dir=DIR``, ``-cd DIR``) adds ``DIR`` before ``primary``.
    """
    flags, overrides, folders, i = [], [], [Path(primary)], 0
    while i < len(argv):
        item = argv[i]
        name, _, inline = item.partition("=") if item.startswith("--") else (item, "", "")
        if name in HYDRA_FLAGS_WITH_VALUE:
            value = inline or (argv[i + 1] if i + 1 < len(argv) else "")
            flags += argv[i:i + (1 if inline else 2)]
            i += 1 if inline else 2
            if name in ("--config-dir", "-cd") and value:
                folders.insert(0, Path(value).expanduser())
            continue
        if name in HYDRA_FLAGS_WITH_WORD and i + 1 < len(argv) and "=" not in argv[i + 1] and not argv[i + 1].startswith("-"):
            flags += argv[i:i + 2]  # --cfg job, --info defaults, ...
            i += 2
            continue
        (flags if item.startswith("-") else overrides).append(item)
        i += 1
    return flags, overrides, folders


def user_config_dirs(argv: list[str]) -> list[Path]:
    """The ``--config-dir`` folders of a command line, absolute."""
    return [folder.absolute() for folder in split_command_line(argv, ".")[2][:-1]]


def config_options(folders: list[Path], group: str) -> list[str]:
    """The options of a config group (``loss`` → dice, tversky, ...) in the search folders."""
    found = set()
    for folder in folders:
        if (folder / group).is_dir():
            found |= {p.stem for p in (folder / group).glob("*.yaml")}
    return sorted(found)


def _closest(word: str, candidates: list[str]) -> str:
    match = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f"did you mean {match[0]}? " if match else ""


def _first_values(overrides: list) -> list[str]:
    """Each override as ``key=value`` with a sweep's first value (``loss=dice,tversky`` → ``loss=dice``)."""
    out = []
    for override in overrides:
        if override.is_sweep_override():
            first = next(iter(override.sweep_string_iterator()), None)
            if first is None:
                continue
            out.append(f"{override.get_key_element()}={first}")
        else:
            out.append(override.input_line)
    return out


PLUGIN_GROUPS = ("hydra/sweeper", "hydra/launcher")
# Hydra plugins of the `sweep` extra: (module, what it is), by the words their options contain
PLUGINS = {"optuna": ("hydra_plugins.hydra_optuna_sweeper", "the Optuna sweeper (hydra-optuna-sweeper)"),
           "submitit": ("hydra_plugins.hydra_submitit_launcher", "the SLURM launcher (hydra-submitit-launcher)")}
PLUGIN_OF_OPTION = {"slurm": "submitit"}  # configs/hydra/launcher/slurm.yaml builds on submitit_slurm


def missing_plugin(text: str) -> str | None:
    """What to install for an option or a Hydra error naming a sweep plugin that is not installed; None if none."""
    import importlib.util

    for word, (module, what) in PLUGINS.items():
        if word in text and importlib.util.find_spec(module) is None:
            return f"needs {what}, which is not installed: pip install 'segtrain[sweep]'"
    return None


def _check_plugin_choice(group: str, value: str, folders: list[Path]) -> None:
    """``hydra/launcher=slurm``, ``hydra/sweeper=optuna``: the plugin is installed and the option exists."""
    from hydra.core.config_store import ConfigStore
    from hydra.core.plugins import Plugins

    problem = missing_plugin(PLUGIN_OF_OPTION.get(value, value))
    if problem:
        raise ConfigError(f"{group}={value}: {problem}")
    Plugins.instance()  # imports the installed plugins, which register their options
    options = sorted({name.removesuffix(".yaml") for name in ConfigStore.instance().list(group) if name.endswith(".yaml")}
                     | set(config_options(folders, group)))
    if value not in options:
        raise ConfigError(f"{group}={value}: there is no {group} '{value}'; {_closest(value, options)}options: {', '.join(options)}")


def check_command_line(argv: list[str], config_dir: str, config_name: str = "train") -> None:
    """Raise ``ConfigError`` (one line) for an unknown config-group option or key on the command line."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    flags, items, folders = split_command_line(argv, config_dir)
    try:
        parsed = OverridesParser.create().parse_overrides(overrides=items)
    except HydraException as err:
        raise ConfigError(f"cannot read the command line: {' '.join(str(err).split())[:200]}") from None
    for override in parsed:
        group = override.key_or_group
        if group in PLUGIN_GROUPS and not override.is_sweep_override() and not override.is_delete():
            _check_plugin_choice(group, str(override.value()), folders)
        if group.startswith("hydra") or not config_options(folders, group) or override.is_delete():
            continue  # a key, or Hydra's own settings
        values = list(override.sweep_string_iterator()) if override.is_sweep_override() else [override.value()]
        values = [v for value in values for v in (value if isinstance(value, list) else [value])]  # debug=[tiny,checks]
        for value in values:
            if value is None or str(value) in config_options(folders, group):
                continue
            options = config_options(folders, group)
            hint = " (segtrain-losses lists them)" if group == "loss" else ""
            raise ConfigError(f"{group}={value}: there is no {group} '{value}'; {_closest(str(value), options)}"
                              f"options: {', '.join(options)}{hint}")
    cfg = _check_keys(folders, config_dir, config_name, _first_values(parsed))
    resuming = any(o.key_or_group in ("resume", "resume.dir", "ckpt_path") and o.value() not in (None, "", "null")
                   for o in parsed if not o.is_sweep_override())
    informational = any(f.split("=")[0] in ("--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i") for f in flags)
    if cfg is not None and config_name == "train" and not resuming and not informational:  # a resume's come from its checkpoint
        check_values(cfg)


def check_values(cfg) -> None:
    """What the composed config alone can tell, without torch, Lightning or reading an image: the loss's parameters,
    the data options and the dataset folder, the augmentation, the trainer's numbers. Each problem is the line the
    later, heavier check would print, a second or more sooner."""
    from omegaconf import OmegaConf

    from segtrain.augment import build_augmentation
    from segtrain.data.layouts import list_cases
    from segtrain.data.options import DataOptions
    from segtrain.losses.params import problem

    loss = OmegaConf.to_container(cfg.loss, resolve=True)
    if "_target_" not in loss:
        found = problem(str(loss.pop("name", "")), loss)
        if found:
            raise ConfigError(found)
    check_trainer({key: cfg.trainer.get(key) for key in TRAINER_KEYS})  # one by one: default_root_dir needs Hydra's run
    build_augmentation(cfg.get("augment"))
    options = DataOptions.from_config(cfg.data)
    if not options.synthetic:
        list_cases(options.root, options.layout)


# Lightning's precision names (lightning.fabric.connector._PRECISION_INPUT)
PRECISIONS = ("transformer-engine", "transformer-engine-float16", "16-true", "16-mixed", "bf16-true", "bf16-mixed",
              "32-true", "64-true", "64", "32", "16", "bf16")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu", "hpu", "xla")
TRAINER_KEYS = ("devices", "accelerator", "precision", "max_epochs", "max_steps", "num_nodes", "log_every_n_steps",
                "accumulate_grad_batches", "check_val_every_n_epoch", "num_sanity_val_steps", "gradient_clip_val")


def check_trainer(trainer: dict) -> None:
    """The trainer values Lightning would refuse, or that cannot work, as one line each with the fix."""
    devices = trainer.get("devices")
    text = str(devices).strip()
    if isinstance(devices, bool) or (isinstance(devices, int) and (devices == 0 or devices < -1)) or \
            (isinstance(devices, str) and text not in ("auto", "-1") and not all(p.strip().isdigit() for p in text.split(",") if p.strip())):
        raise ConfigError(f"trainer.devices={devices}: give the number of GPUs to train on (CPU processes where there is no "
                          "GPU), at least 1; or -1 (all), auto, or GPU ids such as [0,1]")
    accelerator = trainer.get("accelerator")
    if isinstance(accelerator, str) and accelerator not in ACCELERATORS:
        raise ConfigError(f"trainer.accelerator={accelerator}: use one of {', '.join(ACCELERATORS)}")
    precision = trainer.get("precision")
    if precision is not None and str(precision) not in PRECISIONS:
        raise ConfigError(f"trainer.precision={precision}: use 32-true, bf16-mixed (GPUs since Ampere, and CPUs) or "
                          "16-mixed (older GPUs)")
    for key, low in (("max_epochs", -1), ("max_steps", -1), ("num_nodes", 1), ("log_every_n_steps", 1),
                     ("accumulate_grad_batches", 1), ("check_val_every_n_epoch", 1), ("num_sanity_val_steps", -1)):
        value = trainer.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            allowed = f"an integer >= {low}" + (" (-1: no limit)" if low == -1 and key.startswith("max") else "")
            raise ConfigError(f"trainer.{key}={value}: must be {allowed}")
    clip = trainer.get("gradient_clip_val")
    if clip is not None and (isinstance(clip, bool) or not isinstance(clip, (int, float)) or clip < 0):
        raise ConfigError(f"trainer.gradient_clip_val={clip}: must be a number >= 0 (or null: no clipping)")


def _check_keys(folders: list[Path], config_dir: str, config_name: str, overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import ConfigCompositionException, HydraException
    from omegaconf import OmegaConf

    composable = [o for o in overrides if not o.lstrip("+~").startswith("hydra")]
    extra = [f"file://{folder.resolve()}" for folder in folders[:-1]]
    if extra:
        composable.append(f"hydra.searchpath=[{','.join(extra)}]")
    if GlobalHydra.instance().is_initialized():
        return None  # inside a running Hydra app (tests): nothing to check here
    with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base="1.3"):
        try:
            return compose(config_name, overrides=composable)
        except ConfigCompositionException as err:
            key = getattr(err.__cause__, "full_key", None)
            if not key:
                raise ConfigError(_composition_error(err, overrides)) from None
        except HydraException as err:
            raise ConfigError(_composition_error(err, overrides)) from None
        groups_only = [o for o in composable if "." not in o.split("=", 1)[0] or o.startswith("hydra.searchpath")]
        base = compose(config_name, overrides=groups_only)
    line = next((o for o in overrides if o.lstrip("+~").split("=", 1)[0] == key), key)
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(base, parent_key) if parent_key else base
    siblings = sorted(str(k) for k in parent.keys() if k not in ("name", "_target_")) if OmegaConf.is_dict(parent) else []
    closest = _closest(leaf, siblings)
    if parent_key == "loss" and OmegaConf.is_dict(parent):
        from segtrain.losses.registry import loss_name

        listed, name = ", ".join(siblings) or "none", loss_name(OmegaConf.to_container(parent))
        explained = f" (segtrain-losses {name} explains them)" if parent.get("name") else ""
        raise ConfigError(f"{line}: loss '{name}' has no parameter '{leaf}'; {closest}"
                          f"its parameters are: {listed}{explained}")
    where = f"'{parent_key}'" if parent_key else "the config"
    if parent is None or not OmegaConf.is_dict(parent):
        raise ConfigError(f"{line}: {parent_key} is not a group of settings here, so it has no '{leaf}'")
    listed = f"it has: {', '.join(siblings)}" if siblings else "it has no settings"
    raise ConfigError(f"{line}: {where} has no setting '{leaf}'; {closest}{listed}")


def _composition_error(err: Exception, overrides: list[str]) -> str:
    """One line for a composition error; a preset that needs a sweep plugin that is not installed says so."""
    text = " ".join(str(err).split())
    problem = missing_plugin(text) if ("hydra/sweeper" in text or "hydra/launcher" in text) else None
    if problem:
        preset = next((o for o in overrides if o.startswith("hparams_search=")), "this command line")
        return f"{preset}: {problem}"
    return text[:300]
