"""Entry points: ``segtrain`` (train), ``segtrain-losses`` (list the registry).

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


def losses_main(argv: list[str] | None = None) -> None:
    """``segtrain-losses [NAME]``: every registry loss with its parameters, defaults and summary."""
    import argparse

    parser = argparse.ArgumentParser(prog="segtrain-losses", description="List the loss registry (loss=<name> loss.<param>=<value>).")
    parser.add_argument("name", nargs="?", help="show one loss with its full docstring")
    args = parser.parse_args(argv)
    from segtrain.losses import available_losses, describe_losses
    from segtrain.losses.registry import _get

    if args.name:
        if args.name not in available_losses():
            fail(ValueError(f"unknown loss '{args.name}'; available losses: {', '.join(available_losses())}"))
        import inspect

        print(f"{args.name}\n\n{inspect.getdoc(_get(args.name))}")
        return
    for row in describe_losses():
        params = ", ".join(f"{k}={v!r}" for k, v in row["params"].items()) or "-"
        print(f"{row['name']:<24} {row['summary']}\n{'':<24} params: {params}")


if __name__ == "__main__":
    main()
