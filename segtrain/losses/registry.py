"""Name → loss class registry, with eager validation of parameter names."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

from torch import nn

_REGISTRY: dict[str, type[nn.Module]] = {}


def register(name: str):
    """Class decorator: make a loss available as ``loss=<name>``."""

    def decorator(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"loss name '{name}' is registered twice ({_REGISTRY[name].__name__}, {cls.__name__})")
        cls.registry_name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


FAMILIES = ("crossentropy", "overlap", "compound", "lovasz", "boundary")  # the modules whose classes register


def _registered() -> dict[str, type[nn.Module]]:
    """The registry, after importing the family modules (their ``@register`` fills it)."""
    if not _REGISTRY:
        import importlib

        for family in FAMILIES:
            importlib.import_module(f"segtrain.losses.{family}")
    return _REGISTRY


def available_losses() -> list[str]:
    """Sorted list of every registered loss name."""
    return sorted(_registered())


def loss_parameters(name: str) -> dict[str, Any]:
    """Parameter names of a registered loss with their defaults."""
    return _parameters(_get(name))[0]


def _get(name: str) -> type[nn.Module]:
    if name not in _registered():
        raise ValueError(f"unknown loss '{name}'; available losses: {', '.join(available_losses())}")
    return _REGISTRY[name]


def build_loss(name: str, **params: Any) -> nn.Module:
    """Build the registered loss ``name`` with ``params``; unknown names or parameters raise ValueError."""
    return _build(_get(name), name, params)


def _parameters(cls: type) -> tuple[dict[str, Any], bool]:
    """The keyword parameters of ``cls(...)`` with their defaults, and whether it takes ``**kwargs``."""
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    named = {p.name: (None if p.default is inspect.Parameter.empty else p.default)
             for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return named, any(p.kind == p.VAR_KEYWORD for p in params)


def _build(cls: type, label: str, params: dict[str, Any]) -> nn.Module:
    allowed, open_ended = _parameters(cls)
    unknown = sorted(set(params) - set(allowed))
    if unknown and not open_ended:
        raise ValueError(
            f"loss '{label}' has no parameter {', '.join(repr(u) for u in unknown)}; "
            f"its parameters are: {', '.join(allowed) or '(none)'}"
        )
    return cls(**params)


def loss_from_config(config: dict[str, Any]) -> nn.Module:
    """The loss a ``loss`` config describes, as a ``SegmentationLoss``.

    ``name: <registry name>`` builds a registered loss (``segtrain-losses`` lists them);
    ``_target_: package.module.Class`` builds any class, a user's own loss included (found through
    ``--config-dir``, see docs/losses.md). Both check the parameter names against the constructor
    and let it check their values. A loss that is a plain ``nn.Module`` (``forward(logits, target)``
    → scalar) is wrapped in ``ModuleLoss``, so that it is logged, checked and deep-supervised as the
    registry's losses are.

    Raises:
        ValueError: no loss named, an unknown loss or parameter, a value the constructor refuses, or a
            ``_target_`` that cannot be imported or is not an ``nn.Module``.
    """
    from hydra.utils import get_class

    from segtrain.losses.base import ModuleLoss, SegmentationLoss

    params = {k: v for k, v in config.items() if k not in ("_target_", "name")}
    target, name = config.get("_target_"), config.get("name")
    if target is None and name is None:
        raise ValueError("loss.name is missing; choose a loss with loss=<name> (segtrain-losses lists them) "
                         "or give loss._target_=<package.Class> (docs/losses.md)")
    if target is None:
        return build_loss(str(name), **params)
    try:
        cls = get_class(str(target))
    except Exception as err:  # noqa: BLE001 - hydra wraps ImportError/AttributeError alike
        raise ValueError(f"loss._target_={target} cannot be imported ({' '.join(str(err).split())[:200]}); "
                         "put its module on the Python path (the --config-dir folder is on it)") from None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"loss._target_={target} is not a torch.nn.Module class")
    label = str(name or cls.__name__)
    try:
        loss = _build(cls, label, params)
    except ValueError as err:  # the class's own checks name it by its class; the config's name is what users typed
        own = f"loss '{getattr(cls, 'registry_name', cls.__name__)}':"
        raise ValueError(str(err).replace(own, f"loss '{label}':", 1)) from None
    if isinstance(loss, SegmentationLoss):
        loss.registry_name = label
        return loss
    return ModuleLoss(loss, label)


def loss_name(config: dict[str, Any]) -> str:
    """How a run's loss is shown (logs, run names, ``segtrain-compare --group-by loss``): ``name``, else the class."""
    if config.get("name"):
        return str(config["name"])
    return str(config.get("_target_", "?")).rsplit(".", 1)[-1]


def describe_losses(config_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """One record per loss: name, one-line summary (first docstring line), parameters with defaults.

    With ``config_dir`` (the folder holding ``train/loss_<name>.yaml``), each record also gets ``help``:
    parameter → the one-line comment of its line in the loss's config file.
    """
    rows = []
    for name in available_losses():
        doc = inspect.getdoc(_registered()[name]) or ""
        row = {"name": name, "summary": doc.splitlines()[0] if doc else "", "params": loss_parameters(name)}
        if config_dir is not None:
            row["help"] = parameter_comments(Path(config_dir) / "loss" / f"{name}.yaml")
        rows.append(row)
    return rows


def parameter_comments(path: str | Path) -> dict[str, str]:
    """``key: value  # comment`` lines of a flat config file → {key: comment}; {} when the file is missing."""
    path = Path(path)
    if not path.is_file():
        return {}
    comments = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z_][A-Za-z0-9_]*):[^#]*#\s*(.*)$", line)
        if match:
            comments[match.group(1)] = match.group(2).strip()
    return comments
