"""Plots written to a run directory (matplotlib figures drawn without pyplot: importing or
calling this module never changes the process's matplotlib backend or pyplot state).

Every figure has a title saying what it shows; image grids are drawn pixel for pixel
(nearest neighbour) at :data:`MIN_IMAGE_PIXELS` or more per side, so that 28 x 28 digits stay
readable.
"""

from __future__ import annotations

from pathlib import Path

import torch
from matplotlib.figure import Figure
from mpl_toolkits.axes_grid1 import make_axes_locatable
from torchvision.utils import make_grid

from pbridge.samplers import SamplerSettings
from pbridge.toy import centroids

__all__ = [
    "MIN_IMAGE_PIXELS",
    "plot_image_grid",
    "plot_image_table",
    "plot_reconstructions",
    "sampler_name",
    "weights_name",
    "plot_toy_trajectories",
    "plot_toy_samples",
    "plot_reverse_chain",
    "plot_code_usage",
    "plot_code_entropy",
    "plot_elbo_trace",
]


def sampler_name(sampler: SamplerSettings) -> str:
    """The sampler in a few words for a title, e.g. ``"respaced sampler, 50 steps"``."""
    parts = [f"{sampler.name} sampler"]
    if sampler.sample_steps is not None:
        parts.append(f"{sampler.sample_steps} steps")
    if sampler.ddim_eta is not None:
        parts.append(f"DDIM eta {sampler.ddim_eta:g}")
    if sampler.method is not None:
        parts.append(sampler.method)
    return ", ".join(parts)


def weights_name(weights: str | None) -> str:
    """The ``--weights`` choice in words for a title."""
    return {"ema": "EMA weights", "raw": "raw weights"}.get(weights, "EMA weights if kept")


MIN_IMAGE_PIXELS = 256
"""The shortest side of an image grid in a figure, in pixels (nearest-neighbour upscaling)."""
_DPI = 100


def plot_image_grid(images: torch.Tensor, path: str | Path, title: str, nrow: int = 8) -> None:
    """Images ``(N, C, H, W)`` in [0, 1] as one grid of ``nrow`` per row, upscaled by an
    integer factor (nearest neighbour) to at least :data:`MIN_IMAGE_PIXELS` per side, under
    ``title``."""
    grid = make_grid(images.float().clamp(0, 1), nrow=nrow, padding=2, pad_value=1.0)
    scale = max(1, -(-MIN_IMAGE_PIXELS // min(grid.shape[1:])))
    height, width = grid.shape[1] * scale, grid.shape[2] * scale
    title_px = 40
    fig = Figure(figsize=(width / _DPI, (height + title_px) / _DPI), dpi=_DPI)
    ax = fig.add_axes((0, 0, 1, height / (height + title_px)))
    ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest", vmin=0, vmax=1)
    ax.axis("off")
    fig.suptitle(title, fontsize=9, y=1 - 8 / (height + title_px), va="top", wrap=True)
    fig.savefig(path, dpi=_DPI)


def plot_image_table(
    frames: torch.Tensor,
    path: str | Path,
    title: str,
    columns: list[str],
    rows: list[str] | None = None,
) -> None:
    """A table of images ``frames: (R, K, C, H, W)`` in [0, 1]: R rows (labelled by ``rows``),
    K columns named by ``columns``, each image at least ``MIN_IMAGE_PIXELS / 4`` pixels a side
    (nearest neighbour), under ``title``."""
    num_rows, num_columns = frames.shape[:2]
    side = max(0.9, MIN_IMAGE_PIXELS / 4 / _DPI)
    fig = Figure(figsize=(side * num_columns + 0.6, side * num_rows + 0.8))
    axes = fig.subplots(num_rows, num_columns, squeeze=False)
    for i in range(num_rows):
        for j in range(num_columns):
            _image(axes[i, j], frames[i, j])
        if rows is not None:
            axes[i, 0].set_ylabel(rows[i], fontsize=8)
    for j, name in enumerate(columns):
        axes[0, j].set_title(name, fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)


def plot_reconstructions(
    x: torch.Tensor, reconstructions: torch.Tensor, path: str | Path, title: str, pairs: int = 4
) -> None:
    """Originals ``x: (N, C, H, W)`` beside their ``reconstructions`` (same shape), ``pairs``
    (original, reconstruction) column pairs per row, columns labelled, under ``title``."""
    n = x.shape[0] - x.shape[0] % pairs or x.shape[0]
    pairs = min(pairs, n)
    frames = torch.stack([x[:n], reconstructions[:n]], dim=1)  # (n, 2, C, H, W)
    frames = frames.reshape(n // pairs, 2 * pairs, *x.shape[1:])
    plot_image_table(frames, path, title, ["original", "reconstruction"] * pairs)


def _circle(ax) -> None:
    c = centroids()
    ax.scatter(c[:, 0], c[:, 1], marker="x", color="black", s=40, zorder=3, label="centroids")
    ax.set_aspect("equal")


def plot_toy_trajectories(
    data: torch.Tensor,
    forward: torch.Tensor,
    reverse: torch.Tensor,
    codes: torch.Tensor,
    path: str | Path,
) -> None:
    """Three panels: data points ``(N, 2, L)``; forward paths ``(T+1, M, d, L)`` from z^0 (the
    guide's z_e^0, or the code itself for the tight bridge) to z^T; reverse paths
    ``(T+1, M, d, L)`` (index = time) from z^T down to z^0, with the codebook ``(K, d)``. Latent
    panels show the first two latent coordinates; their legend sits below them, clear of the
    codes."""
    fig = Figure(figsize=(15, 5.6))
    axes = fig.subplots(1, 3)
    pts = data.movedim(1, -1).reshape(-1, 2)
    axes[0].scatter(pts[:, 0], pts[:, 1], s=3, alpha=0.4, label="walk points")
    _circle(axes[0])
    axes[0].set_title(f"data: the points of {data.shape[0]} test walks")
    axes[0].legend(loc="center", fontsize=8)
    for ax, paths, title in (
        (axes[1], forward, r"forward OU (torchsde): $z^0 \to z^T$"),
        (axes[2], reverse.flip(0), r"reverse chain (model): $z^T \to z^0$"),
    ):
        xy = paths[:, :, :2].movedim(2, -1).reshape(paths.shape[0], -1, 2)
        for i in range(xy.shape[1]):
            label = f"paths of {paths.shape[1]} walks (first 2 latent coords)" if i == 0 else None
            ax.plot(xy[:, i, 0], xy[:, i, 1], lw=0.5, alpha=0.35, color="tab:blue", label=label)
        ax.scatter(xy[-1, :, 0], xy[-1, :, 1], s=6, color="tab:red", zorder=2, label="path ends")
        ax.scatter(
            codes[:, 0],
            codes[:, 1],
            marker="*",
            s=120,
            color="gold",
            edgecolor="black",
            zorder=4,
            label="codebook vectors",
        )
        ax.set_aspect("equal")
        ax.set_title(title)
    handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=9, bbox_to_anchor=(0.67, 0))
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=100)


def plot_toy_samples(x: torch.Tensor, path: str | Path, title: str) -> None:
    """Sampled walks ``(N, 2, L)`` drawn as polylines on the circle, one panel per walk, under
    ``title`` (e.g. how many of how many draws, by which sampler), with a legend."""
    n = x.shape[0]
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    fig = Figure(figsize=(3 * cols, 3 * rows + 0.9))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, walk in zip(axes.flat, x, strict=False):
        _circle(ax)
        ax.plot(walk[0], walk[1], "-o", ms=4, label="sampled walk (decoder mean)")
        ax.plot(walk[0, :1], walk[1, :1], "o", color="green", ms=8, label="its first point")
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=9)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=80)


def _image(ax, x: torch.Tensor) -> None:
    """One image ``(C, H, W)`` in [0, 1], grey when C = 1, pixel for pixel, without ticks."""
    image = x.squeeze(0) if x.shape[0] == 1 else x.permute(1, 2, 0)
    ax.imshow(image.clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_reverse_chain(
    frames: torch.Tensor, times: list[int], path: str | Path, rows: list[str] | None = None
) -> None:
    """The backward chain decoded along t: ``frames: (chains, len(times), C, H, W)`` in [0, 1],
    one row per chain (labelled by ``rows``), one column per time index of ``times``."""
    title = f"{frames.shape[0]} backward chains from t = {times[0]} to 0, decoded through the codes"
    plot_image_table(frames, path, title, [f"t = {t}" for t in times], rows)


def plot_code_usage(counts: dict[str, torch.Tensor], path: str | Path) -> None:
    """Histogram of code usage: for every named source (e.g. ``"posterior"``, ``"prior"``) the
    fraction of latent cells on each code, ``(K,)`` counts each."""
    fig = Figure(figsize=(10, 3.5))
    ax = fig.subplots()
    width = 0.8 / len(counts)
    for i, (name, c) in enumerate(counts.items()):
        codes = torch.arange(c.shape[0]) + (i - (len(counts) - 1) / 2) * width
        freq = c.double() / c.sum().clamp_min(1)
        ax.bar(codes.numpy(), freq.numpy(), width, label=name)
    ax.set_xlabel("code k")
    ax.set_ylabel("fraction of cells")
    ax.set_title("codebook usage")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def plot_code_entropy(
    entropy: torch.Tensor, max_entropy: float, path: str | Path, what: str
) -> None:
    """Heat map of the mean entropy (nats) of the code of every latent cell, ``(h, w)`` or
    ``(L,)``, on a colour scale from 0 to ``max_entropy`` (log K: a uniform kernel), each cell
    labelled with its value; the colour bar runs along the map's longer side and has its
    length. ``what`` names the distribution (the title)."""
    grid = entropy if entropy.dim() == 2 else entropy.reshape(1, -1)
    rows, cols = grid.shape
    cell = min(0.6, 6.0 / max(rows, cols))
    fig = Figure(figsize=(cell * cols + 2.2, cell * rows + 1.8))
    ax = fig.subplots()
    image = ax.imshow(grid.numpy(), cmap="viridis", vmin=0.0, vmax=max_entropy)
    for (i, j), value in zip(
        torch.cartesian_prod(torch.arange(rows), torch.arange(cols)).tolist(),
        grid.flatten().tolist(),
        strict=True,
    ):
        shade = "black" if value > 0.6 * max_entropy else "white"
        ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7, color=shade)
    wide = cols > 2 * rows
    side = make_axes_locatable(ax).append_axes(
        "bottom" if wide else "right", size=0.15, pad=0.55 if wide else 0.1
    )
    orientation = "horizontal" if wide else "vertical"
    bar = fig.colorbar(image, cax=side, orientation=orientation)
    bar.set_label(f"entropy, nats (log K = {max_entropy:.2f}: all codes equally likely)")
    ax.set_xticks(range(cols))
    ax.set_yticks([] if rows == 1 else range(rows))
    ax.set_xlabel("cell" if rows == 1 else "cell x")
    ax.set_ylabel("" if rows == 1 else "cell y")
    ax.set_title(f"per-cell code entropy\n{what}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)


def plot_elbo_trace(losses: torch.Tensor, path: str | Path, window: int = 50) -> None:
    """The training loss per SVI step ``(S,)`` (negative ELBO per item, one-sample estimates)
    and its running median over ``window`` steps. The bridge's random-step estimates are
    heavy-tailed (one chain step, weighted by T), so the median, not the mean, shows the trend,
    and the axis spans the 2nd to 98th percentiles of the steps."""
    steps = torch.arange(1, losses.shape[0] + 1)
    fig = Figure(figsize=(7, 3.5))
    ax = fig.subplots()
    ax.plot(steps.numpy(), losses.numpy(), ".", ms=1.5, alpha=0.4, label="per step")
    if losses.shape[0] >= window:
        running = losses.unfold(0, window, 1).median(-1).values
        centre = steps[window // 2 : window // 2 + running.shape[0]]  # each window's middle step
        label = f"running median ({window} steps, centred)"
        ax.plot(centre.numpy(), running.numpy(), lw=1.5, color="C1", label=label)
    low, high = torch.quantile(losses.double(), torch.tensor([0.02, 0.98], dtype=torch.double))
    margin = 0.05 * float(high - low) + 1e-9
    low, high = float(low) - margin, float(high) + margin
    ax.set_ylim(low, high)
    outside = int(((losses < low) | (losses > high)).sum())
    ax.set_xlabel("SVI step")
    ax.set_ylabel("-ELBO per item (nats)")
    ax.set_title(
        f"training loss, {losses.shape[0]} steps\ny-axis: 2nd-98th percentiles of the steps; "
        f"{outside} step{'s' * (outside != 1)} outside it not shown",
        fontsize=9,
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
