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


def available_losses() -> list[str]:
    """Sorted list of every registered loss name."""
    return sorted(_REGISTRY)


def loss_parameters(name: str) -> dict[str, Any]:
    """Parameter names of a registered loss with their defaults."""
    cls = _get(name)
    params = inspect.signature(cls.__init__).parameters
    return {
        p.name: (None if p.default is inspect.Parameter.empty else p.default)
        for p in list(params.values())[1:]
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def _get(name: str) -> type[nn.Module]:
    if name not in _REGISTRY:
        raise ValueError(f"unknown loss '{name}'; available losses: {', '.join(available_losses())}")
    return _REGISTRY[name]


def build_loss(name: str, **params: Any) -> nn.Module:
    """Build the registered loss ``name`` with ``params``; unknown names or parameters raise ValueError."""
    cls = _get(name)
    allowed = loss_parameters(name)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(
            f"loss '{name}' has no parameter {', '.join(repr(u) for u in unknown)}; "
            f"its parameters are: {', '.join(allowed) or '(none)'}"
        )
    return cls(**params)


def describe_losses(config_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """One record per loss: name, one-line summary (first docstring line), parameters with defaults.

    With ``config_dir`` (the folder holding ``loss/<name>.yaml``), each record also gets ``help``:
    parameter → the one-line comment of its line in the loss's config file.
    """
    rows = []
    for name in available_losses():
        doc = inspect.getdoc(_REGISTRY[name]) or ""
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
