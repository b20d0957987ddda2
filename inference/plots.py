"""Plots written to a run directory (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from pbridge.toy import centroids  # noqa: E402

__all__ = [
    "plot_toy_trajectories",
    "plot_toy_samples",
    "plot_reverse_chain",
    "plot_code_usage",
    "plot_code_entropy",
    "plot_elbo_trace",
]


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
    """Three panels: data points ``(N, 2, L)``; forward paths ``(T+1, M, d, L)`` from z_e^0 to
    z_e^T; reverse paths ``(T+1, M, d, L)`` (index = time) from z_e^T down to z_e^0, with the
    codebook ``(K, d)``. Latent panels show the first two latent coordinates."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 5))
    pts = data.movedim(1, -1).reshape(-1, 2)
    axes[0].scatter(pts[:, 0], pts[:, 1], s=3, alpha=0.4)
    _circle(axes[0])
    axes[0].set_title("data: walk points")
    for ax, paths, title in (
        (axes[1], forward, "forward OU (torchsde): z_e^0 -> z_e^T"),
        (axes[2], reverse.flip(0), "reverse chain (model): z_e^T -> z_e^0"),
    ):
        xy = paths[:, :, :2].movedim(2, -1).reshape(paths.shape[0], -1, 2)
        for i in range(xy.shape[1]):
            ax.plot(xy[:, i, 0], xy[:, i, 1], lw=0.5, alpha=0.35, color="tab:blue")
        ax.scatter(xy[-1, :, 0], xy[-1, :, 1], s=6, color="tab:red", zorder=2, label="end")
        ax.scatter(
            codes[:, 0],
            codes[:, 1],
            marker="*",
            s=120,
            color="gold",
            edgecolor="black",
            zorder=4,
            label="codes",
        )
        ax.set_aspect("equal")
        ax.set_title(title)
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_toy_samples(x: torch.Tensor, path: str | Path) -> None:
    """Sampled walks ``(N, 2, L)`` drawn as polylines on the circle, one panel per walk."""
    n = x.shape[0]
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
    for ax, walk in zip(axes.flat, x, strict=False):
        _circle(ax)
        ax.plot(walk[0], walk[1], "-o", ms=4)
        ax.plot(walk[0, :1], walk[1, :1], "o", color="green", ms=8)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _image(ax, x: torch.Tensor) -> None:
    """One image ``(C, H, W)`` in [0, 1], grey when C = 1, without ticks."""
    image = x.squeeze(0) if x.shape[0] == 1 else x.permute(1, 2, 0)
    ax.imshow(image.numpy(), cmap="gray", vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_reverse_chain(
    frames: torch.Tensor, times: list[int], path: str | Path, rows: list[str] | None = None
) -> None:
    """The backward chain decoded along t: ``frames: (chains, len(times), C, H, W)`` in [0, 1],
    one row per chain (labelled by ``rows``), one column per time index of ``times``."""
    chains, columns = frames.shape[:2]
    fig, axes = plt.subplots(chains, columns, figsize=(1.1 * columns, 1.1 * chains), squeeze=False)
    for i in range(chains):
        for j in range(columns):
            _image(axes[i, j], frames[i, j])
        if rows is not None:
            axes[i, 0].set_ylabel(rows[i], fontsize=8)
    for j, t in enumerate(times):
        axes[0, j].set_title(f"t = {t}", fontsize=8)
    fig.suptitle("backward chain z_e^t, decoded through its nearest codes", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_code_usage(counts: dict[str, torch.Tensor], path: str | Path) -> None:
    """Histogram of code usage: for every named source (e.g. ``"posterior"``, ``"prior"``) the
    fraction of latent cells on each code, ``(K,)`` counts each."""
    fig, ax = plt.subplots(figsize=(10, 3.5))
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
    plt.close(fig)


def plot_code_entropy(
    entropy: torch.Tensor, max_entropy: float, path: str | Path, what: str
) -> None:
    """Map of the mean entropy (nats) of the code of every latent cell, ``(h, w)`` or ``(L,)``,
    on a colour scale from 0 to ``max_entropy`` (log K: a uniform kernel); ``what`` names the
    distribution (the title)."""
    grid = entropy if entropy.dim() == 2 else entropy.reshape(1, -1)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    image = ax.imshow(grid.numpy(), cmap="viridis", vmin=0.0, vmax=max_entropy)
    for (i, j), value in zip(
        torch.cartesian_prod(torch.arange(grid.shape[0]), torch.arange(grid.shape[1])).tolist(),
        grid.flatten().tolist(),
        strict=True,
    ):
        ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7, color="white")
    fig.colorbar(image, ax=ax, label="entropy, nats")
    ax.set_xticks(range(grid.shape[1]))
    ax.set_yticks(range(grid.shape[0]))
    ax.set_xlabel("cell x")
    ax.set_ylabel("cell y")
    ax.set_title(f"per-cell code entropy, {what}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_elbo_trace(losses: torch.Tensor, path: str | Path, window: int = 50) -> None:
    """The training loss per SVI step ``(S,)`` (negative ELBO per item, one-sample estimates)
    and its running median over ``window`` steps. The bridge's random-step estimates are
    heavy-tailed (one chain step, weighted by T), so the median, not the mean, shows the trend,
    and the axis spans the 2nd to 98th percentiles of the steps."""
    steps = torch.arange(1, losses.shape[0] + 1)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(steps.numpy(), losses.numpy(), ".", ms=1.5, alpha=0.4, label="per step")
    if losses.shape[0] >= window:
        running = losses.unfold(0, window, 1).median(-1).values
        label = f"running median ({window} steps)"
        ax.plot(steps[window - 1 :].numpy(), running.numpy(), lw=1.5, color="C1", label=label)
    low, high = torch.quantile(losses.double(), torch.tensor([0.02, 0.98], dtype=torch.double))
    margin = 0.05 * float(high - low) + 1e-9
    ax.set_ylim(float(low) - margin, float(high) + margin)
    ax.set_xlabel("SVI step")
    ax.set_ylabel("-ELBO per item (nats)")
    ax.set_title("training loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
