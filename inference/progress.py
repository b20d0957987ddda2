"""Progress of the long work of ``sample``, ``evaluate``, ``analyze`` and the scoring after
``train``, on stderr, as training shows its own (:mod:`.training_log`).

A :class:`Progress` is passed as an argument to whatever computes (no global state):

- :meth:`Progress.stage` prints one line naming what is computed next;
- :meth:`Progress.steps` returns an ``on_step(done, total)`` callback for the backward chain
  (:func:`pbridge.samplers.reverse_sample`), :meth:`Progress.iterate` wraps a loop over batches.

On a terminal these are tqdm bars; otherwise (a log file, a pipe) plain lines, one every tenth
of a loop, with no carriage returns. ``Progress(False)`` (:data:`QUIET`, ``--no-progress``)
shows nothing. Showing progress draws from no random generator: results are the same bits
either way.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from tqdm.auto import tqdm

__all__ = ["Progress", "QUIET", "LINES_PER_LOOP"]

T = TypeVar("T")

LINES_PER_LOOP = 10
"""Plain lines per loop when stderr is not a terminal (at every tenth of it)."""


class _Counter:
    """``counter(done, total)``: one loop's progress as a tqdm bar (a terminal) or plain lines."""

    def __init__(self, desc: str, unit: str) -> None:
        self.desc, self.unit = desc, unit
        self._bar: tqdm | None = None
        self._shown, self._start = 0, time.perf_counter()

    def __call__(self, done: int, total: int) -> None:
        if sys.stderr.isatty():
            if self._bar is None:
                self._bar = tqdm(desc=self.desc, unit=self.unit, total=total, leave=False)
            self._bar.update(done - self._bar.n)
            if done >= total:
                self._bar.close()
            return
        tenth = done * LINES_PER_LOOP // total
        if tenth > self._shown:
            self._shown = tenth
            seconds = time.perf_counter() - self._start
            line = f"{self.desc}: {done}/{total} {_plural(self.unit)} ({seconds:.1f} s)"
            print(line, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Progress:
    """Whether to show progress (``enabled``), and how; see the module docstring."""

    enabled: bool = True

    def stage(self, message: str) -> None:
        """One line on stderr: ``message`` (what is computed next) followed by ``...``."""
        if self.enabled:
            print(f"{message} ...", file=sys.stderr, flush=True)

    def steps(self, desc: str, unit: str = "step") -> _Counter | None:
        """A fresh ``on_step(done, total)`` callback for one loop (``None`` when disabled,
        which the samplers take as no callback)."""
        return _Counter(desc, unit) if self.enabled else None

    def iterate(self, items: Iterable[T], total: int, desc: str, unit: str) -> Iterator[T]:
        """``items`` (``total`` of them), counted as they are consumed."""
        counter = self.steps(desc, unit)
        for done, item in enumerate(items, 1):
            yield item
            if counter is not None:
                counter(done, total)


QUIET = Progress(False)
"""Shows nothing: the default of the functions that take a :class:`Progress`."""


def _plural(noun: str) -> str:
    """``"step"`` -> ``"steps"``, ``"batch"`` -> ``"batches"``."""
    return noun + ("es" if noun.endswith(("s", "sh", "ch", "x")) else "s")
