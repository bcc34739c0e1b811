"""Entry points: ``segtrain`` (train), ``segtrain-predict`` (inference), ``segtrain-losses`` (list the registry).

Thin on purpose: compose the config with Hydra, hand it to ``segtrain.train``, turn user errors
into one line on stderr and a non-zero exit. Heavy imports happen inside the functions.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import hydra
from omegaconf import DictConfig

from segtrain.errors import SegtrainError


def config_dir() -> str:
    """The configs shipped with the package (wheel) or beside it (source checkout, editable install)."""
    packaged = Path(__file__).resolve().parent / "configs"
    source = Path(__file__).resolve().parent.parent / "configs"
    return str(packaged if packaged.is_dir() else source)


def quiet_known_warnings() -> None:
    """Third-party warnings that say nothing actionable to a segtrain user (matched narrowly)."""
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*", module=r"lightning")
    warnings.filterwarnings("ignore", message=r"Num foregrounds 0, Num backgrounds", module=r"monai")
    warnings.filterwarnings("ignore", message=r".*The number of training batches .* is smaller than the logging interval.*")
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning:torch.utils._pytree")


def fail(err: Exception) -> None:
    print(f"segtrain: error: {err}", file=sys.stderr)
    sys.exit(2)


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def _train_app(cfg: DictConfig) -> float | None:
    from segtrain.train import train

    quiet_known_warnings()
    try:
        metrics = train(cfg)
    except SegtrainError as err:
        fail(err)
    metric = cfg.get("optimized_metric")
    return metrics.get(metric) if metric else None


def main() -> None:
    quiet_known_warnings()
    _train_app()


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="predict")
def _predict_app(cfg: DictConfig) -> None:
    from segtrain.predict import predict

    quiet_known_warnings()
    try:
        predict(cfg)
    except SegtrainError as err:
        fail(err)


def predict_main() -> None:
    """``segtrain-predict ckpt_path=... input=...``: segment new images with a trained checkpoint."""
    quiet_known_warnings()
    _predict_app()


def losses_main(argv: list[str] | None = None) -> None:
    """``segtrain-losses [NAME]``: every registry loss with its summary and parameters (default, meaning)."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="segtrain-losses",
        description="List the loss registry. Train with one: segtrain loss=<name> loss.<param>=<value>.",
    )
    parser.add_argument("name", nargs="?", help="show one loss in full: formula, paper, when to pick it, parameters")
    args = parser.parse_args(argv)
    from segtrain.losses import available_losses, describe_losses
    from segtrain.losses.registry import _get

    if args.name and args.name not in available_losses():
        fail(ValueError(f"unknown loss '{args.name}'; available losses: {', '.join(available_losses())}"))
    rows = [r for r in describe_losses(config_dir()) if not args.name or r["name"] == args.name]

    def shown(value) -> str:  # defaults as they are written on the command line
        return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)

    if not args.name:
        print(f"{len(rows)} losses: segtrain loss=<name> loss.<param>=<value>; segtrain-losses <name> shows one in full\n")
    for row in rows:
        if args.name:
            import inspect

            print(f"{row['name']}\n\n{inspect.getdoc(_get(row['name']))}\n")
        else:
            print(f"{row['name']:<24} {row['summary'].replace('``', '')}")
        params = [f"{k} = {shown(v)}" for k, v in row["params"].items()]
        width = max((len(p) for p in params), default=0)
        for param, key in zip(params, row["params"]):
            print(f"    {param:<{width}}  {row['help'].get(key, '')}".rstrip())
        if args.name:
            example = " ".join(f"loss.{k}={shown(v)}" for k, v in row["params"].items())
            print(f"\nexample: segtrain loss={row['name']} {example}".rstrip())


if __name__ == "__main__":
    main()
