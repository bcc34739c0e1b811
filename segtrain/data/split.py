"""The train/validation(/test) split: deterministic by case id, nnU-Net's folds, or a split file (``split.json`` in the run dir)."""

from __future__ import annotations

import numpy as np

from segtrain.errors import ConfigError, DataError


def nnunet_folds(case_ids: list[str], num_folds: int = 5, seed: int = 12345) -> list[list[str]]:
    """The validation cases of each fold, as nnU-Net v2 draws them (``generate_crossval_split``: scikit-learn's
    ``KFold(num_folds, shuffle=True, random_state=12345)`` over the sorted case ids), so a fold holds the same cases
    in segtrain and nnU-Net."""
    ids = sorted(case_ids)
    order = np.arange(len(ids))
    np.random.RandomState(seed).shuffle(order)
    sizes = np.full(num_folds, len(ids) // num_folds)
    sizes[: len(ids) % num_folds] += 1
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    return [sorted(ids[i] for i in order[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def read_split_file(path: str, fold: int | None, case_ids: list[str]) -> tuple[list[str], list[str]]:
    """(train, val) of ``fold`` in a split file: nnU-Net's ``splits_final.json`` (a list of {"train": [...],
    "val": [...]}, one per fold) or one such dict (no fold needed)."""
    import json
    from pathlib import Path

    file = Path(path).expanduser()
    try:
        splits = json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"data.split_file={path}: cannot read it as JSON ({err}); give nnU-Net's splits_final.json "
                          "(a list of {{\"train\": [...], \"val\": [...]}} per fold)") from None
    if isinstance(splits, dict):
        splits = [splits]
    if not isinstance(splits, list) or not all(isinstance(s, dict) and {"train", "val"} <= set(s) for s in splits):
        raise ConfigError(f"data.split_file={path} is not a list of {{\"train\": [...], \"val\": [...]}} (nnU-Net's "
                          "splits_final.json)")
    if fold is None and len(splits) > 1:
        raise ConfigError(f"data.split_file={path} holds {len(splits)} folds; choose one with data.fold=0..{len(splits) - 1}")
    index = int(fold or 0)
    if not 0 <= index < len(splits):
        raise ConfigError(f"data.fold={fold} is not in data.split_file={path}, which holds folds 0..{len(splits) - 1}")
    train, val = [str(c) for c in splits[index]["train"]], [str(c) for c in splits[index]["val"]]
    unknown = sorted(set(train + val) - set(case_ids))
    if unknown:
        raise ConfigError(f"data.split_file={path}: fold {index} names {len(unknown)} case(s) the dataset does not have, "
                          f"e.g. {unknown[0]}; give the split of this dataset")
    if not train or not val:
        raise ConfigError(f"data.split_file={path}: fold {index} has no {'training' if not train else 'validation'} case")
    return sorted(train), sorted(val)


def split_cases(case_ids: list[str], fold: int | None = None, num_folds: int = 5,
                val_fraction: float = 0.2, split_file: str | None = None) -> tuple[list[str], list[str]]:
    """Deterministic split by sorted case id: a ``split_file`` fold, nnU-Net's fold ``fold`` of ``num_folds``, or a
    ``val_fraction``."""
    ids = sorted(case_ids)
    if split_file:
        return read_split_file(split_file, fold, ids)
    if len(ids) < 2:
        raise DataError(f"data.root has {len(ids)} case(s); at least 2 are needed (one to train, one to validate)")
    if fold is not None:
        k = int(num_folds)
        if k < 2 or k > len(ids):
            raise ConfigError(f"data.num_folds={k} must lie in [2, {len(ids)}] (the number of cases)")
        if not 0 <= int(fold) < k:
            raise ConfigError(f"data.fold={fold} must lie in [0, {k - 1}] for data.num_folds={k}")
        val = set(nnunet_folds(ids, k)[int(fold)])
    else:
        fraction = float(val_fraction)
        if not 0.0 < fraction < 1.0:
            raise ConfigError(f"data.val_fraction={fraction} must lie strictly between 0 and 1")
        n_val = min(len(ids) - 1, max(1, round(fraction * len(ids))))
        order = np.random.RandomState(12345).permutation(len(ids))
        val = {ids[i] for i in order[:n_val]}
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
