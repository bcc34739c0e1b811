"""Run names from the command-line overrides, for run directories (and so TensorBoard run names).

``segtrain data=nifti data.root=/data/Task03_Liver loss=tversky loss.alpha=0.7`` runs in
``.../runs/<time>_Task03_Liver_loss=tversky,loss.alpha=0.7``: the dataset (``data.root``'s folder
name, else the ``data`` preset: ``synthetic3d``), then the overrides. ``segtrain -m loss=dice,tversky``
puts its jobs in ``<sweep dir>/0_synthetic3d_loss=dice``, ``1_synthetic3d_loss=tversky``: a multirun
names its jobs by the swept parameters only (the fixed ones are the same for all).

This is a *Hydra* callback (``hydra.callbacks`` in ``configs/train.yaml``), not a Lightning one:
Hydra instantiates it before it resolves the run directory, and it registers the resolver
``${segtrain.run_name:}`` that ``hydra.run.dir`` and ``hydra.sweep.subdir`` use. The name follows
Hydra's ``override_dirname`` (``key=value`` joined by ``,``, group choices and loss parameters first, without the keys listed in
``hydra.job.config.override_dirname.exclude_keys``), with every character but letters, digits and
``. = , + ~ @ % - _`` replaced by ``_`` (no spaces, braces, quotes or slashes: ``data.label_mapping={255: 1}``
gives ``data.label_mapping=_255_1``) and names longer than ``MAX_LENGTH`` shortened (whole items
dropped, replaced by ``+N~<hash>``), so that any command line gives a safe directory name.
Floats are written with 4 significant digits (an Optuna trial's ``optim.optimizer.lr=0.002911``).
``hydra.run.dir=DIR`` still puts everything in ``DIR``.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

RESOLVER = "segtrain.run_name"
MAX_LENGTH = 120
_swept_keys: set[str] | None = None  # set by on_multirun_start


def _parse(overrides: list[str]) -> list[Any]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(overrides=list(overrides))


def _priority(key: str) -> tuple[int, str]:
    """Config-group choices first (loss=, model=, ...), then loss, model, optim parameters, then the rest."""
    if "." not in key:
        return (0, key)
    group = key.split(".", 1)[0]
    return ({"loss": 1, "model": 2, "optim": 3, "data": 4}.get(group, 5), key)


def safe_name(text: str) -> str:
    """``text`` with only letters, digits and ``. = , + ~ @ % - _`` (no spaces, braces, quotes, slashes or colons)."""
    return re.sub(r"_+", "_", re.sub(r"[^\w.=,+~@%-]", "_", text)).strip("_")


def join_overrides(items: list[tuple[str, str]], max_length: int = MAX_LENGTH) -> str:
    """A safe directory name from (key, "key=value") pairs: most telling first, no path separators, spaces,
    braces or quotes, at most ``max_length`` characters (whole items are dropped from the end and replaced
    by ``+N~<hash>``)."""
    lines = [safe_name(line) for _, line in sorted(items, key=lambda item: _priority(item[0]))]
    name = ",".join(lines)
    if len(name) <= max_length:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    kept: list[str] = []
    for line in lines:
        tail = f"+{len(lines) - len(kept) - 1}~{digest}"
        if len(",".join([*kept, line, tail])) > max_length:
            break
        kept.append(line)
    return ",".join([*kept, f"+{len(lines) - len(kept)}~{digest}"])[-max_length:]


def dataset_name(overrides: list, choices: dict) -> str:
    """The dataset of a run: the folder name of ``data.root`` when given, else the ``data`` preset (synthetic3d, ...)."""
    for override in overrides:
        if override.key_or_group == "data.root" and not override.is_sweep_override() and override.value():
            return safe_name(str(override.value()).rstrip("/").rsplit("/", 1)[-1])
    return safe_name(str(choices.get("data") or ""))


def _line(override: Any) -> str:
    """``key=value`` as typed, with floats to 4 significant digits (Optuna's ``loss.alpha=0.39963209507789``
    names a run ``loss.alpha=0.3996``; the exact value is in the run's config)."""
    value = None if override.is_sweep_override() else override.value()
    if isinstance(value, float):
        return f"{override.key_or_group}={value:.4g}"
    return override.input_line


def short_lines(items: list[str]) -> list[str]:
    """Override texts as run names show them (``_line``); the texts unchanged when Hydra cannot parse them."""
    try:
        return [_line(override) for override in _parse(items)]
    except Exception:  # noqa: BLE001 - naming only
        return list(items)


def run_name() -> str:
    """The current job's name: its dataset, then its overrides (``Task03_Liver_loss=tversky,loss.alpha=0.3``)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    exclude = set(hc.job.config.override_dirname.exclude_keys or [])
    try:
        overrides = _parse(list(hc.overrides.task))
    except Exception:  # noqa: BLE001 - never let naming break a run: fall back to Hydra's own name
        name = str(hc.job.override_dirname)
        return join_overrides([(name, name)])
    dataset = dataset_name(overrides, dict(hc.runtime.choices))
    keep = [o for o in overrides if o.key_or_group not in exclude and not (o.key_or_group == "data" and o.value() == dataset)]
    if hc.mode == RunMode.MULTIRUN and _swept_keys:
        swept = [o for o in keep if o.key_or_group in _swept_keys]
        keep = swept or keep
    name = join_overrides([(o.key_or_group, _line(o)) for o in keep], MAX_LENGTH - len(dataset) - 1)
    return "_".join(part for part in (dataset, name) if part)


def _suffixed(prefix: Any = "") -> str:
    """``${segtrain.run_name:PREFIX}``: PREFIX + "_" + name, or PREFIX alone when the name is empty."""
    name = run_name()
    prefix = "" if prefix is None else str(prefix)
    return f"{prefix}_{name}" if prefix and name else (prefix or name)


def register_resolver() -> None:
    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, _suffixed, use_cache=False)


class RunNames(Callback):
    """Hydra callback: registers ``${segtrain.run_name:}``; in a multirun, records the swept keys."""

    def __init__(self) -> None:
        register_resolver()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _swept_keys
        keys: set[str] = set()
        try:
            task = OmegaConf.to_container(config.hydra.overrides.task, resolve=False)
            keys = {o.key_or_group for o in _parse(task) if o.is_sweep_override()}
        except Exception:  # noqa: BLE001 - naming only
            pass
        params = OmegaConf.select(config, "hydra.sweeper.params")  # e.g. Optuna's search space
        if params:
            keys |= set(params.keys())
        _swept_keys = keys
