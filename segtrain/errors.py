"""Errors a user can act on: the CLI prints each as one ``segtrain: ...`` line and exits with its code.

Exit codes (docs/reliability.md):

- 2: bad input, found before training (configuration, data, checkpoint, run directory, disk); also a full
  disk while the run writes (its last checkpoint is kept).
- 3: training stopped on non-finite values (NaN/Inf loss, gradients or weights).
- 128 + signal number: stopped by a signal after saving a resumable checkpoint
  (130 Ctrl-C/SIGINT, 138 SIGUSR1, 143 SIGTERM), as shells report a process killed by that signal.
"""


class SegtrainError(Exception):
    """A problem with the user's configuration or data, described in one line with the fix."""

    exit_code = 2
    label = "error"


class DataError(SegtrainError, ValueError):
    """Bad or missing data: the message names the file, what is wrong and how to fix it."""


class ConfigError(SegtrainError, ValueError):
    """A bad configuration value: the message names the parameter and what is allowed."""


class CheckpointError(SegtrainError, ValueError):
    """A checkpoint that cannot be read or written safely: the message names the file."""


class StorageError(SegtrainError, OSError):
    """The run folder's disk is full (or a size limit is reached) while the run writes: exit 2, the last checkpoint kept."""


class NonFiniteError(SegtrainError):
    """Training produced NaN/Inf (loss, gradients or weights); the run stops and keeps its last good checkpoint."""

    exit_code = 3


class RunInterrupted(SegtrainError):
    """The run was stopped by a signal after writing a resumable checkpoint (exit 128 + signal number)."""

    label = "stopped"

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = int(signum)
        self.exit_code = 128 + self.signum
