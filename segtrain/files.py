"""Atomic files: every file segtrain writes (checkpoints, predictions, reports, caches) goes through here.

``atomic_write``: the bytes go to an unnamed file in the target's own directory (Linux
``O_TMPFILE``; elsewhere a hidden ``.<name>.<pid>.<random>.tmp``), are fsynced, get a name and
replace the target with one ``rename``; then the directory is fsynced. A kill at any moment leaves
the old file or the whole new one, never a part; an unnamed file vanishes with the process, and a
named leftover of a dead process is removed by ``remove_stale_temporaries`` at the next run's start.
``staging_folder`` + ``publish`` do the same for writers that want a folder (MONAI's ``SaveImage``).

No heavy imports here: ``segtrain-evaluate`` uses it without torch's training stack.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO

_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$")


# --------------------------------------------------------------------------------
def _fsync_directory(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened or synced
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` with ``write(file)`` so that readers only ever see the old file or the whole new one.

    Raises:
        OSError: the directory cannot be written, or the disk is full; ``path`` is untouched then.
    """
    path = Path(path)
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    named: Path | None = None
    try:
        named = _write_unnamed(path, write)
        if named is None:  # no O_TMPFILE here: a hidden named file, removed if this process fails
            named = _temporary_name(path)
            with open(named, "xb") as handle:
                write(handle)
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(named, path)
        named = None
        _fsync_directory(directory)
    finally:
        if named is not None:
            with contextlib.suppress(OSError):
                named.unlink()


def _write_unnamed(path: Path, write: Callable[[IO[bytes]], None]) -> Path | None:
    """Write into an unnamed ``O_TMPFILE`` file beside ``path``, then name it; ``None`` where that is unsupported.

    A process killed before the naming leaves nothing behind. ``os.link`` calls plain ``link()``,
    which does not follow the /proc magic link, unless a directory descriptor is given; with one it
    calls ``linkat(..., AT_SYMLINK_FOLLOW)``, which gives the open file a name.
    """
    try:
        fd = os.open(path.parent, os.O_TMPFILE | os.O_WRONLY, 0o644)
    except (AttributeError, OSError):  # not Linux, or a filesystem without O_TMPFILE
        return None
    with os.fdopen(fd, "wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
        named = _temporary_name(path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.link(f"/proc/self/fd/{handle.fileno()}", named, src_dir_fd=dir_fd, follow_symlinks=True)
        except OSError:  # no /proc: write again the plain way
            return None
        finally:
            os.close(dir_fd)
    return named


def write_text_atomic(path: str | Path, text: str) -> None:
    atomic_write(path, lambda handle: handle.write(text.encode()))


@contextlib.contextmanager
def staging_folder(directory: str | Path):
    """A hidden folder in ``directory`` for writers that want a folder (MONAI's ``SaveImage``); ``publish`` moves files out.

    It is removed on exit; a killed process leaves it to ``remove_stale_temporaries``.
    """
    import shutil

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    staging = _temporary_name(directory / "staging")
    staging.mkdir()
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def publish(staged: str | Path, target: str | Path) -> Path:
    """Give a file written in a ``staging_folder`` its final name in one ``rename`` (fsynced before and after)."""
    staged, target = Path(staged), Path(target)
    with open(staged, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(staged, target)
    _fsync_directory(target.parent)
    return target


def remove_stale_temporaries(directory: str | Path) -> list[Path]:
    """Delete the hidden temporary files (and staging folders) a killed writer (no longer alive) left in ``directory``."""
    import shutil

    removed = []
    directory = Path(directory)
    if not directory.is_dir():
        return removed
    for entry in directory.iterdir():
        match = _TEMPORARY.match(entry.name)
        if not match:
            continue
        pid = int(match["pid"])
        if pid != os.getpid() and _alive(pid):
            continue
        with contextlib.suppress(OSError):
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
            removed.append(entry)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- finiteness ------------------------------------------------------------------------------------
