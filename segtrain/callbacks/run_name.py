"""Run names from the command-line overrides, for run directories (and so TensorBoard run names).

``segtrain data=nifti data.root=/data/Task03_Liver loss=tversky loss.alpha=0.7`` runs in
``.../runs/loss=tversky,loss.alpha=0.7_Task03_Liver_<time>``: the overrides (the loss first, and always:
``segtrain`` alone runs in ``loss=dice_ce_synthetic3d_<time>``), then the dataset (``data.root``'s folder
name, else the ``data`` preset), then the time. What differs between runs comes first, so TensorBoard's
run list and HParams table, which cut long names after a dozen characters, show it rather than a column
of identical dates or dataset names. ``segtrain -m loss=dice,tversky`` puts its jobs in
``<sweep dir>/0_loss=dice_synthetic3d``, ``1_loss=tversky_synthetic3d``: a multirun names its jobs by the
swept parameters only (the fixed ones are the same for all).

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
    """The loss and its parameters first, then the other group choices (model=, ...), then model, optim, data
    parameters, then the rest."""
    if key == "loss":
        return (0, key)
    group = key.split(".", 1)[0]
    if group == "loss":
        return (1, key)
    if "." not in key:
        return (2, key)
    return ({"model": 3, "optim": 4, "data": 5}.get(group, 6), key)


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
    """The current job's name: its overrides, then its dataset (``loss=tversky,loss.alpha=0.3_Task03_Liver``)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    exclude = set(hc.job.config.override_dirname.exclude_keys or [])
    try:
        overrides = _parse(list(hc.overrides.task))
    except Exception:  # noqa: BLE001 - never let naming break a run: fall back to Hydra's own name
        name = str(hc.job.override_dirname)
        return join_overrides([(name, name)])
    choices = dict(hc.runtime.choices)
    dataset = dataset_name(overrides, choices)
    keep = [o for o in overrides if o.key_or_group not in exclude and not (o.key_or_group == "data" and o.value() == dataset)]
    items = [(o.key_or_group, _line(o)) for o in keep]
    if hc.mode == RunMode.MULTIRUN and _swept_keys:
        swept = [item for item in items if item[0] in _swept_keys]
        items = swept or items
    elif choices.get("loss") and not any(key == "loss" for key, _ in items):  # a run names its loss, chosen or not
        items.insert(0, ("loss", f"loss={choices['loss']}"))
    name = join_overrides(items, MAX_LENGTH - len(dataset) - 1)
    return "_".join(part for part in (name, dataset) if part)


def _suffixed(prefix: Any = "", suffix: Any = "") -> str:
    """``${segtrain.run_name:PREFIX,SUFFIX}``: PREFIX, the name and SUFFIX joined by "_" (the empty ones left out):
    a sweep's job number first (``0_...``), a single run's time last (``..._2026-12-04_10-00-00``)."""
    parts = ["" if prefix is None else str(prefix), run_name(), "" if suffix is None else str(suffix)]
    return "_".join(part for part in parts if part)


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
