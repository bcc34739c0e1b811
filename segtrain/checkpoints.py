"""Checkpoint files: written atomically, read with ``weights_only=True`` only, checked before use.

- ``atomic_write``: every file segtrain writes (checkpoints, reports) goes through it. The bytes go
  to an unnamed file in the target's own directory (Linux ``O_TMPFILE``; elsewhere a hidden
  ``.<name>.<pid>.<random>.tmp``), are fsynced, get a name and replace the target with one
  ``rename``; then the directory is fsynced. A kill at any moment leaves the old file or the whole
  new one, never a part; an unnamed file vanishes with the process, and a named leftover of a
  dead process is removed by ``remove_stale_temporaries`` at the next run's start.
- ``SafeCheckpointIO``: Lightning's checkpoint plugin on top of that; it refuses to write weights
  that hold NaN/Inf (the previous checkpoint is kept) and reads with ``weights_only=True``.
- ``read_checkpoint``: the one place checkpoints are read (resume, predict): a missing, empty,
  truncated, foreign or pickle-carrying file becomes one ``CheckpointError`` line naming the file.
- ``capture_rng_states`` / ``restore_rng_states``: python, numpy, torch (and CUDA) generator states
  in a form that ``weights_only=True`` loads, for exact resume.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import random
import re
import secrets
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from segtrain.errors import CheckpointError, NonFiniteError

_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$")


# -- atomic files --------------------------------------------------------------------------------
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


def remove_stale_temporaries(directory: str | Path) -> list[Path]:
    """Delete the hidden temporary files that a killed writer (of a process no longer alive) left in ``directory``."""
    removed = []
    directory = Path(directory)
    if not directory.is_dir():
        return removed
    for entry in directory.iterdir():
        match = _TEMPORARY.match(entry.name)
        if not match or not entry.is_file():
            continue
        pid = int(match["pid"])
        if pid != os.getpid() and _alive(pid):
            continue
        with contextlib.suppress(OSError):
            entry.unlink()
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
def nonfinite_tensors(tensors: Iterable[tuple[str, Any]]) -> list[str]:
    """Names of the floating-point tensors among ``(name, value)`` pairs that hold NaN or Inf."""
    bad = []
    for name, value in tensors:
        if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad.append(name)
    return bad


def _optimizer_tensors(checkpoint: dict) -> Iterable[tuple[str, Any]]:
    for index, optimizer in enumerate(checkpoint.get("optimizer_states") or []):
        for param, state in (optimizer.get("state") or {}).items():
            for key, value in state.items():
                yield f"optimizer {index} state[{param}].{key}", value


def check_finite_checkpoint(checkpoint: dict, path: str | Path) -> None:
    """Raise ``NonFiniteError`` when the weights or optimizer state of ``checkpoint`` hold NaN/Inf."""
    bad = nonfinite_tensors((checkpoint.get("state_dict") or {}).items()) + nonfinite_tensors(_optimizer_tensors(checkpoint))
    if bad:
        raise NonFiniteError(
            f"refused to write {path}: {len(bad)} tensor(s) hold NaN/Inf (first: {bad[0]}); "
            "the previous checkpoint is kept. Likely causes: a learning rate too high (optim.optimizer.lr), "
            "extreme image intensities, or fp16 overflow (trainer.precision=bf16-mixed)"
        )


# -- Lightning's checkpoint plugin ------------------------------------------------------------------
class SafeCheckpointIO(TorchCheckpointIO):
    """Atomic, finite-only writes and ``weights_only=True`` reads for every checkpoint Lightning saves or loads."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        check_finite_checkpoint(checkpoint, path)
        try:
            atomic_write(path, lambda handle: torch.save(checkpoint, handle))
        except OSError as err:
            raise CheckpointError(
                f"cannot write checkpoint {path}: {err.strerror or err}; the previous checkpoint is intact. "
                "Free disk space or choose a writable run directory (hydra.run.dir=DIR), then resume"
            ) from None

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None) -> dict[str, Any]:
        return read_checkpoint(path, map_location=map_location)


# -- reading ---------------------------------------------------------------------------------------
def read_checkpoint(path: str | Path, map_location: Any = "cpu", key: str = "ckpt_path") -> dict[str, Any]:
    """Load a segtrain checkpoint with ``weights_only=True``; any problem is one ``CheckpointError`` line.

    ``key``: the parameter named in the message (``ckpt_path``, ``resume``).
    """
    path = Path(path).expanduser()
    where = f"{key}={path}"
    if not path.exists():
        raise CheckpointError(f"{where}: no such checkpoint; give <run dir>/checkpoints/last.ckpt, or resume=<run dir>")
    if not path.is_file():
        raise CheckpointError(f"{where} is not a file; give a .ckpt file, or resume=<run dir> for a run folder")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{where} is empty (a write that never finished?); use another checkpoint of the run")
    try:  # memory-mapped: reading the config of a large checkpoint does not pull its tensors into memory
        checkpoint = torch.load(path, map_location=map_location, weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        if "weights only" in str(err).lower():
            raise CheckpointError(
                f"{where} holds Python objects besides tensors (a pickle payload that could run code); "
                "segtrain loads checkpoints with weights_only=True only and refuses it"
            ) from None
        raise CheckpointError(f"{where} is not a PyTorch checkpoint ({_first_line(err)})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, KeyError, ValueError, IndexError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{where} is truncated or not a PyTorch checkpoint ({_first_line(err)}); "
                              "use another checkpoint of the run") from None
    except OSError as err:
        raise CheckpointError(f"{where} cannot be read: {err.strerror or err}") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{where} holds a {type(checkpoint).__name__}, not a segtrain checkpoint "
                              "(a dict with the weights and the run config)")
    if "state_dict" not in checkpoint or not isinstance(checkpoint.get("segtrain"), dict):
        raise CheckpointError(f"{where} is not a segtrain checkpoint (no weights with the run config); "
                              "use best.ckpt or last.ckpt from a segtrain run directory")
    return checkpoint


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:160]


# -- generator states -------------------------------------------------------------------------------
def capture_rng_states() -> dict[str, Any]:
    """python, numpy, torch (and CUDA) generator states, as tensors and lists (``weights_only``-safe)."""
    version, python_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "python": {"version": version, "state": list(python_state), "gauss": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Inverse of ``capture_rng_states`` (entries that are missing are left alone)."""
    if "python" in states:
        python = states["python"]
        random.setstate((python["version"], tuple(python["state"]), python["gauss"]))
    if "numpy" in states:
        numpy_state = states["numpy"]
        np.random.set_state((numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                             numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    if "torch" in states:
        torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
