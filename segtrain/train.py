"""compose → build → fit → summarise. Called by the ``segtrain`` entry point (``segtrain/cli.py``)."""

from __future__ import annotations

import errno
import logging
import math
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from segtrain.errors import ConfigError, SegtrainError

log = logging.getLogger("segtrain")

# Lightning's info lines that a segtrain run replaces or that say nothing actionable
LIGHTNING_NOISE = ("💡", "`Trainer.fit` stopped", "Loading `train_dataloader` to estimate", "TPU available",
                   "HPU available", "Restored all states from the checkpoint", "Restoring states from the checkpoint path",
                   "Loaded model weights from the checkpoint",
                   "SLURM auto-requeueing enabled")  # segtrain's GracefulStop handles the signals (requeue included)


class _LightningNoise(logging.Filter):
    """Drops Lightning's lines in ``LIGHTNING_NOISE`` (added once per logger, however many runs a process makes)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(LIGHTNING_NOISE)


def _rank() -> int:
    from lightning.pytorch.utilities import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0)


def flat_params(cfg: DictConfig, overrides: list[str] | None = None) -> dict[str, Any]:
    """The run's parameters as flat ``group.key`` → scalar, for the HParams tab.

    Every loss, model, optim, data (synthetic generator included) and inference parameter, the
    trainer settings that change results, and the seed; lists become strings, ``None`` "null".
    ``overrides``: what the command line set (in a sweep: the swept and the fixed ones) also appear
    first as ``(set) <key>`` (a group choice as ``(set) loss`` → ``tversky``): TensorBoard sorts the
    HParams columns by name and shows the first few, so these and ``val_summary/best_val_dice`` lead the table.
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
    out = {k: ("null" if v is None else v) for k, v in out.items()}
    first: dict[str, Any] = {}
    choices = _group_choices()
    for override in overrides or []:
        key = override.split("=", 1)[0].lstrip("+~")
        if key in choices and key not in out:
            first[f"(set) {key}"] = choices[key]
        elif key in out:
            first[f"(set) {key}"] = out[key]
    return {**first, **out}


def build_trainer(cfg: DictConfig, started: float | None = None):
    """``instantiate(cfg.trainer, callbacks=..., logger=..., plugins=...)``, as lightning-hydra-template builds it.

    The callbacks are every entry of the ``callbacks`` group plus ``trainer.callbacks``, the loggers
    every entry of the ``logger`` group (``trainer.logger=false``: none); to each run segtrain adds
    ``SafeCheckpointIO`` (atomic, finite-only writes, ``weights_only`` reads), the non-finite guard
    (``guard.*``) and, when checkpoints are on, the graceful stop on SIGTERM/SIGUSR1/Ctrl-C.
    A setting Lightning refuses is one line naming it.
    """
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from segtrain.callbacks import instantiate_all
    from segtrain.callbacks.guard import NonFiniteGuard
    from segtrain.callbacks.interrupt import GracefulStop
    from segtrain.callbacks.timing import WallClock
    from segtrain.checkpoints import SafeCheckpointIO

    trainer_cfg = cfg.trainer
    if "_target_" not in trainer_cfg:  # the config of a run made before the trainer had a _target_ (a resume)
        with open_dict(trainer_cfg):
            trainer_cfg._target_ = "lightning.pytorch.Trainer"
    try:
        callbacks = [*instantiate_all(cfg.get("callbacks")), *instantiate_all(trainer_cfg.get("callbacks")),
                     NonFiniteGuard(**OmegaConf.to_container(cfg.get("guard") or {}, resolve=True)), WallClock(started)]
        if trainer_cfg.get("enable_checkpointing") is not False:  # without checkpoints, signals still exit non-zero
            callbacks.append(GracefulStop(Path(cfg.paths.output_dir) / "checkpoints",
                                          requeue_on=list(OmegaConf.select(cfg, "slurm.requeue_on", default=None) or [])))
        loggers = instantiate_all(cfg.get("logger")) if trainer_cfg.get("logger") is not False else []
        plugins = trainer_cfg.get("plugins") or []
        plugins = instantiate_all(plugins if OmegaConf.is_list(plugins) else [plugins])
        return instantiate(trainer_cfg, callbacks=callbacks, logger=loggers or False,
                           plugins=[*plugins, SafeCheckpointIO()], _convert_="all")
    except ConfigError:
        raise  # already one line naming its setting (slurm.requeue_on, guard.*)
    except (ValueError, TypeError, RuntimeError, MisconfigurationException, InstantiationException) as err:
        cause = err.__cause__ if isinstance(err, InstantiationException) and err.__cause__ is not None else err
        raise ConfigError(_trainer_problem(trainer_cfg, " ".join(str(cause).split()))) from None


def _trainer_problem(trainer_cfg: DictConfig, said: str) -> str:
    """Lightning's refusal of a trainer setting, as one line that names the setting and the fix."""
    devices, accelerator = trainer_cfg.get("devices"), trainer_cfg.get("accelerator")
    if "No supported gpu backend found" in said or "can not run on your system" in said:
        return (f"trainer.accelerator={accelerator}: no GPU is visible here (torch finds no CUDA device); use "
                "trainer.accelerator=auto (or cpu), or run where the GPUs are")
    if "selected with `CPUAccelerator`" in said:
        count = len(devices) if OmegaConf.is_list(devices) else devices
        return (f"trainer.devices={list(devices) if OmegaConf.is_list(devices) else devices} names GPUs, and this run trains "
                f"on the CPU (no GPU here); give a number of CPU processes instead, e.g. trainer.devices={count}")
    return f"invalid trainer setting: {said[:300]}"


def describe_devices(trainer_cfg: DictConfig, trainer) -> str | None:
    """One line, before any process starts, when ``trainer.devices`` > 1 finds no GPU and falls back to CPU processes."""
    from lightning.pytorch.accelerators import CPUAccelerator

    from segtrain.data.loaders import usable_cpus

    if not isinstance(trainer.accelerator, CPUAccelerator) or trainer.num_devices < 2 or trainer_cfg.get("accelerator") != "auto":
        return None
    cpus = usable_cpus()
    crowded = (f"; {trainer.num_devices} processes on the {cpus} CPUs here share them (one torch thread each)"
               if trainer.num_devices > cpus else "")
    return (f"segtrain: no GPU found: trainer.devices={trainer_cfg.get('devices')} runs {trainer.num_devices} CPU processes "
            f"(DDP, gloo){crowded}; set trainer.accelerator=cpu to silence this")


def training_device(trainer, trainer_cfg: DictConfig | None = None) -> str:
    """``cuda`` or ``cpu``: where the model trains. On a GPU, the speed settings that need no choice are made here:
    TF32 matrix products (``torch.set_float32_matmul_precision("high")``) and, unless ``trainer.benchmark`` says
    otherwise, cuDNN's benchmark mode (the training patch and the validation windows have fixed sizes)."""
    import torch
    from lightning.pytorch.accelerators import CUDAAccelerator

    if not isinstance(trainer.accelerator, CUDAAccelerator):
        return "cpu"
    torch.set_float32_matmul_precision("high")
    if trainer_cfg is None or trainer_cfg.get("benchmark") is None:
        torch.backends.cudnn.benchmark = True
    return "cuda"


def build_optim(optim_cfg: DictConfig):
    """(optimizer factory, scheduler factory or None, interval), each tried once on a dummy parameter.

    The factories are called inside ``trainer.fit``; trying them here turns a bad argument (a
    LinearLR ``end_factor`` above 1, a misspelt keyword) into one line before preflight.
    """
    import torch
    from hydra.utils import instantiate

    interval = optim_cfg.get("interval", "step")
    if interval not in ("step", "epoch"):
        raise ConfigError(f"optim.interval={interval!r} must be step or epoch")
    part = "optim.optimizer"
    try:
        optimizer = instantiate(optim_cfg.optimizer)
        trial = optimizer(params=[torch.nn.Parameter(torch.zeros(1))])
        part = "optim.scheduler"
        scheduler = instantiate(optim_cfg.scheduler) if optim_cfg.get("scheduler") else None
        if scheduler is not None:  # built and stepped to its end on a two-step run
            keywords = getattr(scheduler, "keywords", {})
            trial_scheduler = scheduler(optimizer=trial, **{k: 2 for k in ("total_iters", "T_max")
                                                            if k in keywords and keywords[k] is None})
            for _ in range(2):
                trial.step()
                trial_scheduler.step()
    except Exception as err:  # noqa: BLE001 - hydra wraps any import/arg error; torch raises ValueError/TypeError
        target = OmegaConf.select(optim_cfg, f"{part.split('.')[1]}._target_", default="?")
        raise ConfigError(f"{part} ({target}) is invalid: {' '.join(str(err).split())[:300]}") from None
    return optimizer, scheduler, interval


def plan_params(spec) -> dict[str, str]:
    """What the data plan decided, as HParams columns (``plan.patch_size``, ...), beside the config's ``null``/``auto``."""
    values = {"spacing": spec.spacing, "patch_size": list(spec.patch_size), "normalize": spec.normalize,
              "strides": spec.strides[1:] if spec.strides else None}
    return {f"plan.{k}": str(v) for k, v in values.items() if v is not None}


def build_module(cfg: DictConfig, spec, loss, split: dict[str, list[str]] | None = None,
                 overrides: list[str] | None = None, single_cpu_process: bool = False):
    from segtrain.models import apply_speed_knobs, build_model, check_patch_size
    from segtrain.module import SegmentationModule

    check_patch_size(cfg.model, spec)
    net = apply_speed_knobs(build_model(cfg.model, spec), cfg.model, spec.spatial_dims, single_cpu_process)
    optimizer, scheduler, interval = build_optim(cfg.optim)
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
        hparams={**flat_params(cfg, overrides), **plan_params(spec)},
        run_config={
            "config": OmegaConf.to_container(cfg, resolve=True),
            "config_source": OmegaConf.to_container(cfg, resolve=False),  # what a resume starts from
            "spec": spec.to_dict(),
            "split": split or {},
            "choices": _group_choices(),  # the config groups a resume selects again (loss: tversky, ...)
        },
        evaluation=OmegaConf.to_container(cfg.evaluation, resolve=True) if cfg.get("evaluation") else None,
    )


def build_loss_from_config(loss_cfg: DictConfig):
    """The run's loss from ``cfg.loss`` (``name:`` a registry loss, or ``_target_:`` any class; docs/losses.md)."""
    from segtrain.losses.registry import loss_from_config

    try:
        return loss_from_config(OmegaConf.to_container(loss_cfg, resolve=True))
    except (ValueError, TypeError) as err:
        raise ConfigError(" ".join(str(err).split())) from None


def check_run_length(cfg: DictConfig, checkpoint: dict | None) -> None:
    """The run has an end its schedule can span, and a resumed run has epochs left to train."""
    max_epochs, max_steps = cfg.trainer.get("max_epochs"), cfg.trainer.get("max_steps")
    scheduler = cfg.optim.get("scheduler")
    follows_run = scheduler is not None and any(k in scheduler and scheduler[k] is None for k in ("total_iters", "T_max"))
    if max_epochs == -1 and (max_steps is None or max_steps == -1) and follows_run:
        raise ConfigError("trainer.max_epochs=-1 (no limit) gives the learning-rate schedule no end (its length follows the "
                          "run); set trainer.max_steps=N or trainer.max_epochs=N, or optim.scheduler=null for a constant rate")
    if checkpoint is not None and isinstance(max_epochs, int) and max_epochs >= 0 and checkpoint.get("epoch", 0) >= max_epochs:
        epoch = int(checkpoint["epoch"])
        raise ConfigError(f"trainer.max_epochs={max_epochs}: the run's checkpoint is at epoch {epoch} (counted from 0), so "
                          f"no epoch is left to train; give more to continue it (e.g. trainer.max_epochs={epoch + 2})")


def check_loss(loss, spec) -> None:
    """One call of the loss on a tiny batch of the run's shape (classes, dimensions), before the first step.

    A loss of one's own that fails on the run's classes, returns no scalar or no gradient is one
    line naming it here, not a traceback in the first training step.
    """
    import torch

    generator = torch.Generator().manual_seed(0)
    shape = (2, spec.num_classes, *([8] * spec.spatial_dims))
    logits = torch.randn(shape, generator=generator, requires_grad=True)
    target = torch.randint(0, max(spec.num_classes, 2), (2, 1, *shape[2:]), generator=generator)
    try:
        value = loss(logits, target)
        if not (torch.is_tensor(value) and value.ndim == 0 and value.is_floating_point()):
            raise ValueError(f"it returned {type(value).__name__} {tuple(getattr(value, 'shape', ()))}, not a scalar tensor")
        if not torch.isfinite(value):
            raise ValueError(f"it returned {float(value)} on random logits")
        if not value.requires_grad:
            raise ValueError("its value has no gradient (detached from the logits)")
        value.backward()
    except Exception as err:  # noqa: BLE001 - anything a user's loss raises becomes one line
        raise ConfigError(f"loss {loss.registry_name} fails on a ({', '.join(map(str, shape))}) batch of logits and its labels: "
                          f"{' '.join(str(err).split())[:300]}") from None


def _group_choices() -> dict[str, str]:
    """This launch's config-group choices (``loss: tversky``, ...), without Hydra's own; empty outside Hydra."""
    try:
        from hydra.core.hydra_config import HydraConfig

        choices = HydraConfig.get().runtime.choices
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in choices.items() if v is not None and not str(k).startswith("hydra")}


def _config_groups() -> set[str]:
    """The config groups of this launch (``loss``, ``experiment``, ...): Hydra's choices, or the config folders."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return set(HydraConfig.get().runtime.choices)
    except ValueError:  # not inside a Hydra app (tests compose configs directly)
        from segtrain.cli import config_dir

        return {p.name for p in Path(config_dir()).iterdir() if p.is_dir()}


def _record_config(cfg: DictConfig) -> None:
    """Hydra saved the command line's composition; a resumed run records the config it actually runs with."""
    from segtrain.files import write_text_atomic

    try:
        from hydra.core.hydra_config import HydraConfig

        hydra_cfg = HydraConfig.get()
    except ValueError:
        return
    if hydra_cfg.output_subdir:
        write_text_atomic(Path(hydra_cfg.runtime.output_dir) / hydra_cfg.output_subdir / "config.yaml", OmegaConf.to_yaml(cfg))


def check_model_fits(cfg: DictConfig, checkpoint: dict) -> None:
    """The network of ``cfg.model`` takes the checkpoint's weights (checked before preflight)."""
    from segtrain.data import DataSpec
    from segtrain.models import build_model

    spec = DataSpec.from_dict(checkpoint["segtrain"]["spec"])
    net = build_model(cfg.model, spec)
    weights = {k[len("net."):]: v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
    try:
        net.load_state_dict(weights)
    except RuntimeError as err:
        detail = " ".join(str(err).split())[:200]
        raise ConfigError(f"ckpt_path={cfg.ckpt_path}: the checkpoint's network does not fit the model settings "
                          f"({detail}); resume with the run's own model settings") from None


def check_same_cases(cfg: DictConfig, checkpoint: dict, data) -> None:
    """A resumed run trains and validates on the cases of its checkpoint (``resume.allow_changes`` overrides).

    The split itself is the checkpoint's (``build_datamodule(split=...)``); what can differ is the dataset: the
    message names the cases that went missing or came new, not the differences of a recomputed split.
    """
    stored = checkpoint["segtrain"].get("split") or {}
    if "train" not in stored or OmegaConf.select(cfg, "resume.allow_changes", default=False):
        return
    old = set(stored.get("train", [])) | set(stored.get("val", []))
    now = {c["id"] for c in data.train_cases} | {c["id"] for c in data.val_cases}
    missing, new = sorted(old - now), sorted(now - old)
    if missing or new:
        parts = []
        if missing:
            parts.append(f"{len(missing)} case{'s' if len(missing) > 1 else ''} of the run "
                         f"{'are' if len(missing) > 1 else 'is'} missing from the dataset now: {', '.join(missing[:5])}"
                         f"{', ...' if len(missing) > 5 else ''}")
        if new:
            parts.append(f"{len(new)} case{'s' if len(new) > 1 else ''} the run did not have "
                         f"{'are' if len(new) > 1 else 'is'} in it: {', '.join(new[:5])}{', ...' if len(new) > 5 else ''}")
        raise ConfigError(f"resume: {'; '.join(parts)}; resume with the run's data, or add resume.allow_changes=true "
                          "(the run then continues on the dataset as it is, split anew)")


def train(cfg: DictConfig, overrides: list[str] | None = None) -> dict[str, float]:
    """Train one run from a composed config; returns its final and best metrics.

    ``overrides``: the command line's overrides; a resume (``ckpt_path`` set) takes the config of
    its checkpoint and only these keys from ``cfg`` (see ``segtrain.resume``).

    Raises:
        SegtrainError: one line for the user; ``before_training`` is set on those raised before
            anything was trained or written besides the run folder's reports.
    """
    started = time.perf_counter()
    # Lightning attaches its own console handlers on import; Hydra's handlers (console + run log file) suffice.
    import lightning.pytorch  # noqa: F401 - imported here so that its handlers exist before they are removed

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).handlers.clear()
    # ...and drops Lightning's lines that tell a segtrain user nothing actionable (segtrain says it better).
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.trainer.connectors.signal_connector"):
        noisy = logging.getLogger(name)
        if not any(isinstance(f, _LightningNoise) for f in noisy.filters):
            noisy.addFilter(_LightningNoise())
    if _rank() != 0:  # DDP workers: what rank 0 prints (dataset report, preflight) is said once
        logging.getLogger("segtrain").setLevel(logging.WARNING)
    from segtrain.losses.inputs import label_range_checks

    # checks.label_range: the per-call label check of the losses (a host sync per call; preflight checked the labels)
    with label_range_checks(bool(OmegaConf.select(cfg, "checks.label_range", default=False))):
        try:
            cfg, data, module, trainer = prepare(cfg, overrides or [], started)
        except SegtrainError as err:
            err.before_training = True
            raise
        _fit(trainer, module, data, cfg.get("ckpt_path"))
        if data.test_cases:
            _test(trainer, module, data, Path(cfg.paths.output_dir))
    return summarise(trainer, module, Path(cfg.paths.output_dir), time.perf_counter() - started)


def prepare(cfg: DictConfig, overrides: list[str], started: float | None = None):
    """compose → check → build: (config, data module, module, trainer), cheap checks first, preflight next.

    A resume reads its checkpoint first (one line if it is broken), takes the run's config, checks
    that the network takes the weights, and, resuming in the run's own folder, drops the events the
    stopped run logged after its checkpoint (they will be logged again).
    """
    from lightning.pytorch import seed_everything

    from segtrain.checkpoints import read_checkpoint
    from segtrain.data import build_datamodule
    from segtrain.events import event_files, hparam_metric_names, truncate_events
    from segtrain.augment import build_augmentation
    from segtrain.evaluation import ScoreSettings
    from segtrain.models import fixed_divisor
    from segtrain.resume import resumed_config

    output_dir = Path(cfg.paths.output_dir)
    checkpoint = None
    if cfg.get("ckpt_path"):
        checkpoint = read_checkpoint(cfg.ckpt_path)
        cfg, _ = resumed_config(cfg, checkpoint["segtrain"], overrides, _config_groups())
        check_model_fits(cfg, checkpoint)
        _record_config(cfg)
    seed_everything(cfg.seed, workers=True, verbose=False)
    loss = build_loss_from_config(cfg.loss)
    build_optim(cfg.optim)
    ScoreSettings.from_config(cfg.get("evaluation"))  # evaluation.* checked before preflight, used after training
    augmentation = build_augmentation(cfg.get("augment"))
    trainer = build_trainer(cfg, started)  # trainer settings (devices, precision, strategy) checked before preflight
    devices_line = describe_devices(cfg.trainer, trainer)
    if devices_line and _rank() == 0:
        log.warning(devices_line)
    check_run_length(cfg, checkpoint)
    # preflight: every case validated before training
    data = build_datamodule(cfg.data, output_dir, label_maps=loss.label_maps, seed=cfg.seed,
                            model_divisor=fixed_divisor(cfg.model, 3), augmentation=augmentation,
                            split=checkpoint["segtrain"].get("split") if checkpoint is not None else None)
    data.use_device(training_device(trainer, cfg.trainer), trainer.num_devices)
    if checkpoint is not None:
        check_same_cases(cfg, checkpoint, data)
    split = {"train": [c["id"] for c in data.train_cases], "val": [c["id"] for c in data.val_cases]}
    check_loss(loss, data.spec)
    from lightning.pytorch.accelerators import CPUAccelerator

    single_cpu_process = isinstance(trainer.accelerator, CPUAccelerator) and trainer.world_size == 1
    module = build_module(cfg, data.spec, loss, split, overrides, single_cpu_process=single_cpu_process)
    resume_dir = OmegaConf.select(cfg, "resume.dir", default=None)
    if checkpoint is not None and resume_dir and Path(resume_dir).resolve() == output_dir.resolve() and trainer.is_global_zero:
        state = checkpoint.get("segtrain_state", {})
        if state.get("events_wall_time") is not None:
            for folder in sorted({path.parent for path in event_files(output_dir)}):
                truncate_events(folder, float(state["events_wall_time"]))
    recipe = recipe_summary(cfg, module, data)
    log.info("%s", recipe)
    if data.report is not None and trainer.is_global_zero:  # dataset_report.txt says what was chosen and why, too
        data.report.notes.append(recipe.replace("\n", "\n  "))
        data.report.save(output_dir)
    for logger in trainer.loggers:  # HParams: every parameter, best and final val/dice, val/iou, val/loss
        logger.log_hyperparams(module.hparams["run"], metrics={name: float("nan") for name in hparam_metric_names()})
    return cfg, data, module, trainer


FULL_DISK = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def storage_error(err: OSError, trainer):
    """A full disk (or quota, or file-size limit) while the run writes events, logs or checkpoints: one line."""
    import shutil

    from segtrain.callbacks.checkpoint import RunCheckpoint
    from segtrain.errors import StorageError

    where = Path(err.filename) if err.filename else Path(trainer.default_root_dir)
    try:
        free = f"{shutil.disk_usage(where if where.is_dir() else where.parent).free / 2**20:.1f} MiB free"
    except OSError:
        free = "free space unknown"
    reason = {errno.ENOSPC: f"the disk is full ({free})", errno.EDQUOT: "the disk quota is used up",
              errno.EFBIG: "a file exceeds the size this process may write (ulimit -f)"}[err.errno]
    last = next((c.last_path for c in trainer.checkpoint_callbacks if isinstance(c, RunCheckpoint) and c.last_path.is_file()),
                None)
    kept = f"its last checkpoint is intact ({last})" if last else "it had written no checkpoint yet"
    return StorageError(f"cannot write {where}: {reason}; the run stopped and {kept}. Free disk space, then resume it "
                        f"(segtrain resume={trainer.default_root_dir})")


def recipe_summary(cfg: DictConfig, module, data) -> str:
    """What trains and why: the network (its plan), the optimiser and schedule, the epoch, the loss (two lines)."""
    from omegaconf import OmegaConf

    from segtrain.models import resolve

    trainable = sum(p.numel() for p in module.net.parameters() if p.requires_grad)
    name = str(cfg.model.get("_target_", "?")).rsplit(".", 1)[-1]
    args = resolve(cfg.model, data.spec)
    shape = ""
    if "filters" in args:  # DynUNet
        heads = f", deep supervision over {args['deep_supr_num'] + 1} outputs" if args.get("deep_supervision") else ""
        shape = f" ({len(args['strides'])} stages, {args['filters'][0]}-{args['filters'][-1]} filters{heads})"
    elif "channels" in args:
        shape = f" ({len(args['channels'])} levels, {args['channels'][0]}-{args['channels'][-1]} channels)"
    optimizer = OmegaConf.to_container(cfg.optim.optimizer, resolve=True)
    settings = ", ".join(f"{k} {v}" for k, v in optimizer.items() if k not in ("_target_", "_partial_"))
    scheduler = cfg.optim.get("scheduler")
    schedule = str(scheduler.get("_target_")).rsplit(".", 1)[-1] if scheduler else "constant learning rate"
    steps = -(-data.patches_per_epoch // data.batch_size)
    clip = cfg.trainer.get("gradient_clip_val")
    choices = _group_choices()
    model, optim, data_choice = choices.get("model", name), choices.get("optim", "?"), choices.get("data", "?")
    if data_choice in ("nifti", "images2d") and (model, optim) == ("dynunet", "sgd"):
        why = (f"nnU-Net's network and recipe, the default for your data (data={data_choice}); "
               "model=unet optim=adamw train the small U-Net instead")
    elif data_choice.startswith("synthetic") and (model, optim) == ("unet", "adamw"):
        why = "the synthetic presets' small U-Net and AdamW (a run of about a minute on a CPU); model=dynunet optim=sgd is nnU-Net's"
    else:
        why = f"model={model} optim={optim}, as chosen"
    return (f"model: {name}{shape}, {trainable:,} trainable parameters; optim: "
            f"{str(optimizer.get('_target_', '?')).rsplit('.', 1)[-1]} ({settings}), {schedule}"
            f"{f', gradient norm clipped at {clip}' if clip else ''}; {steps} steps per epoch; loss: "
            f"{module.loss.loss.registry_name}\n  why: {why}")


def _fit(trainer, module, data, ckpt_path) -> None:
    """``trainer.fit``, with Lightning's ways of ending a run early turned into segtrain's errors (non-zero exits)."""
    import signal

    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from segtrain.callbacks.interrupt import GracefulStop
    from segtrain.errors import RunInterrupted

    try:
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    except OSError as err:
        if err.errno not in FULL_DISK:
            raise
        raise storage_error(err, trainer) from None
    except SIGTERMException:  # SIGTERM before segtrain's own handler was in place (before the first step)
        raise RunInterrupted("SIGTERM before the first training step; nothing new to save", signal.SIGTERM) from None
    except SystemExit:  # Lightning exits after a KeyboardInterrupt: a second Ctrl-C
        if any(isinstance(c, GracefulStop) and c.hard_stop for c in trainer.callbacks):
            raise RunInterrupted("a second Ctrl-C stopped the run at once; the last good checkpoint is "
                                 "checkpoints/last.ckpt", signal.SIGINT) from None
        raise


def _test(trainer, module, data, output_dir: Path) -> None:
    """Score the held-out test cases with the best checkpoint (``trainer.test``); rank 0 writes ``test_*`` files."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from segtrain.evaluation.summary import console_table, write_results

    checkpoint = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
    best = getattr(checkpoint, "best_model_path", "") if checkpoint is not None else ""
    if best and Path(best).is_file():
        ckpt_path, which = best, f"the best checkpoint ({Path(best).name})"
    else:  # no checkpoint was written (fast_dev_run, checkpointing off): the weights as they are
        ckpt_path, which = None, "the final weights (no checkpoint was saved)"
    log.info("segtrain: scoring %d test case(s) with %s", len(data.test_cases), which)
    trainer.test(module, datamodule=data, ckpt_path=ckpt_path, verbose=False)
    if trainer.is_global_zero and module.test_rows and not trainer.fast_dev_run:  # a smoke test writes nothing
        paths = write_results(output_dir, module.test_rows, module.test_summary, prefix="test_",
                              title=f"Test set ({which})")
        log.info("%s\n  test per case: %s", console_table(module.test_summary), paths[0])


def summarise(trainer, module, output_dir: Path, seconds: float) -> dict[str, float]:
    from lightning.pytorch.callbacks import ModelCheckpoint

    from segtrain.events import hparam_metrics

    final = dict(module.last_epoch_metrics)
    best = module.best_metrics.get("val/dice", math.nan)
    checkpoint = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
    metrics = {**final, **module.last_test_metrics, "best/val_dice": best, "epochs": trainer.current_epoch,
               "seconds": seconds}
    for logger in trainer.loggers:  # HParams tab: best and final metrics
        logger.log_metrics(hparam_metrics(final, module.best_metrics), step=trainer.global_step)
        logger.save()
    if trainer.is_global_zero:
        lines = [
            f"segtrain: finished {trainer.current_epoch} epoch(s), {trainer.global_step} steps in {seconds:.1f} s",
            f"  best val/dice {best:.4f}; final val/dice {final.get('val/dice', math.nan):.4f}, "
            f"val/iou {final.get('val/iou', math.nan):.4f}, val/loss {final.get('val/loss', math.nan):.4f}",
        ]
        test = module.last_test_metrics
        if test:
            lines.append(f"  test ({module.test_summary.get('cases', 0)} cases): dice {test['test/dice']:.4f} (global), "
                         f"{test['test/dice_per_case']:.4f} (per-case mean), hd95 {test['test/hd95']:.2f}, "
                         f"nsd {test['test/nsd']:.4f}, lesion recall {test['test/lesion_recall']:.3f}")
        from segtrain.callbacks.timing import WallClock

        clock = next((c for c in trainer.callbacks if isinstance(c, WallClock)), None)
        if clock is not None:
            lines.append("  " + clock.line(seconds))
        last = getattr(checkpoint, "last_path", None)
        if checkpoint is not None and last is not None and last.is_file():
            epoch = "" if checkpoint.last_epoch_saved is None else f", epoch {checkpoint.last_epoch_saved}"
            lines.append(f"  checkpoints: {checkpoint.best_model_path or '-'} (best), {last} (last{epoch})")
        lines.append(f"  run directory: {output_dir}")
        if trainer.loggers:  # the folder of all runs (of a sweep: its multirun folder), to compare them
            lines.append(f"  TensorBoard: tensorboard --logdir {output_dir.parent}   (this run: {output_dir.name})")
        log.info("\n".join(lines))
    return metrics
