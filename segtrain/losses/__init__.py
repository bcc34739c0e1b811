"""The loss registry: ``build_loss(name, **params)`` and ``available_losses()``.

Every loss takes raw logits ``(B, C, *S)`` and an integer label map ``(B, 1, *S)`` or ``(B, *S)``
and owns the activation (sigmoid for ``C == 1``, softmax otherwise) and the one-hot step.
See docs/losses.md for the contract and ``segtrain-losses`` for the list.

The names below load on first use (with torch), so that ``segtrain.losses.params`` checks a command
line's loss parameters without torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {"available_losses": "registry", "build_loss": "registry", "describe_losses": "registry", "register": "registry"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"segtrain.losses.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'segtrain.losses' has no attribute {name!r}")
