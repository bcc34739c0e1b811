"""The loss registry: ``build_loss(name, **params)`` and ``available_losses()``.

Every loss takes raw logits ``(B, C, *S)`` and an integer label map ``(B, 1, *S)`` or ``(B, *S)``
and owns the activation (sigmoid for ``C == 1``, softmax otherwise) and the one-hot step.
See docs/losses.md for the contract and ``segtrain-losses`` for the list.
"""

from segtrain.losses.registry import available_losses, build_loss, describe_losses, register

# Importing the family modules registers their losses.
from segtrain.losses import crossentropy, overlap, compound, lovasz, boundary  # noqa: E402,F401  isort: skip

__all__ = ["available_losses", "build_loss", "describe_losses", "register"]
