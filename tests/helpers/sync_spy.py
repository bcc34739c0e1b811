"""A callback that records every host synchronisation a training step makes (for ``tests/test_gpu_ready.py``).

On a CPU nothing synchronises, so it watches the calls that would on a GPU: a tensor read back to the
host (``item``, ``tolist``, ``numpy``, ``cpu``, ``bool(t)``, ``float(t)``, ``int(t)``, ``np.asarray(t)``).
It records them from the first step on (but in data loading: ``torch/utils/data`` in the stack, which
on a GPU runs in the workers; and torch's optimizers reading their step counters, which they keep on
the host), with the training step they fall in, into ``out`` (JSON) when training ends.
"""

from __future__ import annotations

import json
import traceback
from pathlib import Path

import torch
from lightning.pytorch import Callback

WATCHED = ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__", "__array__")


class SyncSpy(Callback):
    def __init__(self, out: str):
        self.out = Path(out)
        self.calls: list[dict] = []
        self._originals: dict[str, object] = {}
        self._step: int | None = None
        self._last_batch = False

    def _install(self) -> None:
        for name in WATCHED:
            original = getattr(torch.Tensor, name)
            self._originals[name] = original

            def spy(tensor, *args, _name=name, _original=original, **kwargs):
                stack = traceback.extract_stack()[:-1]
                # torch's optimizers keep their step counters on the host on purpose (``_get_value``): no sync there
                host_counter = "torch/optim/" in stack[-1].filename
                if self._step is not None and not host_counter and not any("torch/utils/data" in f.filename for f in stack):
                    where = [f"{Path(f.filename).parent.name}/{Path(f.filename).name}:{f.lineno} {f.name}"
                             for f in stack if "site-packages/torch/" not in f.filename][-6:]
                    self.calls.append({"step": self._step, "last_batch": self._last_batch, "call": _name, "where": where})
                return _original(tensor, *args, **kwargs)

            setattr(torch.Tensor, name, spy)

    def _remove(self) -> None:
        for name, original in self._originals.items():
            setattr(torch.Tensor, name, original)
        self._originals = {}

    def on_train_start(self, trainer, pl_module) -> None:
        self._install()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self._step = trainer.global_step  # the step this batch makes; its hooks run until the next batch starts
        self._last_batch = batch_idx + 1 >= trainer.num_training_batches

    def on_validation_start(self, trainer, pl_module) -> None:
        self._step = None

    def on_train_end(self, trainer, pl_module) -> None:
        self._remove()
        self.out.write_text(json.dumps(self.calls))

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._remove()
