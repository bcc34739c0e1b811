"""compose → build → fit → summarise. Called by the ``segtrain`` entry point (``segtrain/cli.py``)."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from segtrain.errors import ConfigError

log = logging.getLogger("segtrain")


def flat_params(cfg: DictConfig) -> dict[str, Any]:
    """The run's parameters as flat ``group.key`` → scalar, for the HParams tab.

    Every loss, model, optim, data (synthetic generator included) and inference parameter, the
    trainer settings that change results, and the seed; lists become strings, ``None`` "null".
    """
    resolved = OmegaConf.to_container(cfg, resolve=True)
    container = {k: resolved[k] for k in ("loss", "model", "optim", "data", "inference") if k in resolved}
    trainer_keys = ("precision", "devices", "max_epochs", "accumulate_grad_batches", "gradient_clip_val")
    container["trainer"] = {k: resolved["trainer"].get(k) for k in trainer_keys}
    out: dict[str, Any] = {"seed": cfg.get("seed")}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("_partial_", "cache_dir"):
                    continue
                walk(f"{prefix}.{key}" if prefix else str(key), value)
        else:
            out[prefix] = node if isinstance(node, (int, float, str, bool)) or node is None else str(node)

    walk("", container)
    return {k: ("null" if v is None else v) for k, v in out.items()}


def build_trainer(cfg: DictConfig):
    from hydra.utils import instantiate
    from lightning.pytorch import Trainer

    kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    extra_callbacks = kwargs.pop("callbacks", None) or []
    logger_flag = kwargs.pop("logger", None)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c and "_target_" in c]
    callbacks += [instantiate(c) for c in extra_callbacks]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c and "_target_" in c]
    logger = False if logger_flag is False or not loggers else loggers
    if kwargs.get("fast_dev_run"):
        callbacks = [c for c in callbacks if type(c).__name__ != "ModelCheckpoint"]
    try:
        return Trainer(**kwargs, callbacks=callbacks, logger=logger)
    except (ValueError, TypeError, RuntimeError) as err:  # MisconfigurationException is a ValueError
        raise ConfigError(f"invalid trainer setting: {str(err).splitlines()[0]}") from err


def build_module(cfg: DictConfig, spec, loss):
    from hydra.utils import instantiate

    from segtrain.models import build_model, check_patch_size
    from segtrain.module import SegmentationModule

    check_patch_size(cfg.model, spec.patch_size)
    net = build_model(cfg.model, spec.spatial_dims, spec.in_channels, spec.num_classes)
    try:
        optimizer = instantiate(cfg.optim.optimizer)
        scheduler = instantiate(cfg.optim.scheduler) if cfg.optim.get("scheduler") else None
    except Exception as err:  # noqa: BLE001 - hydra wraps any import/arg error
        raise ConfigError(f"invalid optim config: {str(err).splitlines()[0]}") from err
    interval = cfg.optim.get("interval", "step")
    if interval not in ("step", "epoch"):
        raise ConfigError(f"optim.interval={interval!r} must be step or epoch")
    inference = OmegaConf.to_container(cfg.inference, resolve=True)
    inference["roi_size"] = inference.get("roi_size") or list(spec.patch_size)
    return SegmentationModule(
        net,
        loss,
        num_classes=spec.num_classes,
        class_names=spec.class_names,
        optimizer=optimizer,
        scheduler=scheduler,
        scheduler_interval=interval,
        inference=inference,
        hparams=flat_params(cfg),
        run_config={
            "config": OmegaConf.to_container(cfg, resolve=True),
            "spec": spec.to_dict(),
        },
    )


def build_loss_from_config(loss_cfg: DictConfig):
    from segtrain.losses import build_loss

    params = OmegaConf.to_container(loss_cfg, resolve=True)
    name = params.pop("name", None)
    if name is None:
        raise ConfigError("loss.name is missing; choose a loss with loss=<name> (segtrain-losses lists them)")
    try:
        return build_loss(name, **params)
    except ValueError as err:
        raise ConfigError(str(err)) from err


def train(cfg: DictConfig) -> dict[str, float]:
    """Train one run from a composed config; returns its final and best metrics."""
    started = time.perf_counter()
    from lightning.pytorch import seed_everything

    # Lightning attaches its own console handler; Hydra's handlers (console + run log file) suffice.
    logging.getLogger("lightning").handlers.clear()
    # ...and drops its advertising "💡 Tip" line, which tells a segtrain user nothing actionable.
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(lambda record: not str(record.msg).startswith("💡"))

    from segtrain.data import build_datamodule

    output_dir = Path(cfg.paths.output_dir)
    seed_everything(cfg.seed, workers=True, verbose=False)
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path and not Path(ckpt_path).is_file():
        raise ConfigError(f"ckpt_path={ckpt_path}: no such checkpoint; resume from <run dir>/checkpoints/last.ckpt")
    loss = build_loss_from_config(cfg.loss)  # cheap checks first
    data = build_datamodule(cfg.data, output_dir, label_maps=getattr(loss, "label_maps", {}))  # preflight: every case validated before training
    module = build_module(cfg, data.spec, loss)
    trainer = build_trainer(cfg)
    from segtrain.events import hparam_metric_names  # HParams: every parameter, best and final val/dice, val/iou, val/loss

    for logger in trainer.loggers:
        logger.log_hyperparams(module.hparams["run"], metrics={name: float("nan") for name in hparam_metric_names()})
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    return summarise(trainer, module, output_dir, time.perf_counter() - started)


def summarise(trainer, module, output_dir: Path, seconds: float) -> dict[str, float]:
    from lightning.pytorch.callbacks import ModelCheckpoint

    from segtrain.events import hparam_metrics

    final = dict(module.last_epoch_metrics)
    best = module.best_metrics.get("val/dice", math.nan)
    checkpoint = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
    metrics = {**final, "best/val_dice": best, "epochs": trainer.current_epoch, "seconds": seconds}
    for logger in trainer.loggers:  # HParams tab: best and final metrics
        logger.log_metrics(hparam_metrics(final, module.best_metrics), step=trainer.global_step)
        logger.save()
    if trainer.is_global_zero:
        lines = [
            f"segtrain: finished {trainer.current_epoch} epoch(s), {trainer.global_step} steps in {seconds:.1f} s",
            f"  best val/dice {best:.4f}; final val/dice {final.get('val/dice', math.nan):.4f}, "
            f"val/iou {final.get('val/iou', math.nan):.4f}, val/loss {final.get('val/loss', math.nan):.4f}",
        ]
        if checkpoint is not None and checkpoint.dirpath and Path(checkpoint.dirpath).is_dir():
            lines.append(f"  checkpoints: {checkpoint.best_model_path or '-'} (best), {checkpoint.dirpath}/last.ckpt (last)")
        lines.append(f"  run directory: {output_dir}")
        if trainer.loggers:
            lines.append(f"  TensorBoard: tensorboard --logdir {output_dir}")
        log.info("\n".join(lines))
    return metrics
