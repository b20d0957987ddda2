"""One run, whatever trains in it: the toy, an image variant of the registry, a variant file.

:func:`run` is the pipeline every ``pbridge train`` goes through:

0. check the run directory and lock it (:mod:`.run_lock`), creating it for a new run; a start
   that fails before a checkpoint removes what it wrote and puts back what it rewrote
   (:func:`~.run_dir.discard_failed_start`);
1. seed and resolve the device (:func:`~.run_dir.start_run`); load the data (``recipe.data``);
2. build the module of the first stage and, if it has one, initialise its codebook by k-means;
3. check that every stage's model and guide sample the same latent sites and, with
   ``resume``, every stage's checkpoint against its module (a finished, scored run
   stops here); nothing is written before this point;
4. write ``config.json`` and ``environment.json`` (:func:`~.run_dir.write_run_files`), then
   ``recipe.on_written(out)`` (e.g. the copy of a variant file);
5. train the stages in order, each checkpointed to its own file, a later stage built on the
   trained module of the one before (a VQ-VAE, then a prior on its frozen codes);
6. on the main process: the EMA weights, eval mode, ``recipe.score`` and ``metrics.json``.

A kind of run is a :class:`Recipe`: its data, its stages and its scoring are the hooks.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pbridge.variant import InitialisesCodebook, TakesLabels

from .bound import Batch, check_model_guide_sites
from .distributed import World
from .progress import Progress
from .run_dir import (
    check_out_dir,
    check_resume,
    check_writable,
    discard_failed_start,
    run_before,
    start_run,
    train_in_run,
    write_json,
    write_run_files,
)
from .run_lock import run_lock
from .svi import TrainResult
from .train_hooks import training_hooks

__all__ = ["RunData", "Stage", "Recipe", "run"]


@dataclass(frozen=True)
class RunData:
    """The items a run trains and scores on: ``x`` ``(N, ...)`` and, where the data have
    them, class labels ``y`` ``(N,)``, for the training and the test split."""

    train_x: torch.Tensor
    test_x: torch.Tensor
    train_y: torch.Tensor | None = None
    test_y: torch.Tensor | None = None

    def to(self, device: torch.device) -> RunData:
        return RunData(*(None if t is None else t.to(device) for t in self._fields()))

    def _fields(self) -> tuple[torch.Tensor | None, ...]:
        return self.train_x, self.test_x, self.train_y, self.test_y

    def train(self, variant: nn.Module) -> Batch:
        """The training data as ``variant``'s model takes it: ``x``, or ``(x, y)`` for a
        :class:`~pbridge.variant.TakesLabels` variant."""
        return (self.train_x, self.train_y) if _labelled(variant, self.train_y) else self.train_x

    def test(self, variant: nn.Module) -> tuple[torch.Tensor, ...]:
        """The test data as arguments of ``variant``'s model: ``(x,)`` or ``(x, y)``."""
        return (self.test_x, self.test_y) if _labelled(variant, self.test_y) else (self.test_x,)


def _labelled(variant: nn.Module, y: torch.Tensor | None) -> bool:
    if not isinstance(variant, TakesLabels):
        return False
    if y is None:
        raise ValueError(f"a {type(variant).__name__} takes class labels; these data have none")
    return True


@dataclass(frozen=True)
class Stage:
    """One stage of training.

    Attributes:
        checkpoint: its checkpoint's file name in the run directory (``checkpoint.pt`` for the
            last stage, the one the run's commands read).
        steps: SVI steps of the stage.
        build: the stage's module built alone, untrained (the first stage's is the module
            trained; a later stage's is built to check a checkpoint against before training).
        on_previous: for a later stage, the module trained, built on the trained (and here
            frozen) module of the stage before.
    """

    checkpoint: str
    steps: int
    build: Callable[[], nn.Module]
    on_previous: Callable[[nn.Module], nn.Module] | None = None


Score = Callable[[nn.Module, RunData, Path, str, Progress], dict[str, Any]]
"""``score(variant, data, out, weights, progress)``: the metrics of the trained ``variant``
(eval mode; ``weights`` names the EMA or raw weights in its figures), its figures written to
``out``."""


@dataclass(frozen=True)
class Recipe:
    """A kind of run.

    Attributes:
        config: the run's configuration (``ToyConfig`` or ``ImageConfig``).
        data: loads the run's :class:`RunData` (on the CPU; the run moves it to its device).
        stages: the stages in training order (one, or a VQ-VAE and then a prior on it).
        score: the metrics of the trained variant (:data:`Score`).
        plot_samples: the grid of prior samples of the training hooks (``sample_every``).
        init_items: training items the k-means initialisation of the codebook sees.
        on_written: called with the run directory once its files are written (main process).
    """

    config: Any
    data: Callable[[], RunData]
    stages: Sequence[Stage]
    score: Score
    plot_samples: Callable[[nn.Module, Path, int], None]
    init_items: int = 1024
    on_written: Callable[[Path], None] | None = None


def run(
    recipe: Recipe,
    out_dir: str | Path,
    device: str = "auto",
    progress: bool = True,
    resume: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train ``recipe``'s stages, score the variant and write the run directory ``out_dir``
    (``resume``: continue from its checkpoints; ``overwrite``: replace the run it holds); the
    metrics (``{}`` on the processes of a data-parallel run other than the main one).

    The run directory is locked throughout (:func:`~.run_lock.run_lock`; another writer is
    refused with :class:`~.run_lock.RunLockedError`). A start that fails before any stage has
    written a checkpoint removes what it wrote, and the directory if it created it; the
    run's earlier files and another process's are never touched. Resuming a run that has
    trained all its steps and been scored writes nothing: a warning says so and its
    ``metrics.json`` is returned."""
    start = time.perf_counter()
    main = os.environ.get("RANK", "0") == "0"
    if main:
        check_out_dir(out_dir, resume, overwrite)
        check_writable(out_dir)
    command = "train --resume" if resume else "train"
    with run_lock(out_dir, command, create=not resume) as held:
        before = run_before(held) if main else None
        try:
            return _run(recipe, held.folder, device, progress, resume, overwrite, start)
        except BaseException:  # Ctrl-C included
            if before is not None:
                discard_failed_start(before)
            raise


def _run(
    recipe: Recipe,
    out_dir: Path,
    device: str,
    progress: bool,
    resume: bool,
    overwrite: bool,
    start: float,
) -> dict[str, Any]:
    """:func:`run` with the run directory locked."""
    config = recipe.config
    out, dev, world = start_run(out_dir, config, device)
    data = recipe.data().to(dev)
    first = recipe.stages[0].build().to(dev)
    if isinstance(first, InitialisesCodebook):
        generator = torch.Generator(device=dev).manual_seed(config.train.seed)
        first.initialise_codebook(data.train_x[: recipe.init_items], generator)
    _check_sites(recipe.stages, first, data)
    if resume:
        done = _check_resumable(recipe.stages, first, out, config)
        if done >= recipe.stages[-1].steps and (out / "metrics.json").is_file():
            return _finished(out, done, world)
    write_run_files(out, config, world, resume, overwrite)
    if world.is_main and recipe.on_written is not None:
        recipe.on_written(out)
    variant, result = first, None
    seconds = 0.0
    for i, stage in enumerate(recipe.stages):
        if stage.on_previous is not None:
            variant = stage.on_previous(variant).to(dev)
        last = i == len(recipe.stages) - 1
        hooks = (
            training_hooks(config.train, out, data.test(variant), recipe.plot_samples)
            if last
            else ()
        )
        settings = replace(config.train, steps=stage.steps)
        checkpoint = out / stage.checkpoint
        result = train_in_run(
            variant,
            data.train(variant),
            settings,
            checkpoint,
            config,
            progress,
            resume,
            world,
            hooks,
        )
        seconds += result.seconds
    if not world.is_main:
        return {}
    return _finish(recipe, variant, result, data, out, progress, seconds, start)


def _check_sites(stages: Sequence[Stage], first: nn.Module, data: RunData) -> None:
    """Every stage's model and guide sample the same latent sites
    (:func:`~.bound.check_model_guide_sites`); a later stage's module is built aside, the random
    state left as it was."""
    check_model_guide_sites(first, data.train(first))
    dev = next(first.parameters()).device
    for stage in stages[1:]:
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            module = stage.build().to(dev)
        check_model_guide_sites(module, data.train(module))


def _check_resumable(stages: Sequence[Stage], first: nn.Module, out: Path, config: Any) -> int:
    """Every stage's checkpoint fits its module (:func:`~.run_dir.check_resume`); a later
    stage's module is built aside, the random state left as it was. Returns the step of the
    last stage's checkpoint (0: none yet)."""
    done = check_resume(first, out / stages[0].checkpoint, config)
    dev = next(first.parameters()).device
    for stage in stages[1:]:
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            done = check_resume(stage.build(), out / stage.checkpoint, config)
    return done


def _finished(out: Path, steps: int, world: World) -> dict[str, Any]:
    """A resumed run that has trained all its steps and been scored: said in one warning,
    nothing written; its metrics as ``metrics.json`` holds them."""
    if not world.is_main:
        return {}
    warnings.warn(
        f"{out} is finished: it has trained all its {steps} steps and is scored "
        "(metrics.json, left as it is); nothing to do. To train it on, pass --steps N "
        "--extend-steps with --resume",
        stacklevel=3,
    )
    return json.loads((out / "metrics.json").read_text())


def _finish(
    recipe: Recipe,
    variant: nn.Module,
    result: TrainResult,
    data: RunData,
    out: Path,
    progress: bool,
    train_seconds: float,
    start: float,
) -> dict[str, Any]:
    """The trained variant with its EMA weights, scored; ``metrics.json`` written."""
    result.use_ema(variant)
    variant.eval()
    weights = "EMA weights" if result.ema is not None else "raw weights"
    metrics = recipe.score(variant, data, out, weights, Progress(progress))
    last = result.losses[-100:]
    metrics.update(
        variant=type(variant).__name__,
        final_train_loss=sum(last) / len(last),
        steps=recipe.config.train.steps,
        train_seconds=train_seconds,
        seconds=time.perf_counter() - start,
    )
    write_json(out / "metrics.json", metrics)
    return metrics
