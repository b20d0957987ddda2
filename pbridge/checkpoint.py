"""Checkpoints that survive crashes: atomic writes, a checksum, and the previous one kept.

File format: ``<name>`` holds exactly the bytes of ``torch.save(payload)`` (so
``torch.load(<name>, weights_only=True)`` reads it), and the sidecar ``<name>.sha256`` holds
their SHA-256 digest on one line (the hex digest ``sha256sum <name>`` prints; its whole line,
``<hex>  <name>``, is read too); a truncated or altered file, or one whose sidecar is missing or
disagrees, is refused on load, and a file copied without its sidecar is accepted by writing it:
``sha256sum <name> > <name>.sha256``. Checkpoints of
the older layout (one header line ``pbridge-checkpoint sha256=<hex>\\n`` before the torch bytes,
no sidecar) are still read.

:func:`save_checkpoint` writes both files as temporary files in the same folder and fsyncs
them, moves the current pair to ``<name>.prev`` and ``<name>.prev.sha256`` (the checkpoint
hard-linked first, so ``<name>`` exists at every instant) and renames the new pair into place:
a crash at any instant leaves at least one intact pair of the last two, and after a write the
folder holds both. Temporary files of a write killed with SIGKILL are removed by the next
write; both files take the mode of the folder's other files (0644 under the usual umask).
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
    "checksum_path",
    "check_state_fits",
    "load_checkpoint_of",
    "written_by_class_of",
]

_OLD_MAGIC = b"pbridge-checkpoint sha256="
"""The header line of the older, single-file layout."""


class CorruptCheckpointError(RuntimeError):
    """A checkpoint file that is truncated, altered or not a pbridge checkpoint."""


def previous_path(path: str | Path) -> Path:
    """Where the checkpoint before the latest one is kept: ``<path>.prev``."""
    path = Path(path)
    return path.with_name(path.name + ".prev")


def checksum_path(path: str | Path) -> Path:
    """The sidecar holding the SHA-256 digest of the checkpoint ``path``: ``<path>.sha256``."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> None:
    """Write ``payload`` to ``path`` and its digest to ``<path>.sha256``, atomically; keep the
    old pair as ``<path>.prev`` and ``<path>.prev.sha256``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    body = buffer.getvalue()
    for stale in path.parent.glob(glob.escape(path.name) + "*.tmp"):
        stale.unlink(missing_ok=True)  # left by a write killed with SIGKILL
    digest = (hashlib.sha256(body).hexdigest() + "\n").encode()
    written: list[Path] = []
    try:
        written.append(_write_synced(path, body))
        written.append(_write_synced(checksum_path(path), digest))
        if path.is_file():  # keep it as .prev, with ``path`` present at every instant
            _rotate(path)
        os.replace(written[0], path)
        os.replace(written[1], checksum_path(path))
    except BaseException:
        for tmp in written:
            tmp.unlink(missing_ok=True)
        raise


def _write_synced(path: Path, data: bytes) -> Path:
    """``data`` in a new temporary file beside ``path`` (named ``<path.name>...tmp``), flushed
    to disk, with the mode of any other file written there; returns its path."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def _rotate(path: Path) -> None:
    """Make the current checkpoint and its sidecar the previous pair. The checkpoint is linked
    (copied without hard links), so ``path`` stays; the old ``.prev`` pair is replaced."""
    previous = previous_path(path)
    link = path.with_name(path.name + ".prev.tmp")
    link.unlink(missing_ok=True)
    try:
        try:
            os.link(path, link)
        except OSError:  # a file system without hard links
            shutil.copyfile(path, link)
        os.replace(link, previous)
    except BaseException:
        link.unlink(missing_ok=True)
        raise
    if checksum_path(path).is_file():
        os.replace(checksum_path(path), checksum_path(previous))
    else:  # an older-layout checkpoint carries its digest inside
        checksum_path(previous).unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _verified_body(path: Path) -> bytes:
    """The torch bytes of the checkpoint ``path``, checked against their digest (the sidecar's,
    or the header line's for the older layout)."""
    data = path.read_bytes()
    if data.startswith(_OLD_MAGIC):
        header, _, body = data.partition(b"\n")
        expected, source = header[len(_OLD_MAGIC) :].decode(errors="replace"), "the header"
    else:
        sidecar = checksum_path(path)
        if not sidecar.is_file():
            raise CorruptCheckpointError(
                f"{path} has no checksum file {sidecar.name} beside it: not a complete "
                f"pbridge checkpoint; copy {sidecar.name} with it, or, to accept the file as it "
                f"is, run `sha256sum {path.name} > {sidecar.name}` in {path.parent}"
            )
        body, source = data, sidecar.name
        words = sidecar.read_bytes().decode(errors="replace").split()  # sha256sum: "hex  name"
        expected = words[0] if words else ""
    actual = hashlib.sha256(body).hexdigest()
    if actual != expected:
        raise CorruptCheckpointError(
            f"{path} is corrupted or truncated: sha256 of its {len(body)} bytes is "
            f"{actual[:12]}..., {source} says {expected[:12]}..."
        )
    return body


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and verify a checkpoint written by :func:`save_checkpoint` (tensors on the CPU),
    or one of the older single-file layout.

    Raises ``FileNotFoundError`` when there is no file and :class:`CorruptCheckpointError` when
    its checksum is missing or wrong.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    body = _verified_body(path)
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


def written_by_class_of(state: dict, variant: nn.Module) -> bool:
    """Whether the checkpoint ``state`` was written by a run of ``variant``'s class: its name,
    or one of the class's ``former_names`` (the names it had in older runs)."""
    names = (type(variant).__name__, *getattr(variant, "former_names", ()))
    return state.get("variant") in names


def load_checkpoint_of(variant: nn.Module, path: Path) -> tuple[dict, Path]:
    """The newest intact checkpoint at ``path`` (or its previous copy), checked to have been
    written by a run of ``variant``'s class with tensors of its shapes; returns the state and
    the file read."""
    state, used = load_latest_checkpoint(path)
    written_by = state.get("variant")
    if not written_by_class_of(state, variant):
        raise ValueError(
            f"{used} was written by a {written_by} run; cannot resume a "
            f"{type(variant).__name__} from it"
        )
    check_state_fits(variant, state["model"], str(used))
    return state, used
