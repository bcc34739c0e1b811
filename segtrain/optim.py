"""The optimiser and its schedule (``configs/optim/``), and what a resumed run applies of a changed config.

Lightning restores a resumed run's optimizer and scheduler from the checkpoint, hyper-parameters included:
a learning rate changed on the command line would be announced and then ignored. ``apply_to_restored``
rebuilds the hyper-parameters of every parameter group and the schedule from the run's current config,
keeping what the run has learned (the optimizer's moments, the schedule's position).
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import torch

log = logging.getLogger("segtrain")

# Entries of a scheduler's state that are its position, not its settings.
SCHEDULE_POSITION = ("last_epoch", "_step_count", "_last_lr", "_get_lr_called_within_step", "verbose", "_is_initial")


def _settings(state: dict) -> dict:
    return {k: v for k, v in state.items() if k not in SCHEDULE_POSITION}


def _differs(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) != len(b) or any(_differs(x, y) for x, y in zip(a, b))
    return a != b


def apply_to_restored(optimizer, scheduler, optimizer_factory, scheduler_factory=None,
                      schedule_lengths: dict | None = None) -> list[str]:
    """Make a restored ``optimizer`` (and its ``scheduler``) follow the current config; returns what changed.

    Every hyper-parameter of the parameter groups (lr, weight decay, momentum, betas, ...) is taken from an
    optimizer the factory builds afresh; the state (moments, step counts) stays. The schedule is rebuilt
    from its factory (with ``schedule_lengths``, the lengths that follow the run) and stepped to the
    restored position, and the learning rates are set from it. Nothing is touched when nothing changed,
    so an unchanged resume stays exact.
    """
    changes = []
    fresh = optimizer_factory(params=[p for group in optimizer.param_groups for p in group["params"]])
    for index, (group, new) in enumerate(zip(optimizer.param_groups, fresh.param_groups)):
        for key, value in new.items():
            # a scheduled lr moves: the configured one is the schedule's start (initial_lr)
            old = group.get("initial_lr", group.get(key)) if key == "lr" else group.get(key)
            if key in ("params", "initial_lr") or not _differs(old, value):
                continue
            changes.append(f"{key} {old} → {value}" + (f" (group {index})" if len(optimizer.param_groups) > 1 else ""))
            group[key] = value
    if scheduler is None or scheduler_factory is None:
        return changes
    dummy = optimizer_factory(params=[torch.nn.Parameter(torch.zeros(1)) for _ in optimizer.param_groups])
    rebuilt = scheduler_factory(optimizer=dummy, **(schedule_lengths or {}))
    before = _settings(scheduler.state_dict())
    lr_changed = any(key.startswith("lr ") for key in changes)
    if not lr_changed and not _differs(before, _settings(rebuilt.state_dict())):
        return changes
    with warnings.catch_warnings():  # the rebuilt schedule is stepped on a stand-in: no real optimizer step precedes it
        warnings.filterwarnings("ignore", message=r".*lr_scheduler\.step\(\)` before `optimizer\.step\(\)`.*")
        for _ in range(scheduler.last_epoch):
            rebuilt.step()
    for key, value in _settings(rebuilt.state_dict()).items():
        if key != "base_lrs" and _differs(before.get(key), value):
            changes.append(f"schedule {key} {before.get(key)} → {value}")
    position = {k: v for k, v in scheduler.state_dict().items() if k in ("last_epoch", "_step_count")}
    scheduler.load_state_dict({**rebuilt.state_dict(), **position})
    rates = rebuilt.get_last_lr()
    for group, rate, base in zip(optimizer.param_groups, rates, rebuilt.base_lrs):
        group["lr"], group["initial_lr"] = rate, base
    scheduler._last_lr = list(rates)
    return changes
