"""The train/validation split: deterministic by case id (``split.json`` in the run dir)."""

from __future__ import annotations

import numpy as np

from segtrain.errors import ConfigError, DataError


def split_cases(case_ids: list[str], fold: int | None = None, num_folds: int = 5,
                val_fraction: float = 0.2) -> tuple[list[str], list[str]]:
    """Deterministic split by sorted case id: fold ``fold`` of ``num_folds`` or a ``val_fraction``."""
    ids = sorted(case_ids)
    order = np.random.RandomState(12345).permutation(len(ids))
    shuffled = [ids[i] for i in order]
    if len(ids) < 2:
        raise DataError(f"data.root has {len(ids)} case(s); at least 2 are needed (one to train, one to validate)")
    if fold is not None:
        k = int(num_folds)
        if k < 2 or k > len(ids):
            raise ConfigError(f"data.num_folds={k} must lie in [2, {len(ids)}] (the number of cases)")
        if not 0 <= int(fold) < k:
            raise ConfigError(f"data.fold={fold} must lie in [0, {k - 1}] for data.num_folds={k}")
        val = set(shuffled[int(fold)::k])
    else:
        fraction = float(val_fraction)
        if not 0.0 < fraction < 1.0:
            raise ConfigError(f"data.val_fraction={fraction} must lie strictly between 0 and 1")
        n_val = min(len(ids) - 1, max(1, round(fraction * len(ids))))
        val = set(shuffled[:n_val])
    return [i for i in ids if i not in val], [i for i in ids if i in val]
