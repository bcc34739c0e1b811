"""Checkpoint files: written atomically, read with ``weights_only=True`` only, checked before use.

- Checkpoints are written with ``segtrain.files.atomic_write`` (as every file segtrain writes): a
  kill at any moment leaves the old file or the whole new one, never a part.
- ``SafeCheckpointIO``: Lightning's checkpoint plugin on top of that; it refuses to write weights
  that hold NaN/Inf (the previous checkpoint is kept) and reads with ``weights_only=True``.
- ``read_checkpoint``: the one place checkpoints are read (resume, predict): a missing, empty,
  truncated, foreign or pickle-carrying file becomes one ``CheckpointError`` line naming the file.
- ``capture_rng_states`` / ``restore_rng_states``: python, numpy, torch (and CUDA) generator states
  in a form that ``weights_only=True`` loads, for exact resume.
"""

from __future__ import annotations

import pickle
import random
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from segtrain.errors import CheckpointError, NonFiniteError

from segtrain.files import atomic_write


def nonfinite_tensors(tensors: Iterable[tuple[str, Any]]) -> list[str]:
    """Names of the floating-point tensors among ``(name, value)`` pairs that hold NaN or Inf.

    One host synchronisation per device, whatever the number of tensors (their flags are read together).
    """
    by_device: dict[Any, list[tuple[str, torch.Tensor]]] = {}
    for name, value in tensors:
        if torch.is_tensor(value) and value.is_floating_point():
            by_device.setdefault(value.device, []).append((name, value))
    bad = []
    for items in by_device.values():
        finite = torch.stack([torch.isfinite(value).all() for _, value in items]).tolist()
        bad += [name for (name, _), ok in zip(items, finite) if not ok]
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
        except (OSError, RuntimeError) as err:  # torch's zip writer reports a full disk as RuntimeError("... unexpected pos")
            raise CheckpointError(
                f"cannot write checkpoint {path}: {_write_failure(err, path)}; the previous checkpoint is intact. "
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
    not_one = file_problem(path)
    if not_one:
        raise CheckpointError(f"{where} {not_one}")
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


ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes zip archives


def file_problem(path: Path) -> str | None:
    """What a file is when it cannot be a checkpoint, from its first bytes (no torch needed); None when it may be one."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(512)
    except OSError as err:
        return f"cannot be read: {err.strerror or err}"
    if not head:
        return "is empty (a write that never finished?); use another checkpoint of the run"
    if head.startswith(ZIP_MAGIC):
        return None
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and all(c.isprintable() or c in "\r\n\t" for c in text):
        first = text.strip().splitlines()[0][:60] if text.strip() else ""
        return (f"is a text file, not a checkpoint (it begins {first!r}); give a .ckpt file from a run's checkpoints/ "
                "folder (best.ckpt or last.ckpt)")
    return ("is not a zip archive, so not a PyTorch checkpoint (torch saves checkpoints as zip archives); give a .ckpt "
            "file from a run's checkpoints/ folder (best.ckpt or last.ckpt)")


def _write_failure(err: BaseException, path) -> str:
    """What stopped a checkpoint write, in words: a full disk (with the space left), a size limit, or the OS's reason."""
    import errno
    import shutil

    code = getattr(err, "errno", None)
    text = str(err)
    try:
        free = shutil.disk_usage(Path(path).parent).free
    except OSError:
        free = None
    if code == errno.ENOSPC or "No space left" in text or (isinstance(err, RuntimeError) and free is not None and free < 2**20):
        return f"the disk is full ({free / 2**20:.1f} MiB free)" if free is not None else "the disk is full"
    if code == errno.EFBIG or "File too large" in text:
        return "the file exceeds the size this process may write (ulimit -f, or a quota)"
    if isinstance(err, OSError):
        return err.strerror or _first_line(err)
    return f"the write failed ({_first_line(err)})"


def _first_line(err: BaseException) -> str:
    """The error's first sentence, whole (torch's long advice after it is left out rather than cut mid-word)."""
    text = str(err).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    sentence = line.split(". ", 1)[0].rstrip(".")
    return sentence if len(sentence) <= 240 else sentence[:sentence.rfind(" ", 0, 240)] + " ..."


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
