"""The train/validation(/test) split: deterministic by case id (``split.json`` in the run dir)."""

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


def hold_out(case_ids: list[str], fraction: float) -> tuple[list[str], list[str]]:
    """(kept, test): a deterministic ``fraction`` of the cases (by sorted id, its own seed) set aside as a test set.

    Drawn before, and independently of, the train/validation split, so changing ``data.fold`` or
    ``data.val_fraction`` never moves a case into or out of the test set.
    """
    ids = sorted(case_ids)
    if not fraction:
        return ids, []
    n_test = max(1, round(float(fraction) * len(ids)))
    if len(ids) - n_test < 2:
        raise ConfigError(f"data.test_fraction={fraction} leaves {len(ids) - n_test} of {len(ids)} cases to train and "
                          "validate on; at least 2 are needed: lower data.test_fraction")
    order = np.random.RandomState(54321).permutation(len(ids))
    test = {ids[i] for i in order[:n_test]}
    return [i for i in ids if i not in test], [i for i in ids if i in test]
