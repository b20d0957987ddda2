"""How ``pbridge`` prints: a failure's message on one line, and its warnings."""

from __future__ import annotations

import re
import sys


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line, without the trace shapes Pyro appends to errors
    raised inside a model."""
    text = re.split(r"\n\s*Trace Shapes:", str(err))[0].strip()
    return " ".join(line.strip() for line in text.splitlines()) or repr(err)


def warn(message: object) -> None:
    print(f"pbridge: warning: {message}", file=sys.stderr)


def one_line_warning(message, category, *args, **kwargs) -> None:
    warn(message)
