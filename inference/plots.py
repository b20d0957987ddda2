"""Plots written to a run directory (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from pbridge.toy import centroids  # noqa: E402

__all__ = ["plot_toy_trajectories", "plot_toy_samples"]


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
