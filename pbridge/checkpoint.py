"""Checkpoints that survive crashes: atomic writes, a checksum, and the previous one kept.

File format: one header line ``pbridge-checkpoint sha256=<hex>\\n`` followed by the bytes of
``torch.save(payload)``; the digest covers those bytes, so a truncated or altered file is
detected on load. :func:`save_checkpoint` writes a temporary file in the same folder, fsyncs it,
hard-links the current checkpoint to ``<name>.prev`` and renames the temporary file into place:
at every instant ``<name>`` is a complete checkpoint, and after a write the folder holds the
last two. Temporary files of a write killed with SIGKILL are removed by the next write; the
checkpoint takes the mode of the folder's other files (0644 under the usual umask).
"""

from __future__ import annotations

import glob
import hashlib
import io
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "CorruptCheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "load_latest_checkpoint",
    "previous_path",
    "check_state_fits",
]

_MAGIC = b"pbridge-checkpoint sha256="


class CorruptCheckpointError(RuntimeError):
    """A checkpoint file that is truncated, altered or not a pbridge checkpoint."""


def previous_path(path: str | Path) -> Path:
    """Where the checkpoint before the latest one is kept: ``<path>.prev``."""
    path = Path(path)
    return path.with_name(path.name + ".prev")


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> None:
    """Write ``payload`` to ``path`` atomically with its checksum; keep the old file as
    ``<path>.prev``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    body = buffer.getvalue()
    for stale in path.parent.glob(glob.escape(path.name) + "*.tmp"):
        stale.unlink(missing_ok=True)  # left by a write killed with SIGKILL
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # the mode of any other file written there
        with os.fdopen(fd, "wb") as handle:
            handle.write(_MAGIC + hashlib.sha256(body).hexdigest().encode() + b"\n")
            handle.write(body)
            handle.flush()
            os.fsync(handle.fileno())
        if path.is_file():  # keep it as .prev, with ``path`` present at every instant
            link = path.with_name(path.name + ".prev.tmp")
            link.unlink(missing_ok=True)
            try:
                os.link(path, link)
            except OSError:  # a file system without hard links
                shutil.copyfile(path, link)
            os.replace(link, previous_path(path))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and verify a checkpoint written by :func:`save_checkpoint` (tensors on the CPU).

    Raises ``FileNotFoundError`` when there is no file and :class:`CorruptCheckpointError` when
    its header or checksum is wrong.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    data = path.read_bytes()
    header, _, body = data.partition(b"\n")
    if not header.startswith(_MAGIC):
        raise CorruptCheckpointError(f"{path} is not a pbridge checkpoint (no checksum header)")
    expected = header[len(_MAGIC) :].decode(errors="replace")
    actual = hashlib.sha256(body).hexdigest()
    if actual != expected:
        raise CorruptCheckpointError(
            f"{path} is corrupted or truncated: sha256 of its {len(body)} bytes is "
            f"{actual[:12]}..., the header says {expected[:12]}..."
        )
    return torch.load(io.BytesIO(body), map_location="cpu", weights_only=True)


def load_latest_checkpoint(path: str | Path) -> tuple[dict[str, Any], Path]:
    """The newest loadable checkpoint of ``path`` and ``<path>.prev``, with its path.

    A corrupted latest file is reported with a warning and the previous one is used; when both
    are missing or corrupted the error names both; when neither exists, ``FileNotFoundError``.
    """
    path = Path(path)
    if not path.is_file() and not previous_path(path).is_file():
        raise FileNotFoundError(f"no checkpoint at {path} (nor {previous_path(path).name})")
    try:
        return load_checkpoint(path), path
    except (FileNotFoundError, CorruptCheckpointError) as latest_error:
        previous = previous_path(path)
        try:
            state = load_checkpoint(previous)
        except (FileNotFoundError, CorruptCheckpointError) as previous_error:
            raise CorruptCheckpointError(
                f"no usable checkpoint: {latest_error}; and {previous_error}"
            ) from previous_error
        warnings.warn(
            f"{latest_error}; resuming from the previous checkpoint {previous}", stacklevel=2
        )
        return state, previous


def check_state_fits(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Raise ``ValueError`` naming every tensor of ``state`` that is missing from ``module``,
    unexpected, or of another shape (e.g. a checkpoint written with other K or d)."""
    own = module.state_dict()
    problems = [
        f"{name}: checkpoint {tuple(state[name].shape)}, model {tuple(own[name].shape)}"
        for name in own
        if name in state and state[name].shape != own[name].shape
    ]
    problems += [f"{name}: missing from the checkpoint" for name in own if name not in state]
    problems += [f"{name}: not in the model" for name in state if name not in own]
    if problems:
        shown = "; ".join(problems[:6]) + ("; ..." if len(problems) > 6 else "")
        raise ValueError(f"{source} does not fit this {type(module).__name__}: {shown}")
