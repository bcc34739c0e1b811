"""The LightningModule: registry loss, optimizer/scheduler from config, Dice/IoU from epoch-level counts.

Logged tags (docs/diagnostics.md): ``train/loss``, ``train/dice`` (hard Dice on training patches),
``val/loss``, ``val/dice``, ``val/iou`` (means over foreground classes), ``val/dice/<class>``,
``val/iou/<class>``; the LR monitor adds ``train/lr-*``.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch import Tensor, nn
from torchmetrics import MeanMetric

from segtrain.events import RUN_METRICS, lower_is_better
from segtrain.losses.deep_supervision import DeepSupervisionLoss, output_heads
from segtrain.metrics import OverlapMetrics, class_argmax

log = logging.getLogger("segtrain")
table_log = logging.getLogger("segtrain.table")  # the per-epoch table, for the run's log file


def main_output(output: Tensor | Sequence[Tensor]) -> Tensor:
    """The prediction head: MONAI's UNet++ returns a list with the main output last."""
    return output if isinstance(output, Tensor) else output[-1]


class SegmentationModule(LightningModule):
    def __init__(
        self,
        net: nn.Module,
        loss: nn.Module,
        num_classes: int,
        class_names: Sequence[str],
        optimizer: Any,
        scheduler: Any = None,
        scheduler_interval: str = "step",
        inference: dict | None = None,
        hparams: dict | None = None,
        run_config: dict | None = None,
        evaluation: dict | None = None,
    ):
        super().__init__()
        self.net = net
        self.loss = DeepSupervisionLoss(loss)
        self.num_classes = num_classes
        self.class_names = list(class_names)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        from segtrain.inference import inference_settings

        self.inference = inference_settings(inference)
        self.train_metrics = OverlapMetrics(num_classes)
        self.val_metrics = OverlapMetrics(num_classes)
        self.val_loss = MeanMetric()
        self.train_loss = MeanMetric(nan_strategy="disable")  # no NaN check (a host sync) per step: the guard watches
        # configs/evaluation: how the test split (and, every N epochs, val/hd95, val/assd, val/nsd) is scored.
        from segtrain.evaluation import ScoreSettings

        self.evaluation = dict(evaluation or {})
        self.score_settings = ScoreSettings.from_config(self.evaluation)
        self.surface_every = int(self.evaluation.get("val_surface_every_n_epochs") or 0)
        self.val_surface = nn.ModuleDict({m: MeanMetric(nan_strategy="ignore") for m in ("hd95", "assd", "nsd")})
        self.test_rows: list[dict] = []
        self.test_summary: dict = {}
        self.last_test_metrics: dict[str, float] = {}
        # An epoch's training counts travel in checkpoints, so that an epoch resumed mid-way (or whose
        # end hooks Lightning re-runs after a resume) reports the same train/dice as an uninterrupted one.
        self.train_metrics.persistent(True)
        self.train_loss.persistent(True)
        self.summarised_epoch = -1  # the last epoch whose train/* values went to the loggers
        self.step_loss: Tensor | None = None  # the last training step's loss, on the device
        self._auto_schedule: dict[str, int] = {}
        self._resumed = False  # restored from a checkpoint: its optimiser follows this run's config (on_train_start)
        self.print_epoch_summary = True
        self._header_printed = False
        # Flat run parameters for the HParams tab (saved in checkpoints too).
        self.save_hyperparameters({"run": hparams or {}})
        # The composed config and data spec travel in every checkpoint, so that `segtrain-predict`
        # rebuilds the exact network and preprocessing from the checkpoint alone.
        self.run_config = run_config or {}
        # Best val/dice, val/iou (max) and val/loss (min) so far; kept in checkpoints, so a resumed run continues them.
        self.best_metrics: dict[str, float] = {}
        self.last_epoch_metrics: dict[str, float] = {}

    def forward(self, x: Tensor) -> Tensor:
        return main_output(self.net(x))

    def _label_maps(self, batch: dict) -> dict[str, Tensor]:
        """Per-case maps the loss asked the data pipeline for (e.g. signed distance maps)."""
        return {name: _as_tensor(batch[name]).float() for name in self.loss.label_maps if name in batch}

    def on_train_epoch_start(self) -> None:
        # Scheduled losses (e.g. boundary's alpha) advance once per epoch; their values are logged.
        # Written to the loggers now, at the epoch's first step: an epoch-end value would come after the epoch's
        # checkpoint, and a resume from it (which drops the events logged after the checkpoint) would lose it.
        values = self.loss.on_epoch_start(self.current_epoch)
        if values and self.trainer.is_global_zero:  # a function of the epoch: the same on every rank
            for logger in self.loggers:
                logger.log_metrics({f"train/loss_{name}": float(value) for name, value in values.items()}, step=self.global_step)

    # -- training -----------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        image, label = _as_tensor(batch["image"]), _as_tensor(batch["label"]).long()
        output = self.net(image)
        loss = self.loss(output, label, **self._label_maps(batch))
        with torch.no_grad():
            pred = class_argmax(output_heads(output, label.ndim)[0])
            self.train_metrics.update(pred, label)
            self.train_loss.update(loss.detach())
        # Not through self.log(prog_bar=True): Lightning would read it back from the device after every step (a
        # host sync that keeps a GPU waiting). The progress display reads it at its own interval.
        self.step_loss = loss.detach()
        self._log_step_loss(loss)
        return loss

    def _log_step_loss(self, loss: Tensor) -> None:
        """``train/loss`` every ``trainer.log_every_n_steps`` steps, at the step Lightning would use.

        Written to the loggers here rather than through ``self.log``: Lightning writes step values
        after ``on_train_batch_end``, where a mid-epoch checkpoint is saved, and a run killed after that
        checkpoint would lose its last step's value (a resume starts after it).
        """
        if self.trainer.is_global_zero and (self.global_step + 1) % max(int(self.trainer.log_every_n_steps), 1) == 0:
            for logger in self.loggers:
                logger.log_metrics({"train/loss": float(loss.detach()), "epoch": float(self.current_epoch)},
                                   step=self.global_step)

    def on_train_epoch_end(self) -> None:
        if self.current_epoch == self.summarised_epoch:
            return  # already logged before the checkpoint this run resumed from
        # Epoch values are global: counts and loss sums are reduced over ranks by torchmetrics.
        with warnings.catch_warnings():  # counts restored from a checkpoint are counts all the same
            warnings.filterwarnings("ignore", message=r".*was called before the ``update`` method.*")
            scores = self.train_metrics.compute()
            train = {"train/loss_epoch": float(self.train_loss.compute()), "train/dice": float(scores["mean_dice"])}
        self.train_metrics.reset()
        self.train_loss.reset()
        self.summarised_epoch = self.current_epoch
        # Straight to the loggers (at the step of this epoch's validation values), not through
        # self.log: Lightning writes self.log values after the checkpoint callbacks have run, and a
        # resume drops every event written after its checkpoint.
        if self.trainer.is_global_zero:
            for logger in self.loggers:
                logger.log_metrics({**train, "epoch": float(self.current_epoch)}, step=max(self.global_step - 1, 0))
        self.last_epoch_metrics.update(train)
        if self.print_epoch_summary:
            self._print_epoch_line()

    def _print_epoch_line(self) -> None:
        columns = ("train/loss_epoch", "train/dice", "val/loss", "val/dice", "val/iou")
        lines = []
        if not self._header_printed:
            lines.append("epoch | " + " | ".join(f"{c.replace('_epoch', ''):>10}" for c in columns))
            self._header_printed = True
        values = [self.last_epoch_metrics.get(c) for c in columns]
        cells = ["-" if v is None else f"{v:.4f}" for v in values]
        lines.append(f"{self.current_epoch:5d} | " + " | ".join(f"{c:>10}" for c in cells))
        for line in lines:  # above the progress bar on the console, and into train.log
            self.print(line)
            if self.trainer.is_global_zero:
                table_log.info(line)

    # -- validation: whole cases, sliding window ------------------------------------------------
    def predict_logits(self, image: Tensor) -> Tensor:
        from segtrain.inference import sliding_window_logits

        return sliding_window_logits(image, self, self.inference)

    def validation_step(self, batch: dict, batch_idx: int) -> dict | None:
        if "count" in batch and not int(batch["count"].sum()):
            return  # padding that evens out the cases across DDP ranks: not scored
        image, label = _as_tensor(batch["image"]), _as_tensor(batch["label"]).long()
        logits = self.predict_logits(image)
        self.val_loss.update(self.loss(logits, label, **self._label_maps(batch)), weight=image.shape[0])
        pred = class_argmax(logits)
        self.val_metrics.update(pred, label)
        if self._surface_epoch():
            self._update_val_surface(pred, batch)
        # For callbacks (overlays, diagnostics): the whole case, its label and the prediction.
        return {"image": image, "label": label, "pred": pred, "id": batch.get("id")}

    def on_validation_epoch_end(self) -> None:
        scores = self.val_metrics.compute()  # summed over all cases and ranks
        val_loss = self.val_loss.compute()
        metrics = {"val/loss": val_loss, "val/dice": scores["mean_dice"], "val/iou": scores["mean_iou"]}
        for index, name in enumerate(self.class_names[1:]):
            metrics[f"val/dice/{name}"] = scores["dice"].reshape(-1)[index]  # torchmetrics squeezes size-1 outputs
            metrics[f"val/iou/{name}"] = scores["iou"].reshape(-1)[index]
        # The values are already global, the same on every rank: the max over ranks changes nothing (and keeps
        # Lightning from warning that epoch values should be synced).
        self.log_dict({k: v.float() for k, v in metrics.items()}, prog_bar=False, sync_dist=True, reduce_fx="max")
        self.log("val_dice", metrics["val/dice"].float(), prog_bar=True, logger=False, sync_dist=True, reduce_fx="max")
        if self._surface_epoch():
            for name, metric in self.val_surface.items():  # means over cases and classes, all ranks
                with warnings.catch_warnings():  # an epoch where no case had both masks: NaN, said once below
                    warnings.filterwarnings("ignore", message=r".*was called before the ``update`` method.*")
                    value = metric.compute() if metric.update_count else torch.tensor(float("nan"))
                self.log(f"val/{name}", value.float(), sync_dist=True, reduce_fx="max")
                metric.reset()
        self.val_metrics.reset()
        self.val_loss.reset()
        if not self.trainer.sanity_checking:
            for tag in RUN_METRICS:
                value = float(metrics[tag])
                if math.isfinite(value):
                    better = min if lower_is_better(tag) else max
                    self.best_metrics[tag] = better(self.best_metrics.get(tag, value), value)
            self.last_epoch_metrics.update({k: float(v) for k, v in metrics.items()})

    def _surface_epoch(self) -> bool:
        return self.surface_every > 0 and not self.trainer.sanity_checking and (self.current_epoch + 1) % self.surface_every == 0

    def _update_val_surface(self, pred: Tensor, batch: dict) -> None:
        """val/hd95, val/assd, val/nsd on the training grid (spacing from the case's meta), the rules of segtrain.evaluation."""
        from segtrain.evaluation import score_case

        label = batch["label"]
        spacing = [float(v) for v in label.pixdim[0]] if hasattr(label, "pixdim") else [1.0] * (pred.ndim - 2)
        truth = _as_tensor(label)[0, 0].cpu().numpy()
        for row in score_case(pred[0, 0].cpu().numpy(), truth, spacing, range(1, self.num_classes), self.score_settings):
            for name, metric in self.val_surface.items():
                metric.update(torch.tensor(row[name], dtype=torch.float64))

    # -- the held-out test set: whole cases, scored on their label files' own grid ------------------
    def test_step(self, batch: dict, batch_idx: int) -> None:
        from segtrain.evaluation import score_case
        from segtrain.evaluation.folders import read_label

        if "count" in batch and not int(batch["count"].sum()):
            return  # DDP padding
        pred = class_argmax(self.predict_logits(_as_tensor(batch["image"])))
        restored = self.trainer.datamodule.restore_prediction(pred, batch)
        truth, spacing = read_label(batch["label_path"][0], self.trainer.datamodule.label_mapping)
        case = batch["id"][0]
        for row in score_case(restored.astype(truth.dtype), truth, spacing, range(1, self.num_classes), self.score_settings):
            self.test_rows.append({"case": case, **row, "class_name": self.class_names[row["class"]]})

    def on_test_epoch_start(self) -> None:
        self.test_rows = []

    def on_test_epoch_end(self) -> None:
        """Rows of every rank → the summary on every rank; ``test/*``: per-case means, and Dice pooled as val/dice."""
        from segtrain.evaluation.summary import summarise_with

        rows = self.test_rows
        if self.trainer.world_size > 1:
            gathered: list = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(gathered, rows)
            rows = sorted((r for part in gathered for r in part), key=lambda r: (r["case"], r["class"]))
        self.test_rows = rows
        self.test_summary = summary = summarise_with(rows, dict(enumerate(self.class_names)), self.evaluation)
        mean = summary["mean"]
        metrics = {"test/dice": mean["global"]["dice"], "test/iou": mean["global"]["iou"],
                   "test/dice_per_case": mean["dice"]["mean"], "test/hd95": mean["hd95"]["mean"],
                   "test/assd": mean["assd"]["mean"], "test/nsd": mean["nsd"]["mean"],
                   "test/lesion_recall": mean["lesions"]["recall"], "test/lesion_precision": mean["lesions"]["precision"]}
        for name, stats in summary["classes"].items():
            metrics[f"test/dice/{name}"] = stats["global"]["dice"]
        if self.trainer.is_global_zero:  # straight to the loggers: no `epoch` value after the last epoch's
            for logger in self.loggers:
                logger.log_metrics({k: float(v) for k, v in metrics.items()}, step=self.global_step)
        self.last_test_metrics = metrics

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        from segtrain.checkpoints import capture_rng_states

        checkpoint["segtrain"] = self.run_config
        checkpoint["segtrain_best_metrics"] = dict(self.best_metrics)
        checkpoint["segtrain_state"] = {
            "summarised_epoch": self.summarised_epoch,
            "last_epoch_metrics": dict(self.last_epoch_metrics),
            "rng": capture_rng_states(),
            "events_wall_time": time.time(),  # a resume drops the events logged after this moment
        }
        if self.trainer.world_size > 1:  # the epoch's training counts of every rank, summed (rank 0 resumes them)
            for name, metric in (("train_metrics", self.train_metrics), ("train_loss", self.train_loss)):
                metric.sync(should_sync=True, distributed_available=lambda: True)
                for key, value in metric.state_dict(prefix=f"{name}.").items():
                    checkpoint["state_dict"][key] = value.detach().clone()
                metric.unsync()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        from segtrain.checkpoints import restore_rng_states

        self._resumed = True
        self.best_metrics = dict(checkpoint.get("segtrain_best_metrics", {}))
        state = checkpoint.get("segtrain_state", {})
        self.summarised_epoch = int(state.get("summarised_epoch", -1))
        self.last_epoch_metrics = dict(state.get("last_epoch_metrics", {}))
        if "rng" in state:
            restore_rng_states(state["rng"])
        if self._trainer is not None and self.trainer.global_rank > 0:  # the summed counts are rank 0's to resume
            for key, value in checkpoint["state_dict"].items():
                if key.startswith(("train_metrics.", "train_loss.")):
                    checkpoint["state_dict"][key] = torch.zeros_like(value)

    # -- optimisation ---------------------------------------------------------------------------
    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        keywords = getattr(self.scheduler_factory, "keywords", {})
        length = self.trainer.estimated_stepping_batches if self.scheduler_interval == "step" else self.trainer.max_epochs
        # Lengths left null in the config follow the run's length (steps or epochs).
        self._auto_schedule = {key: int(length) for key in ("total_iters", "T_max") if key in keywords and keywords[key] is None}
        scheduler = self.scheduler_factory(optimizer=optimizer, **self._auto_schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval}}

    def on_train_start(self) -> None:
        """After a resume: the optimiser and its schedule follow the run's config, not the checkpoint's.

        Lightning restores the optimizer and scheduler with their hyper-parameters: a learning rate (or
        weight decay, momentum, schedule power, ...) changed with ``resume.allow_changes=true`` would be
        announced and ignored, and a schedule whose length follows the run would keep the old length (a
        finished run continued with more epochs would train at its final rate, 0 for the poly schedule).
        ``segtrain.optim.apply_to_restored`` rebuilds them, keeping the moments and the schedule's position.
        """
        if not self._resumed or not self.trainer.optimizers:
            return
        from segtrain.optim import apply_to_restored

        configs = self.trainer.lr_scheduler_configs
        optimizer = self.trainer.optimizers[0]
        changes = apply_to_restored(optimizer, configs[0].scheduler if configs else None, self.optimizer_factory,
                                    self.scheduler_factory, self._auto_schedule)
        if changes:
            unit = "steps" if self.scheduler_interval == "step" else "epochs"
            shown = [_describe_change(change, unit) for change in changes]
            log.info("segtrain: the resumed run follows its config: %s; learning rate now %.4g", "; ".join(shown),
                     optimizer.param_groups[0]["lr"])


def _describe_change(change: str, unit: str) -> str:
    """``schedule total_iters 16 → 32`` reads as ``the schedule now spans 32 steps (was 16)``."""
    for key in ("total_iters", "T_max"):
        if change.startswith(f"schedule {key} "):
            old, new = change[len(f"schedule {key} "):].split(" → ")
            return f"the schedule now spans {new} {unit} (was {old})"
    return change


def _as_tensor(x: Tensor) -> Tensor:
    return x.as_tensor() if hasattr(x, "as_tensor") else x

