"""Running segtrain's command lines in tests: in this process (fast) or as a real process (signals, DDP, packaging).

``run_cli`` runs a console script's entry point (``segtrain.cli:main``, ...) inside the test process,
as the installed script would: same ``sys.argv``, environment, working directory, exit code and
output, returned as a ``subprocess.CompletedProcess``. It saves the ~5 s of imports a new Python
process pays for torch, Lightning and MONAI on every call. ``run_process`` starts the real script,
for what only a process shows: signals, DDP workers, a fresh interpreter's warnings, packaging.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository
BIN = Path(sys.executable).parent
SEGTRAIN = str(BIN / "segtrain")

# A few seconds per run on 2 CPU cores: tiny volumes, tiny network, a couple of steps (configs/debug/tiny*.yaml
# spelled out, so that tests can drop or change single keys).
TINY_3D = [
    "data.synthetic.num_cases=6",
    "data.synthetic.shape=[32,32,32]",
    "data.synthetic.radius=[3,6]",
    "data.patch_size=[16,16,16]",
    "data.patches_per_epoch=4",
    "data.batch_size=2",
    "model.channels=[4,8,16,32]",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.log_every_n_steps=1",
]
TINY_2D = [
    "data=synthetic2d",
    "data.synthetic.num_cases=6",
    "data.synthetic.shape=[64,64]",
    "data.patch_size=[32,32]",
    "data.patches_per_epoch=8",
    "data.batch_size=4",
    "model.channels=[4,8,16,32]",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.log_every_n_steps=1",
]


def on_user_data(tiny: list[str]) -> list[str]:
    """A ``TINY_*`` run's settings for ``data=nifti``/``images2d``: without the synthetic generator's keys, and with
    the tiny U-Net (``model.channels`` is ``model=unet``'s; your data gets nnU-Net's ``dynunet`` by default)."""
    return ["model=unet", "optim=adamw", *(a for a in tiny if not a.startswith(("data=", "data.synthetic")))]


def _entry_points() -> dict[str, str]:
    return {"segtrain": "segtrain.cli:main", "segtrain-predict": "segtrain.cli:predict_main",
            "segtrain-evaluate": "segtrain.cli:evaluate_main", "segtrain-losses": "segtrain.cli:losses_main",
            "segtrain-compare": "segtrain.compare:main"}


def cli_env(cache_dir: Path, env: dict | None = None) -> dict:
    full = {**os.environ, "SEGTRAIN_CACHE_DIR": str(cache_dir), "PYTHONWARNINGS": "ignore", **(env or {})}
    full.pop("HYDRA_FULL_ERROR", None)
    return full


def run_process(args: list[str], cwd: Path, cache_dir: Path, timeout: int = 600, program: str = SEGTRAIN,
                env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a segtrain command line in a new process, as a user would; returns the completed process."""
    return subprocess.run([program, *args], cwd=cwd, env=cli_env(cache_dir, env), capture_output=True, text=True,
                          timeout=timeout)


def _needs_a_process(args: list[str]) -> bool:
    """DDP: Lightning starts the other ranks by running this process's command line again."""
    for item in map(str, args):
        key, _, value = item.partition("=")
        value = value.strip()
        if key == "trainer.devices" and ((value.isdigit() and int(value) > 1) or value.count(",") >= 1):
            return True
        if key in ("trainer", "trainer.strategy") and value.startswith("ddp"):
            return True
    return False


def run_cli(args: list[str], cwd: Path, cache_dir: Path, timeout: int = 600, program: str = SEGTRAIN,
            env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a segtrain command line in this process (see the module docstring); ``timeout`` is not enforced.

    A DDP run (``trainer.devices`` > 1) and any other program run as real processes.
    """
    import importlib

    name = Path(program).name
    if name not in _entry_points() or _needs_a_process(args):
        return run_process(args, cwd, cache_dir, timeout, program, env)
    module, _, function = _entry_points()[name].partition(":")
    entry = getattr(importlib.import_module(module), function)
    out, err = io.StringIO(), io.StringIO()
    saved = _State()
    code = 0
    try:
        os.environ.clear()
        os.environ.update(cli_env(cache_dir, env))
        os.chdir(cwd)
        sys.argv = [program, *map(str, args)]
        _reset_segtrain()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            try:
                result = entry()
                code = int(result) if isinstance(result, int) else 0
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
                if isinstance(exit_.code, str):
                    print(exit_.code, file=sys.stderr)
            except BaseException:  # noqa: BLE001 - an uncaught exception is what a process prints and exits 1 with
                import traceback

                traceback.print_exc()
                code = 1
            finally:
                _close_file_handlers()
    finally:
        saved.restore()
        _no_process_group_left(args)
    return subprocess.CompletedProcess([program, *args], code, out.getvalue(), err.getvalue())


def _no_process_group_left(args) -> None:
    """An in-process run must not leave torch.distributed initialised: later metrics would try to sync over it."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        raise AssertionError(f"this command line started torch.distributed in the test process; run it with "
                             f"run_process: {' '.join(map(str, args))}")


def _reset_segtrain() -> None:
    """What a new process starts without: Hydra's global state and segtrain's per-launch globals."""
    from hydra.core.global_hydra import GlobalHydra

    import segtrain.cli as cli

    GlobalHydra.instance().clear()
    cli._typed_overrides = None
    cli._existing_run_dir = None


def _close_file_handlers() -> None:
    """Close the run log files Hydra's logging config opened (a process would close them at exit)."""
    for logger in [logging.getLogger(), *[logging.getLogger(n) for n in list(logging.root.manager.loggerDict)]]:
        for handler in list(getattr(logger, "handlers", [])):
            if isinstance(handler, logging.FileHandler):
                handler.close()
                logger.removeHandler(handler)


class _State:
    """The process state a command line changes: restored after an in-process run."""

    def __init__(self):
        self.environ = dict(os.environ)
        self.cwd = os.getcwd()
        self.argv = list(sys.argv)
        self.path = list(sys.path)
        self.handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}

    def restore(self) -> None:
        from hydra.core.global_hydra import GlobalHydra

        GlobalHydra.instance().clear()
        os.environ.clear()
        os.environ.update(self.environ)
        os.chdir(self.cwd)
        sys.argv = self.argv
        sys.path[:] = self.path
        for signum, handler in self.handlers.items():
            signal.signal(signum, handler)


def compose(overrides: list[str], cache_dir: Path | None = None, run_dir: Path | None = None):
    """Compose configs/train.yaml with Hydra's compose API (no run directory needed)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import open_dict

    from segtrain.cli import config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = hydra_compose("train", overrides=overrides, return_hydra_config=False)
    with open_dict(cfg):
        if cache_dir is not None:
            cfg.paths.cache_dir = str(cache_dir)
        cfg.paths.output_dir = str(run_dir) if run_dir else "."
    return cfg
