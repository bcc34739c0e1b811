"""Non-finite guard: a NaN/Inf loss or gradient never reaches a checkpoint or goes unnoticed.

Before every optimizer step the guard flags, on the training device, a non-finite loss of the step
(of every accumulated micro-batch) or a non-finite total gradient norm. The flag stays on the device
(no host synchronisation per step: on a GPU that sync made each step 1.6x slower) and is read where
it matters: every ``trainer.log_every_n_steps`` steps (when the loss is logged anyway), before every
checkpoint write, at each epoch's end and when validation starts (``guard.on_nonfinite``):

- ``stop`` (default): the run ends with ``NonFiniteError`` (exit 3): one line naming the first bad
  step, the case ids of its batch and the likely causes. No checkpoint is written after that step;
  the last good one stays as it is.
- ``skip``: the bad step is undone on the device (every weight and optimizer state tensor restored
  from a copy taken before the step, so the update leaves them as they were; the optimizer's step
  counter on the host still counts it) and a warning names the skipped steps at the next read;
  once ``max_skipped`` steps were skipped the next bad step stops the run as with ``stop``.

Under fp16 mixed precision the gradient scaler already skips steps whose gradients overflow and
lowers its scale: that is normal, so only a non-finite loss counts there. The weights are checked
again when validation starts, and ``SafeCheckpointIO`` refuses to write non-finite weights.
"""

from __future__ import annotations

import logging

import torch
from lightning.pytorch import Callback

from segtrain.checkpoints import nonfinite_tensors
from segtrain.errors import NonFiniteError

log = logging.getLogger("segtrain")

MODES = ("stop", "skip")


def _total_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    if hasattr(torch.nn.utils, "get_total_norm"):  # torch >= 2.6: one fused reduction
        return torch.nn.utils.get_total_norm(tensors)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t.float()) for t in tensors]))


class _Ledger:
    """What the guard knows on the device: the first bad step (and its loss) since the last read, and, when
    skipping, the steps skipped and the first bad step beyond ``max_skipped``. Steps are -1 until set."""

    def __init__(self, device: torch.device):
        self.first_step = torch.full((), -1, dtype=torch.long, device=device)
        self.first_loss = torch.zeros((), device=device)
        self.first_in_loss = torch.zeros((), dtype=torch.bool, device=device)
        self.skipped = torch.zeros((), dtype=torch.long, device=device)
        self.over_step = torch.full((), -1, dtype=torch.long, device=device)

    def record(self, bad: torch.Tensor, step: int, loss: torch.Tensor, in_loss: torch.Tensor) -> None:
        new = bad & (self.first_step < 0)
        self.first_step = torch.where(new, step, self.first_step)
        self.first_loss = torch.where(new, loss.float(), self.first_loss)
        self.first_in_loss = torch.where(new, in_loss, self.first_in_loss)


class NonFiniteGuard(Callback):
    """Stops the run (or skips the step) on a NaN/Inf loss or gradient, reading its device flag only at intervals.

    Args:
        on_nonfinite: ``stop`` or ``skip``.
        max_skipped: with ``skip``, the number of skipped steps after which the next bad step stops the run.

    Raises:
        ValueError: an unknown ``on_nonfinite`` or a negative ``max_skipped``.
    """

    def __init__(self, on_nonfinite: str = "stop", max_skipped: int = 10):
        if on_nonfinite not in MODES:
            raise ValueError(f"guard.on_nonfinite={on_nonfinite!r} is unknown; use stop or skip")
        if int(max_skipped) < 0:
            raise ValueError(f"guard.max_skipped={max_skipped} must be >= 0")
        self.mode, self.max_skipped = on_nonfinite, int(max_skipped)
        self.skipped = 0          # steps skipped so far (host count, as of the last read; saved in checkpoints)
        self._ledger: _Ledger | None = None
        self._loss_bad: torch.Tensor | None = None    # this optimizer step's micro-batches: any non-finite loss
        self._loss_value: torch.Tensor | None = None
        self._batches: dict[int, tuple[int, list[str]]] = {}  # step -> (epoch, case ids), since the last read
        self._snapshot: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # skip: the tensors a step changes
        self._new_state: set[int] = set()   # skip: parameters without optimizer state before the step
        self._undo: torch.Tensor | None = None

    # -- per step, on the device -------------------------------------------------------------------------
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        ids = batch.get("id") if isinstance(batch, dict) else None
        epoch, seen = self._batches.setdefault(trainer.global_step, (trainer.current_epoch, []))
        seen += [str(i) for i in ids] if isinstance(ids, (list, tuple)) else []

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        loss = loss.detach()
        bad = ~torch.isfinite(loss).all()
        if self._loss_bad is None:
            self._loss_bad, self._loss_value = bad, loss
        else:  # keep the first offending micro-batch's value for the message
            self._loss_value = torch.where(bad & ~self._loss_bad, loss, self._loss_value)
            self._loss_bad = self._loss_bad | bad

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        device = pl_module.device
        if self._ledger is None:
            self._ledger = _Ledger(device)
        loss_bad = self._loss_bad if self._loss_bad is not None else torch.zeros((), dtype=torch.bool, device=device)
        loss_value = self._loss_value if self._loss_value is not None else torch.zeros((), device=device)
        self._loss_bad = self._loss_value = None
        bad = loss_bad.to(device)
        if getattr(trainer.precision_plugin, "scaler", None) is None:  # with a scaler, overflowing gradients are its business
            grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            if grads:
                bad = bad | ~torch.isfinite(_total_norm(grads)).to(device)
        if trainer.world_size > 1:  # every rank takes the same decision (a collective on the device, no host sync)
            bad = trainer.strategy.reduce(bad.to(torch.float32), reduce_op="max") > 0
        ledger = self._ledger
        if self.mode == "skip":
            undo = bad & (ledger.skipped < self.max_skipped)
            ledger.over_step = torch.where(bad & ~undo & (ledger.over_step < 0), trainer.global_step, ledger.over_step)
            ledger.skipped = ledger.skipped + undo.long()
            self._undo = undo
            self._snapshot = [(t, t.detach().clone()) for t in _step_tensors(optimizer)]
            self._new_state = {id(p) for group in optimizer.param_groups for p in group["params"]} - set(
                id(p) for p in optimizer.state)
        ledger.record(bad, trainer.global_step, loss_value.to(device), loss_bad.to(device))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self._snapshot is not None:  # skip: undo the update of a bad step on the device
            self._restore(trainer)
        if trainer.global_step % max(int(trainer.log_every_n_steps), 1) == 0:
            self.check(trainer)

    def _restore(self, trainer) -> None:
        undo, snapshot, self._snapshot = self._undo, self._snapshot, None
        with torch.no_grad():
            for tensor, before in snapshot:
                tensor.copy_(torch.where(undo, before, tensor))
            for optimizer in trainer.optimizers:  # state the bad step created (its first): back to zeros
                for param, state in optimizer.state.items():
                    if id(param) in self._new_state:
                        for value in state.values():
                            if torch.is_tensor(value) and value.is_floating_point() and value.device == param.device:
                                value.copy_(torch.where(undo, torch.zeros_like(value), value))

    # -- the reads: the only host synchronisations -------------------------------------------------------
    def check(self, trainer) -> None:
        """Read the device flags: stop with one line, or (skip) report the steps skipped since the last read."""
        ledger = self._ledger
        if ledger is None:
            return
        first, over, skipped = torch.stack([ledger.first_step, ledger.over_step, ledger.skipped]).tolist()
        batches, self._batches = self._batches, {}
        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        if over >= 0 or (first >= 0 and self.mode == "stop"):
            step = over if over >= 0 else first
            previous = min(skipped, self.max_skipped) if self.mode == "skip" else 0
            self.skipped = previous
            raise NonFiniteError(self._message(trainer, optimizer, self._where(ledger, step, batches), previous))
        if first >= 0:
            newly = skipped - self.skipped
            self.skipped = skipped
            log.warning("segtrain: skipped %d step(s) with non-finite values: %s (%d of guard.max_skipped=%d)",
                        newly, self._where(ledger, first, batches), skipped, self.max_skipped)
            ledger.first_step.fill_(-1)

    def _where(self, ledger: _Ledger, step: int, batches: dict[int, tuple[int, list[str]]]) -> str:
        epoch, ids = batches.get(step, (None, []))
        in_loss = bool(ledger.first_in_loss) if step == int(ledger.first_step) else None
        what = "loss" if in_loss else "gradients" if in_loss is False else "loss or gradients"
        loss = f" (loss {float(ledger.first_loss):.4g})" if step == int(ledger.first_step) else ""
        at = f"at step {step}" + (f" (epoch {epoch})" if epoch is not None else "")
        return f"non-finite {what}{loss} {at}; batch cases: {', '.join(ids) or 'unknown'}"

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.check(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self.check(trainer)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        self.check(trainer)  # raising here writes nothing: no checkpoint follows a bad step

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        self.check(trainer)
        bad = nonfinite_tensors(pl_module.named_parameters())
        if bad:
            raise NonFiniteError(self._message(
                trainer, trainer.optimizers[0] if trainer.optimizers else None,
                f"the weights hold NaN/Inf after step {trainer.global_step} ({len(bad)} tensor(s), first: {bad[0]})"))

    def _message(self, trainer, optimizer, where: str, skipped: int = 0) -> str:
        lr = optimizer.param_groups[0].get("lr") if optimizer is not None else None
        causes = [f"a learning rate too high (optim.optimizer.lr, now {lr:.3g})" if lr is not None else "a learning rate too high",
                  "extreme image intensities (see dataset_report.txt)"]
        if "16" in str(trainer.precision) and "bf16" not in str(trainer.precision):
            causes.append("fp16 overflow (trainer.precision=bf16-mixed)")
        before = f"; {skipped} step(s) were skipped before" if skipped else ""
        hint = "" if self.mode == "skip" else "; guard.on_nonfinite=skip skips such steps instead"
        return f"{where}{before}. Likely causes: {', '.join(causes)}. {_last_checkpoint(trainer)}{hint}"

    def state_dict(self) -> dict:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict) -> None:
        self.skipped = int(state_dict.get("skipped", 0))
        if self._ledger is not None:
            self._ledger.skipped.fill_(self.skipped)

    def on_fit_start(self, trainer, pl_module) -> None:
        self._ledger = _Ledger(pl_module.device)
        self._ledger.skipped.fill_(self.skipped)


def _step_tensors(optimizer) -> list[torch.Tensor]:
    """Every tensor an optimizer step changes on the parameters' device: the parameters and their state."""
    out = []
    for group in optimizer.param_groups:
        for param in group["params"]:
            out.append(param.data)
            for value in optimizer.state.get(param, {}).values():
                if torch.is_tensor(value) and value.is_floating_point() and value.device == param.device:
                    out.append(value)
    return out


def _last_checkpoint(trainer) -> str:
    from segtrain.callbacks.checkpoint import RunCheckpoint

    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, RunCheckpoint) and callback.last_path.is_file():
            epoch = f", epoch {callback.last_epoch_saved}" if callback.last_epoch_saved is not None else ""
            return f"The run stopped; its last good checkpoint is kept ({callback.last_path}{epoch})"
    return "The run stopped before writing any checkpoint"
