"""What a training run reports, without touching what it trains (docs/training.md).

:class:`TrainingLog` receives one row of figures per step from :func:`~.svi.train` and sends it

- to ``train.csv`` (one row per step, the columns of :func:`csv_columns`; cells of figures
  not computed at that step are empty), flushed every ``log_every`` steps and before every
  checkpoint, and cut back to the resumed step when a run resumes;
- to TensorBoard scalars under ``tensorboard/<csv stem>`` when ``torch.utils.tensorboard``
  imports (an optional extra: skipped silently otherwise);
- to the terminal: a tqdm bar when stderr is a terminal, else one plain line every
  ``log_every`` steps (no carriage returns in a log file).

:class:`Hook` is a function of the model that the run passes in (the held-out bound, a grid of
samples, :mod:`.train_hooks`); it runs every ``every`` steps and at the last step inside
:func:`untouched`, so it draws from forked random states, computes no gradients, sees the
networks in eval mode and leaves every buffer as it was: the run is the same bits with hooks
and logging on or off.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

__all__ = ["Hook", "TrainingLog", "untouched", "csv_columns", "STEP_COLUMNS", "SUMMARY_COLUMNS"]

STEP_COLUMNS = ("step", "loss", "lr", "grad_norm", "seconds")
"""Figures of every step: the step, the training loss (negative ELBO per item with the
latent warm-up's weight, plus any surrogate terms), the learning rate it ran at, the
gradient norm before clipping, and the wall time of the step in seconds."""

SUMMARY_COLUMNS = ("neg_elbo", "bits_per_dim", "codes_used", "perplexity")
"""Figures of every ``log_every``-th step, on that step's batch: the negative ELBO per item
(one draw, the sum of the ``term_*`` columns with the sign flipped, no surrogates), it in bits
per data dimension, and the codebook usage of the guide's codes."""


@dataclass(frozen=True)
class Hook:
    """``run(step, model)`` every ``every`` steps and at the last step, on process 0, inside
    :func:`untouched`; it returns figures for the ``columns`` of the log, or ``None``.
    ``model`` is the weights sampling uses by default: the EMA weights when they are kept."""

    every: int
    run: Callable[[int, nn.Module], dict[str, float] | None]
    columns: tuple[str, ...] = ()

    def due(self, step: int, last: int) -> bool:
        return bool(self.every) and (step % self.every == 0 or step == last)


def csv_columns(terms: Sequence[str], hooks: Sequence[Hook]) -> list[str]:
    """The header of ``train.csv``: :data:`STEP_COLUMNS`, :data:`SUMMARY_COLUMNS`, one
    ``term_<site>`` per ELBO term (:func:`~.bound.elbo_terms`) and the hooks' columns."""
    hooked = [c for hook in hooks for c in hook.columns]
    return [*STEP_COLUMNS, *SUMMARY_COLUMNS, *(f"term_{t}" for t in terms), *hooked]


@contextmanager
def untouched(model: nn.Module, eval_mode: bool = False) -> Iterator[None]:
    """Within the block: random draws from forked states (CPU and the model's CUDA device), no
    gradients, and (``eval_mode``) every submodule in eval mode; afterwards every random state,
    buffer (BatchNorm statistics, step-cost trackers) and training flag is as before."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    buffers = [(b, b.clone()) for b in model.buffers()]
    modes = [(m, m.training) for m in model.modules()]
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        try:
            if eval_mode:
                model.eval()
            with torch.no_grad():
                yield
        finally:
            for buffer, saved in buffers:
                buffer.copy_(saved)
            for module, training in modes:
                module.training = training


def _tensorboard(folder: Path, first_step: int):
    """A ``SummaryWriter`` writing to ``folder`` that drops events of steps from ``first_step``
    on (a resumed run repeats them), or ``None`` when TensorBoard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(folder), purge_step=first_step)


class TrainingLog:
    """Rows of training figures to ``csv_path`` (if any), TensorBoard and the terminal.

    Args:
        csv_path: ``train.csv`` of the run, or ``None`` (no files).
        columns: its header (:func:`csv_columns`).
        first_step / total: the first step this session trains, and the run's last step.
        log_every: steps between flushes and console lines.
        progress: show progress (a bar on a terminal, plain lines otherwise).
    """

    def __init__(
        self,
        csv_path: Path | None,
        columns: Sequence[str],
        first_step: int,
        total: int,
        log_every: int,
        progress: bool,
    ) -> None:
        self.columns, self.total, self.log_every = list(columns), total, log_every
        self._file = self._writer = self._board = self._bar = None
        self._lines = progress and not sys.stderr.isatty()
        if progress and not self._lines:
            self._bar = tqdm(desc="SVI", unit="step", initial=first_step - 1, total=total)
        if csv_path is not None:
            kept = _rows_before(csv_path, first_step)
            self._file = csv_path.open("w", newline="")
            self._writer = csv.DictWriter(self._file, self.columns, extrasaction="ignore")
            self._writer.writeheader()
            self._writer.writerows(kept)
            self._file.flush()
            self._board = _tensorboard(csv_path.parent / "tensorboard" / csv_path.stem, first_step)

    @property
    def wants_summary(self) -> bool:
        """Whether the summary figures are shown or written anywhere."""
        return self._writer is not None or self._bar is not None or self._lines

    def write(self, row: dict[str, float]) -> None:
        """Record one step's figures (``row["step"]`` and any of the columns)."""
        step = int(row["step"])
        if self._writer is not None:
            self._writer.writerow(row)
            if step % self.log_every == 0:
                self.flush()
        if self._board is not None:
            for name, value in row.items():
                if name != "step":
                    self._board.add_scalar(name.replace("term_", "term/"), value, step)
        if self._bar is not None:
            self._bar.update(1)
            if "neg_elbo" in row:
                self._bar.set_postfix(_shown(row, ("step", "seconds")))
        elif self._lines and "neg_elbo" in row:
            figures = "  ".join(f"{k} {v}" for k, v in _shown(row, ("step",)).items())
            print(f"SVI step {step}/{self.total}  {figures}", file=sys.stderr, flush=True)

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()
        if self._board is not None:
            self._board.flush()

    def close(self) -> None:
        for handle in (self._file, self._board, self._bar):
            if handle is not None:
                handle.close()


def _shown(row: dict[str, float], hidden: tuple[str, ...]) -> dict[str, str]:
    return {
        k.removeprefix("term_"): f"{v:.3g}"
        if k in ("lr", "seconds")
        else f"{v:.2f}"
        if isinstance(v, float)
        else str(v)
        for k, v in row.items()
        if k not in hidden
    }


def _rows_before(path: Path, first_step: int) -> list[dict[str, str]]:
    """The rows of an existing ``train.csv`` for steps before ``first_step`` (a resumed run
    rewrites the steps after its checkpoint)."""
    if first_step == 1 or not path.is_file():
        return []
    with path.open(newline="") as handle:
        return [row for row in csv.DictReader(handle) if int(row["step"]) < first_step]
