"""A run folder belongs to one run at a time: an advisory lock held for the whole run.

Two runs in one folder (a SLURM requeue that overlaps a job still shutting down, ``srun`` starting N
copies, the same command in two terminals) would both exit 0 while TensorBoard shows every step twice
and the last writer owns the checkpoints. The first run takes ``<run dir>/.segtrain.lock`` (``fcntl.flock``,
exclusive, held until the run ends) and writes its pid, host and start time into it; a second run stops
with one line naming the holder (exit 2). The kernel releases the lock when its process dies, however it
dies (SIGKILL included), so a lock left by a dead run is simply taken over; the file stays, with the new
holder's details.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
from pathlib import Path

from segtrain.errors import ConfigError

LOCK_NAME = ".segtrain.lock"


class RunFolderLock:
    """The lock of one run folder; ``release()`` (or the process's end) frees it."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> RunFolderLock:
        """Take the lock or raise ``ConfigError`` (one line: the folder, the holder, what to do)."""
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise ConfigError(f"{self.folder} is in use by another run ({self.holder()}): two runs in one folder would "
                              "log every step twice and overwrite each other's checkpoints; wait for it to end, or "
                              "choose another folder (hydra.run.dir=DIR)") from None
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        self._fd = fd
        return self

    def holder(self) -> str:
        """``pid 123 on host node7, since 2026-12-04T10:00:00+00:00`` (or what can be read of it)."""
        try:
            record = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            record = {}
        if not record:
            return "holder unknown"
        return f"pid {record.get('pid', '?')} on host {record.get('host', '?')}, since {record.get('since', '?')}"

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunFolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def takes_the_lock(world_size: int | None) -> bool:
    """Whether this process is the one of its run that holds the folder's lock: not a DDP worker that Lightning
    started (``LOCAL_RANK`` > 0), not a later node of a multi-node run, not a task > 0 of a SLURM job whose
    tasks are the run's DDP ranks. (Copies that are not ranks of one run, each its own run, all take it.)"""
    env = os.environ
    if env.get("LOCAL_RANK", "0") != "0" or env.get("NODE_RANK", "0") != "0" or env.get("GROUP_RANK", "0") != "0":
        return False
    if env.get("SLURM_PROCID", "0") != "0" and (world_size or 1) > 1:
        return False
    return True
