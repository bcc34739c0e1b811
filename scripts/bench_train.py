"""Training-step overhead of segtrain (Lightning module, metrics, logging) against a bare PyTorch loop.

Same data pipeline, network, loss, optimizer and batches; prints seconds per step and the ratio,
the cost of the non-finite guard (one host synchronisation and a gradient norm per step), and the
share of step time the training process waits for data from the real loader (augmentation in
``data.num_workers`` workers; target <= 5% with augment=nnunet).
    python scripts/bench_train.py [--steps 60] [overrides...]   e.g.  data=synthetic2d  augment=nnunet
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from helpers.cli import compose
    from lightning.pytorch import Callback, Trainer, seed_everything

    from segtrain.augment import build_augmentation
    from segtrain.data import build_datamodule
    from segtrain.models import fixed_divisor
    from segtrain.train import build_loss_from_config, build_module

    cfg = compose(args.overrides)
    seed_everything(0, verbose=False)
    loss = build_loss_from_config(cfg.loss)
    data = build_datamodule(cfg.data, model_divisor=fixed_divisor(cfg.model, 3), augmentation=build_augmentation(cfg.get("augment")),
                            label_maps=getattr(loss, "label_maps", {}))
    device = "cuda" if torch.cuda.is_available() else "cpu"  # the GPU when there is one, as the Trainer below
    data.use_device(device)  # where batches are augmented (augment.device), data.num_workers=auto, pinned memory
    data.setup("fit")
    total = args.warmup + args.steps

    # Bare loop: the same module's network, loss and optimizer, no Lightning.
    precision = str(cfg.trainer.precision)
    dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float16 if precision.startswith("16") else None
    print(f"device: {torch.cuda.get_device_name() if device == 'cuda' else 'CPU'}; precision {precision}")
    module = build_module(cfg, data.spec, loss).to(device)
    optimizer = module.optimizer_factory(params=module.parameters())
    scaler = torch.amp.GradScaler(device, enabled=dtype is torch.float16)
    batches = []
    for batch in data.train_dataloader():
        batches.append(batch)
        if len(batches) == total:
            break
    while len(batches) < total:
        batches += batches[: total - len(batches)]
    from lightning.fabric.utilities.apply_func import move_data_to_device

    times = []
    for i, batch in enumerate(batches):
        start = time.perf_counter()
        batch = data.on_after_batch_transfer(move_data_to_device(dict(batch), device), 0)  # as Lightning does
        image, label = batch["image"], batch["label"]
        with torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = module.net(image)
            value = module.loss(out, label.long())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(value).backward()
        scaler.unscale_(optimizer)
        if cfg.trainer.gradient_clip_val:  # same clipping as the Trainer applies
            torch.nn.utils.clip_grad_norm_(module.parameters(), cfg.trainer.gradient_clip_val)
        scaler.step(optimizer)
        scaler.update()
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    bare = statistics.median(times)

    # segtrain: Lightning + metrics + logging, same batches.
    class StepTimer(Callback):
        def __init__(self):
            self.times, self._start = [], 0.0

        def on_train_batch_start(self, *a):
            self._start = time.perf_counter()

        def on_train_batch_end(self, trainer, *a):
            if trainer.global_step > args.warmup:
                self.times.append(time.perf_counter() - self._start)

    class TimedLoader:
        """The data module's training loader, timing how long each batch keeps the training process waiting."""

        def __init__(self, loader):
            self.loader, self.waits = loader, []

        def __len__(self):
            return total

        def __iter__(self):
            iterator = iter(self.loader)
            for _ in range(total):
                start = time.perf_counter()
                try:
                    batch = next(iterator)
                except StopIteration:
                    iterator = iter(self.loader)
                    batch = next(iterator)
                self.waits.append(time.perf_counter() - start)
                yield batch

    class Periods(Callback):
        def __init__(self):
            self.starts = []

        def on_train_batch_start(self, *a):
            self.starts.append(time.perf_counter())

    def segtrain_step(*callbacks, loader=None) -> float:
        module = build_module(cfg, data.spec, build_loss_from_config(cfg.loss))
        module.print_epoch_summary = False
        module.on_after_batch_transfer = data.on_after_batch_transfer  # augmentation on the device, as with the data module
        timer = StepTimer()
        trainer = Trainer(accelerator=device if device == "cpu" else "gpu", devices=1, max_steps=total, limit_val_batches=0, logger=False,
                          enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                          precision=cfg.trainer.precision, callbacks=[timer, *callbacks], num_sanity_val_steps=0,
                          gradient_clip_val=cfg.trainer.gradient_clip_val, log_every_n_steps=cfg.trainer.log_every_n_steps)
        trainer.fit(module, train_dataloaders=loader or torch.utils.data.DataLoader(batches, batch_size=None,
                                                                                    collate_fn=lambda b: dict(b)))
        return statistics.median(timer.times)

    from segtrain.callbacks.guard import NonFiniteGuard

    ours = segtrain_step()
    guarded = segtrain_step(NonFiniteGuard())
    print(f"| loop | s/step (median of {args.steps}) |\n|---|---|")
    print(f"| bare PyTorch | {bare:.4f} |\n| segtrain (Lightning) | {ours:.4f} |\n| segtrain + non-finite guard | {guarded:.4f} |")
    print(f"ratio segtrain / bare: {ours / bare:.3f}")
    print(f"ratio with guard / without: {guarded / ours:.3f}")

    loader, periods = TimedLoader(data.train_dataloader()), Periods()
    segtrain_step(periods, loader=loader)
    steps = list(zip(loader.waits[1:], [b - a for a, b in zip(periods.starts, periods.starts[1:])]))[args.warmup:]
    wait, period = sum(w for w, _ in steps), sum(p for _, p in steps)
    print(f"data ({' '.join(args.overrides) or 'defaults'}): data.num_workers={data.options.num_workers} -> "
          f"{data.num_workers} worker(s); {period / len(steps):.4f} s/step, waiting for data {wait / len(steps):.4f} s/step: "
          f"{100 * wait / period:.1f}% of step time")


if __name__ == "__main__":
    main()
