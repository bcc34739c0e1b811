"""Sweeps (``segtrain -m ...``, ``hparams_search=...``) that outlive a failed run and say so at the end.

A run of a sweep that fails (NaN at a high learning rate, a crash, a bad value of one trial) does not
end the sweep: it prints its one ``segtrain: error:`` line, writes ``<run dir>/failed.txt`` (exit code
and that line), and returns no value to the sweeper, which Optuna records as a failed trial. The other runs
go on. When the sweep ends, ``SweepReport`` (a *Hydra* callback, ``hydra.callbacks`` in
``configs/train.yaml``) prints one line for the sweep and, if any run failed, lists them and exits
with the first failed run's code, so that a job script sees the sweep did not fully succeed. It reads
the ``failed.txt`` files, so it also sees runs that a launcher ran as separate jobs (SLURM).

A stop by a signal (SIGTERM, SIGUSR1, Ctrl-C) is not a failed run: it ends the whole sweep at once,
after the run's checkpoint.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

FAILED = "failed.txt"

log = logging.getLogger("segtrain")


def record_failure(output_dir: Path, exit_code: int, line: str) -> None:
    """``<run dir>/failed.txt``: the exit code and the error line of a run that failed inside a sweep."""
    from segtrain.files import write_text_atomic

    output_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(output_dir / FAILED, f"{exit_code}\t{line}\n")


def clear_failure(output_dir: Path) -> None:
    """A run that starts again in its folder (a resume) is no longer a failed one."""
    (output_dir / FAILED).unlink(missing_ok=True)


def read_failure(run_dir: Path) -> tuple[int, str] | None:
    """(exit code, error line) of a run that failed inside a sweep; None for any other run."""
    path = run_dir / FAILED
    if not path.is_file():
        return None
    code, _, line = path.read_text().strip().partition("\t")
    return (int(code) if code.isdigit() else 1), line


def read_failures(sweep_dir: Path) -> list[tuple[str, int, str]]:
    """(run folder name, exit code, error line) of every failed run of a sweep, in folder order."""
    return [(path.parent.name, *read_failure(path.parent)) for path in sorted(sweep_dir.glob(f"*/{FAILED}"))]


def _quiet_optuna() -> None:
    """Optuna's own colored stderr handler off; its lines go through logging (console and the sweep log) instead."""
    try:
        import optuna
    except ImportError:
        return
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()


class SweepReport(Callback):
    """Hydra callback: the end-of-sweep line, the failed runs, and the sweep's exit code (see the module docstring)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if "optuna" in str(OmegaConf.select(config, "hydra.sweeper._target_", default="")).lower():
            _quiet_optuna()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        runs = [p for p in sorted(sweep_dir.glob("*")) if (p / ".hydra").is_dir()]
        failures = read_failures(sweep_dir)
        best = sweep_dir / "optimization_results.yaml"
        extra = f"; best trial: {best}" if best.is_file() else ""
        print(f"segtrain: sweep: {len(runs) - len(failures)} of {len(runs)} run(s) finished in {sweep_dir}{extra}; "
              f"compare them: segtrain-compare {sweep_dir}", file=sys.stderr if failures else sys.stdout)
        if not failures:
            return
        for name, code, line in failures:
            print(f"segtrain: sweep: failed (exit {code}): {name}: {line}", file=sys.stderr)
        sys.exit(failures[0][1])
