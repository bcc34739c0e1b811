"""Lightning callbacks of segtrain (configured in ``configs/callbacks/``), and how a config becomes them.

Every entry of the ``callbacks`` group (and of ``logger``) with a ``_target_`` is instantiated as it
is, the way lightning-hydra-template does; an entry set to null (``callbacks.overlays=null``, or
``~callbacks.overlays``) is simply absent, and so is what a factory entry returns as None
(``run_checkpoint`` and ``progress`` follow the trainer's ``enable_checkpointing`` and
``enable_progress_bar`` flags, which Lightning would otherwise refuse beside them).
"""

from __future__ import annotations

from typing import Any


def instantiate_all(entries: Any) -> list:
    """Each ``{_target_: ...}`` of a config group (a mapping of name → entry) or list, instantiated; others skipped."""
    from hydra.utils import instantiate
    from omegaconf import DictConfig

    if not entries:
        return []
    values = entries.values() if isinstance(entries, (dict, DictConfig)) else entries
    built = [instantiate(entry) for entry in values if isinstance(entry, (dict, DictConfig)) and "_target_" in entry]
    return [item for item in built if item is not None]  # a factory may build nothing (run_checkpoint, progress)
