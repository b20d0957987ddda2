"""One writer per run directory: ``RUN/pbridge.lock``, as git's ``index.lock``.

Every command that writes into a run directory (``train``, ``train --resume``, ``sample``,
``evaluate``, ``analyze``, and :func:`~.pipeline.run` called from Python) holds the lock
while it runs (:func:`run_lock`), taken before it writes anything:

- The lock file is created with ``O_CREAT | O_EXCL`` (only one process can create it) and
  holds JSON ``{"pid", "host", "command", "since"}``; its holder keeps an ``flock`` on it for
  as long as it lives. A second writer is refused with :class:`RunLockedError` naming the
  holder.
- A lock whose holder is gone (killed by ``SIGKILL``, a crash of the machine) is stale: on the
  same host its ``flock`` is free (the kernel drops it with the process) and it is taken
  over: the taker ``flock``\\ s the stale file first, so of two takers one wins, checks that
  the path still names that file, removes it and creates its own with ``O_EXCL``; a new
  process creating the lock meanwhile wins instead. A lock of another host is never taken
  over (its message says how to remove it by hand).
- The lock is removed on every exit path Python sees (return, exception, ``Ctrl-C``, and
  ``SIGINT``/``SIGTERM`` in training, which the training loop turns into an exception).
- In a data-parallel run only one process holds it: the launcher of ``--devices N`` on one
  machine (its processes inherit it through :data:`INHERITED_LOCK`), else the process of
  rank 0; processes of other ranks never touch it.
- Within one process the lock is re-entrant: the command line takes it around its checks and
  :func:`~.pipeline.run` takes it again.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "LOCK_FILE",
    "INHERITED_LOCK",
    "RunLockedError",
    "HeldLock",
    "run_lock",
    "check_unlocked",
]

LOCK_FILE = "pbridge.lock"
"""The lock file of a run directory, present while a command writes into it."""
INHERITED_LOCK = "PBRIDGE_RUN_LOCK"
"""Environment variable naming the lock file a launcher holds for the processes it starts."""
UNWRITTEN_AFTER = 10.0
"""Seconds after which a lock file that names no holder counts as left by a dead process."""


class RunLockedError(OSError):
    """The run directory is locked by another live process (the message names it)."""


@dataclass(frozen=True)
class HeldLock:
    """What :func:`run_lock` yields: the run directory and the names it held when the lock
    was taken (``before``: whatever else it holds later, this process wrote)."""

    folder: Path
    before: frozenset[str]


_held: dict[Path, int] = {}
"""Locks this process holds: lock file -> nesting depth."""


def _host() -> str:
    return socket.gethostname()


def _holder(path: Path) -> dict | None:
    """The holder a lock file names, or ``None`` when it does not read as one."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _describe(path: Path, holder: dict | None) -> str:
    if holder is None:
        return f"{path.parent} is locked by another process ({path} is being written)"
    return (
        f"{path.parent} is in use by `pbridge {holder.get('command', '?')}` (pid "
        f"{holder.get('pid', '?')} on {holder.get('host', '?')}, since "
        f"{holder.get('since', '?')}); wait for it to finish, or stop it"
    )


def _refusal(path: Path, holder: dict | None) -> RunLockedError:
    text = _describe(path, holder)
    if holder is not None and holder.get("host") != _host():
        text += f" (if that process is gone, delete {path})"
    return RunLockedError(text)


def check_unlocked(folder: str | Path) -> None:
    """Refuse (:class:`RunLockedError` naming the holder) a run directory that another live
    process holds; reads only (the lock itself is taken by :func:`run_lock`)."""
    path = Path(folder) / LOCK_FILE
    if not path.is_file() or _ours(path.resolve()):
        return
    fd = _locked_if_stale(path)
    if fd is None:
        raise _refusal(path, _holder(path))
    os.close(fd)


def _ours(path: Path) -> bool:
    return path in _held or os.environ.get(INHERITED_LOCK) == str(path)


def _locked_if_stale(path: Path) -> int | None:
    """A descriptor of the lock file at ``path`` with its flock held, if it names a holder on
    this host and no live process holds its flock (a stale lock); else ``None``."""
    holder = _holder(path)
    if holder is None:
        time.sleep(0.2)  # its holder writes the JSON right after creating and flocking it
        holder = _holder(path)
    if holder is None:  # left unwritten by a process killed at once, or unreadable
        if not _older_than(path, UNWRITTEN_AFTER):
            return None
    elif holder.get("host") != _host():
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _older_than(path: Path, seconds: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime > seconds
    except FileNotFoundError:
        return False


def _create(path: Path, command: str) -> int | None:
    """Create the lock file exclusively, already flocked and holding its holder: written under
    a private name, then hard-linked to ``path`` (atomic; fails when one exists), so no other
    process ever sees it at ``path`` with a free flock. Its descriptor, or ``None`` when one
    exists."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except OSError as err:
        raise type(err)(f"cannot write to {path.parent} (to lock it): {err.strerror}") from err
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        since = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        holder = {"pid": os.getpid(), "host": _host(), "command": command, "since": since}
        os.write(fd, json.dumps(holder).encode())
        os.fsync(fd)
        os.link(tmp, path)
    except FileExistsError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    finally:
        os.unlink(tmp)
    return fd


def _take_over(path: Path) -> bool:
    """Remove the lock at ``path`` if it is stale, holding its flock so that of two takers
    only one removes it; whether it is gone."""
    if not path.exists():
        return True
    fd = _locked_if_stale(path)
    if fd is None:
        return not path.exists()
    try:
        if os.stat(path).st_ino == os.fstat(fd).st_ino:  # still the file we locked
            os.unlink(path)
    except FileNotFoundError:
        pass
    finally:
        os.close(fd)
    return True


def _acquire(path: Path, command: str) -> int:
    for _ in range(5):
        fd = _create(path, command)
        if fd is not None:
            return fd
        if not _take_over(path):
            raise _refusal(path, _holder(path))
    raise _refusal(path, _holder(path))


def _names(folder: Path) -> frozenset[str]:
    return frozenset(os.listdir(folder)) - {LOCK_FILE}


@contextmanager
def run_lock(folder: str | Path, command: str, create: bool = False) -> Iterator[HeldLock]:
    """Hold the lock of the run directory ``folder`` for ``command`` (e.g. ``"train"``,
    ``"sample"``) within the block; ``create``: create the directory first if it is missing
    (and remove it again on the way out if it is then empty). Refuses with
    :class:`RunLockedError` naming the holder while another live process holds it; takes over
    a stale lock. Processes of rank > 0 of a data-parallel run, and the processes a launcher
    holding the lock started, take nothing."""
    folder = Path(folder)
    path = (folder / LOCK_FILE).resolve() if folder.exists() else None
    rank = os.environ.get("RANK", "0")
    if rank != "0" or (path is not None and _ours(path)):
        if path is not None:
            _held[path] = _held.get(path, 0) + 1
        try:
            yield HeldLock(folder, _names(folder) if folder.is_dir() else frozenset())
        finally:
            if path is not None:
                _held[path] -= 1
                if not _held[path]:
                    del _held[path]
        return
    created = [p for p in (folder, *folder.parents) if not p.exists()] if create else []
    if created:
        folder.parent.mkdir(parents=True, exist_ok=True)
        try:
            folder.mkdir()
        except FileExistsError:  # another process was first: never ours to remove
            created = []
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a run directory (no such folder)")
    path = (folder / LOCK_FILE).resolve()
    fd = _acquire(path, command)
    _held[path] = 1
    try:
        yield HeldLock(folder, _names(folder))
    finally:
        del _held[path]
        try:
            os.unlink(path)  # before the flock goes: a taker never sees a free live lock
        finally:
            os.close(fd)
        _remove_if_empty(created)


def _remove_if_empty(folders: list[Path]) -> None:
    """Remove the folders this process created (deepest first) that are left empty."""
    for made in folders:
        try:
            made.rmdir()
        except OSError:  # not empty: a run, or another process's files
            return
