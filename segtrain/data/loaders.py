"""Loaders: the training order and seeding that make a resume exact, DDP shards, batching, worker counts."""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

from segtrain.errors import ConfigError


def collate_patches(items: list[dict]) -> dict:
    """Stack training patches with NumPy (single-threaded), augmentation parameters into ``AugmentParams``,
    other values into lists.

    torch.stack in the training process wakes torch's intra-op thread pool for every batch; on a busy
    small CPU box that cost ~25 ms per batch of two 48^3 patches, against <1 ms for np.stack.
    """
    from segtrain.augment.params import PARAMS_KEY, AugmentParams

    out = {}
    for key in items[0]:
        values = [item[key] for item in items]
        if key == PARAMS_KEY:
            out[key] = AugmentParams.collate(values)
        elif all(torch.is_tensor(v) or isinstance(v, np.ndarray) for v in values):
            arrays = [v.detach().cpu().numpy() if torch.is_tensor(v) else v for v in values]
            out[key] = torch.from_numpy(np.stack(arrays))
        elif all(isinstance(v, (int, float)) for v in values):
            out[key] = torch.tensor(values)
        else:
            out[key] = values
    return out


class PrepareBatch:
    """A collated training batch → augmented (``segtrain.augment.batched``) with the loss's label maps
    (``segtrain.losses.maps``), computed from the augmented labels; on whatever device the batch is.

    On a CPU it runs in the data workers (``TrainCollate``); on a GPU right after the batch's
    transfer (``SegmentationDataModule.on_after_batch_transfer``).
    """

    def __init__(self, augmenter=None, label_maps: dict | None = None, spacing=None, num_classes: int | None = None):
        self.augmenter, self.label_maps = augmenter, dict(label_maps or {})
        self.spacing, self.num_classes = spacing, num_classes

    def __call__(self, batch: dict) -> dict:
        from segtrain.augment.params import PARAMS_KEY

        if PARAMS_KEY in batch:
            batch = self.augmenter(batch) if self.augmenter is not None else {k: v for k, v in batch.items() if k != PARAMS_KEY}
        batch = dict(batch)
        for name, fn in self.label_maps.items():
            batch[name] = fn(batch["label"], self.spacing, num_classes=self.num_classes)
        return batch


class TrainCollate:
    """The training loader's ``collate_fn``: stack the items, then ``prepare`` the batch (a ``PrepareBatch``)
    when it is augmented on the CPU (in the worker); None leaves that to the training device."""

    def __init__(self, prepare: PrepareBatch | None = None):
        self.prepare = prepare

    def __call__(self, items: list[dict]) -> dict:
        batch = collate_patches(items)
        return self.prepare(batch) if self.prepare is not None else batch


def patch_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of training item ``index`` in ``epoch``: a pure function, so any worker, rank or resumed run draws the same patch."""
    return int(np.random.SeedSequence([int(seed), int(epoch), int(index)]).generate_state(1)[0])


class _Repeat:
    """The training cases seen ``length`` times per epoch (cases cycle), so an epoch is a fixed number of patches.

    Items are addressed by ``(epoch, index)`` (``EpochSampler``); the random part of the pipeline
    (patch centre, flips) is re-seeded from ``patch_seed(seed, epoch, index)`` before each item.
    """

    def __init__(self, dataset, length: int, seed: int = 0):
        self.dataset, self.length, self.seed = dataset, length, int(seed or 0)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key):
        epoch, index = key if isinstance(key, tuple) else (0, key)
        self.dataset.transform.set_random_state(seed=patch_seed(self.seed, epoch, index))
        return self.dataset[index % len(self.dataset)]


class EpochSampler(DistributedSampler):
    """The order of the training items: a permutation per epoch from ``(seed, epoch)``, sharded across DDP ranks.

    Yields ``(epoch, index)`` keys (see ``_Repeat``). A ``DistributedSampler``, so that Lightning
    keeps it under DDP and calls ``set_epoch`` each epoch; ``skip`` drops the first items of the next
    iteration only (a resumed epoch skips what the interrupted run already trained on).
    """

    def __init__(self, dataset, seed: int, num_replicas: int = 1, rank: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=int(seed or 0), drop_last=False)
        self.skip = 0

    def __iter__(self):
        epoch, skip, self.skip = self.epoch, self.skip, 0
        return iter([(epoch, index) for index in list(super().__iter__())[skip:]])


class ResumableLoader(torch.utils.data.DataLoader):
    """A training loader that Lightning checkpoints mid-epoch (its ``state_dict`` goes into every checkpoint).

    The state is the epoch and the number of batches handed out; ``load_state_dict`` makes the next
    iteration start after them. With ``EpochSampler``'s order and ``_Repeat``'s seeding, the rest of
    a resumed epoch is batch for batch what the uninterrupted run trained on, whatever the workers.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches_done = 0

    def __iter__(self):
        self.batches_done = self.sampler.skip // max(self.batch_size or 1, 1)
        for batch in super().__iter__():
            self.batches_done += 1
            yield batch

    def state_dict(self) -> dict:
        return {"epoch": self.sampler.epoch, "batches": self.batches_done}

    def load_state_dict(self, state: dict) -> None:
        epoch, batches = int(state.get("epoch", 0)), int(state.get("batches", 0))
        if batches >= len(self):  # saved at the epoch's end: the next epoch starts afresh
            epoch, batches = epoch + 1, 0
        self.sampler.set_epoch(epoch)
        self.sampler.skip = batches * int(self.batch_size or 1)


MAX_WORKERS = 12  # nnU-Net's default number of augmentation processes


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity: a SLURM or container allotment), not the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def resolve_workers(value, augmentation=None, augment_device: str = "cpu", processes_per_node: int = 1) -> int:
    """``data.num_workers``: a number, or ``auto``: this process's share of its usable CPUs, less one for the
    training process, up to 12 (nnU-Net's); none when the batch is only mirrored on a CPU (cheap, in-process)."""
    from segtrain.data.options import check_workers

    workers = check_workers(value)
    if workers is not None:
        return workers
    if augment_device == "cpu" and (augmentation is None or augmentation.mirroring_only):
        return 0
    return max(1, min(MAX_WORKERS, usable_cpus() // max(int(processes_per_node), 1) - 1))


def worker_threads(_worker_id: int) -> None:
    """Data-loader worker start: one torch thread, so that the workers and the training process share the cores."""
    torch.set_num_threads(1)


def _world() -> tuple[int, int]:
    """(world size, rank) of the DDP process group, (1, 0) outside DDP."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class _PaddedShards:
    """Validation cases padded to a multiple of the world size; padding items carry ``count = 0``.

    Every rank runs the same number of steps (no rank idles through a collective), while the
    metrics skip the padding, so the summed counts are exactly those of each case once.
    """

    def __init__(self, dataset, world_size: int):
        self.dataset = dataset
        self.length = -(-len(dataset) // world_size) * world_size

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        item = dict(self.dataset[index % len(self.dataset)])
        item["count"] = int(index < len(self.dataset))
        return item


class _ShardSampler(DistributedSampler):
    """Rank ``r`` takes items r, r + W, r + 2W, ... (a DistributedSampler so that Lightning keeps it)."""

    def __init__(self, dataset, num_replicas: int, rank: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)

    def __iter__(self):
        return iter(range(self.rank, len(self.dataset), self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, len(self.dataset), self.num_replicas))
