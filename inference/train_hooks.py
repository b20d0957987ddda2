"""The hooks a run passes to :func:`~.svi.train` (:class:`~.training_log.Hook`): the bound on a
fixed held-out batch every ``eval_every`` steps, and a grid of prior samples every
``sample_every`` steps, written to ``samples/step_NNNNNN.png`` of the run directory."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

from pbridge.config import TrainSettings
from pbridge.likelihoods import bits_per_dim

from .bound import Batch, estimate_elbo
from .run_dir import atomic_write
from .training_log import Hook

__all__ = [
    "HELDOUT_STEPS_PER_ITEM",
    "heldout_bound",
    "sample_grid",
    "training_hooks",
    "image_grid",
    "toy_grid",
]

HELDOUT_STEPS_PER_ITEM = 10
"""Stratified chain steps per item of the held-out bound (as in the run's final score)."""


def heldout_bound(x: Batch, every: int) -> Hook:
    """The ELBO on the fixed held-out batch ``x: (N, ...)`` (or ``(x, *more)``), one draw with
    :data:`HELDOUT_STEPS_PER_ITEM` stratified chain steps per item for a bridge: columns
    ``heldout_neg_elbo`` (nats per item) and ``heldout_bits_per_dim``."""
    first = x[0] if isinstance(x, tuple) else x
    dims = first[0].numel()

    def run(step: int, model: nn.Module) -> dict[str, float]:
        elbo, _ = estimate_elbo(model, x, repeats=1, strata=HELDOUT_STEPS_PER_ITEM)
        return {"heldout_neg_elbo": -elbo, "heldout_bits_per_dim": bits_per_dim(-elbo, dims)}

    return Hook(every, run, ("heldout_neg_elbo", "heldout_bits_per_dim"))


def sample_grid(
    folder: Path, every: int, plot_samples: Callable[[nn.Module, Path, int], None]
) -> Hook:
    """``plot_samples(model, path, step)`` writes a PNG of prior samples at ``step``; the hook
    writes it atomically to ``folder/step_NNNNNN.png`` (``folder`` created for it, and removed
    again if the first write fails)."""

    def run(step: int, model: nn.Module) -> None:
        created = not folder.exists()
        folder.mkdir(parents=True, exist_ok=True)
        try:
            with atomic_write(folder / f"step_{step:06d}.png") as tmp:
                plot_samples(model, tmp, step)
        except BaseException:
            if created and not any(folder.iterdir()):  # a full disk leaves no empty folder
                folder.rmdir()
            raise

    return Hook(every, run)


def training_hooks(
    settings: TrainSettings,
    out: Path,
    heldout: Batch,
    plot_samples: Callable[[nn.Module, Path, int], None] | None = None,
) -> tuple[Hook, ...]:
    """The hooks ``settings`` asks for: the held-out bound on the first
    ``settings.heldout_items`` rows of ``heldout`` every ``eval_every`` steps, and the grid of
    ``plot_samples`` every ``sample_every`` steps into ``out/samples`` (when it is given)."""
    hooks = []
    if settings.eval_every:
        rows = slice(0, settings.heldout_items)
        held = tuple(t[rows] for t in heldout) if isinstance(heldout, tuple) else heldout[rows]
        hooks.append(heldout_bound(held, settings.eval_every))
    if settings.sample_every and plot_samples is not None:
        hooks.append(sample_grid(out / "samples", settings.sample_every, plot_samples))
    return tuple(hooks)


def image_grid(num: int = 16) -> Callable[[nn.Module, Path, int], None]:
    """``plot_samples`` for image variants: ``num`` prior samples (decoder means), one PNG grid."""
    from .plots import plot_image_grid
    from .sampling import sample_prior

    def plot(model: nn.Module, path: Path, step: int) -> None:
        title = f"{num} prior samples at step {step}, ancestral sampler"
        plot_image_grid(sample_prior(model, num).x_mean.cpu(), path, title, int(num**0.5))

    return plot


def toy_grid(num: int = 16) -> Callable[[nn.Module, Path, int], None]:
    """``plot_samples`` for the toy: ``num`` sampled walks, one panel each."""
    from .plots import plot_toy_samples
    from .sampling import sample_prior

    def plot(model: nn.Module, path: Path, step: int) -> None:
        title = f"{num} sampled walks at step {step}, ancestral sampler"
        plot_toy_samples(sample_prior(model, num).x_mean.cpu(), path, title)

    return plot
