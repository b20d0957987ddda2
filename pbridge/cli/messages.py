"""How ``pbridge`` prints: a failure's message on one line, and its warnings."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from typing import TextIO


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line, without the trace shapes Pyro appends to errors
    raised inside a model."""
    text = re.split(r"\n\s*Trace Shapes:", str(err))[0].strip()
    return " ".join(line.strip() for line in text.splitlines()) or repr(err)


def warn(message: object) -> None:
    print(f"pbridge: warning: {message}", file=sys.stderr)


def one_line_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """``warnings.showwarning`` of the command line: pbridge's own warnings as
    ``pbridge: warning: <message>``; another library's (numpy, torch, ...) on one line that
    keeps where it comes from and its category, ``<file>:<line>: <Category>: <message>``."""
    text = " ".join(str(message).split())
    if _is_pbridge_file(filename):
        warn(text)
    else:
        print(f"{filename}:{lineno}: {category.__name__}: {text}", file=file or sys.stderr)


def _is_pbridge_file(filename: str) -> bool:
    """Whether ``filename`` is a module of pbridge (its packages may live in several folders;
    found without importing them)."""
    folders = [
        Path(folder).resolve()
        for package in ("pbridge", "pbridge.inference", "pbridge.models")
        for folder in importlib.util.find_spec(package).submodule_search_locations
    ]
    path = Path(filename).resolve()
    return any(path.is_relative_to(folder) for folder in folders)
