"""Non-finite guard: a NaN/Inf loss or gradient never reaches the weights unnoticed.

Before every optimizer step the guard checks the step's loss (every accumulated micro-batch) and
the total gradient norm, with one host synchronisation per step (``guard.on_nonfinite``):

- ``stop`` (default): the run ends with ``NonFiniteError`` (exit 3): one line naming the step, the
  case ids of the batch and the likely causes; the weights are those of the last good step and
  the last good checkpoint stays as it is.
- ``skip``: the step is skipped (the gradients are dropped, so the optimizer leaves every weight
  and its state alone) and a warning names the batch; after ``max_skipped`` skipped steps the run
  stops as with ``stop``.

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


class NonFiniteGuard(Callback):
    """Stops the run (or skips the step) on a NaN/Inf loss or gradient.

    Args:
        on_nonfinite: ``stop`` or ``skip``.
        max_skipped: with ``skip``, the number of skipped steps after which the run stops anyway.

    Raises:
        ValueError: an unknown ``on_nonfinite`` or a negative ``max_skipped``.
    """

    def __init__(self, on_nonfinite: str = "stop", max_skipped: int = 10):
        if on_nonfinite not in MODES:
            raise ValueError(f"guard.on_nonfinite={on_nonfinite!r} is unknown; use stop or skip")
        if int(max_skipped) < 0:
            raise ValueError(f"guard.max_skipped={max_skipped} must be >= 0")
        self.mode, self.max_skipped = on_nonfinite, int(max_skipped)
        self.skipped = 0
        self._loss_finite: torch.Tensor | None = None
        self._loss_value: torch.Tensor | None = None
        self._case_ids: list[str] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        ids = batch.get("id") if isinstance(batch, dict) else None
        self._case_ids += [str(i) for i in ids] if isinstance(ids, (list, tuple)) else []

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        finite = torch.isfinite(loss.detach()).all()
        if self._loss_finite is None or not bool(finite):  # keep the first offending value for the message
            self._loss_value = loss.detach()
        self._loss_finite = finite if self._loss_finite is None else self._loss_finite & finite

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        loss_finite = self._loss_finite if self._loss_finite is not None else torch.tensor(True)
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        grads_finite = torch.tensor(True, device=loss_finite.device)
        if scaler is None:  # with a scaler, overflowing gradients are the scaler's business
            grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            if grads:
                grads_finite = torch.isfinite(_total_norm(grads))
        bad = ~(loss_finite & grads_finite.to(loss_finite.device))
        if trainer.world_size > 1:  # every rank takes the same decision
            bad = trainer.strategy.reduce(bad.to(trainer.strategy.root_device, torch.float32), reduce_op="max") > 0
        ids, loss_value, self._case_ids, self._loss_finite = self._case_ids, self._loss_value, [], None
        if not bool(bad):  # the one host synchronisation per step
            return
        what = "loss" if not bool(loss_finite) else "gradients"
        where = (f"non-finite {what} (loss {float(loss_value) if loss_value is not None else float('nan'):.4g}) "
                 f"at step {trainer.global_step} (epoch {trainer.current_epoch}); batch cases: {', '.join(ids) or 'unknown'}")
        if self.mode == "skip" and self.skipped < self.max_skipped:
            self.skipped += 1
            if scaler is None:
                optimizer.zero_grad(set_to_none=True)  # parameters without gradients are left alone by the step
            log.warning("segtrain: skipped the step: %s (%d of guard.max_skipped=%d)", where, self.skipped, self.max_skipped)
            return
        raise NonFiniteError(self._message(trainer, optimizer, where))

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        bad = nonfinite_tensors(pl_module.named_parameters())
        if bad:
            raise NonFiniteError(self._message(
                trainer, trainer.optimizers[0] if trainer.optimizers else None,
                f"the weights hold NaN/Inf after step {trainer.global_step} ({len(bad)} tensor(s), first: {bad[0]})"))

    def _message(self, trainer, optimizer, where: str) -> str:
        lr = optimizer.param_groups[0].get("lr") if optimizer is not None else None
        causes = [f"a learning rate too high (optim.optimizer.lr, now {lr:.3g})" if lr is not None else "a learning rate too high",
                  "extreme image intensities (see dataset_report.txt)"]
        if "16" in str(trainer.precision) and "bf16" not in str(trainer.precision):
            causes.append("fp16 overflow (trainer.precision=bf16-mixed)")
        skipped = f"; {self.skipped} step(s) were skipped before" if self.skipped else ""
        hint = "" if self.mode == "skip" else "; guard.on_nonfinite=skip skips such steps instead"
        return f"{where}{skipped}. Likely causes: {', '.join(causes)}. {_last_checkpoint(trainer)}{hint}"

    def state_dict(self) -> dict:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict) -> None:
        self.skipped = int(state_dict.get("skipped", 0))


def _last_checkpoint(trainer) -> str:
    from segtrain.callbacks.checkpoint import RunCheckpoint

    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, RunCheckpoint) and callback.last_path.is_file():
            epoch = f", epoch {callback.last_epoch_saved}" if callback.last_epoch_saved is not None else ""
            return f"The run stopped; its last good checkpoint is kept ({callback.last_path}{epoch})"
    return "The run stopped before writing any checkpoint"
