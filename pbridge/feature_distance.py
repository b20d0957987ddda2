"""FD-FMNIST: a Frechet distance between image sets in the features of a small Fashion-MNIST
classifier that pbridge trains and ships (docs/evaluation.md).

This is *not* FID: the features are the 128-d global-average-pooled activations of
:class:`FashionClassifier`, not Inception's, so values are comparable only with each other.

    FD(X, Y) = ||mu_X - mu_Y||^2 + Tr(C_X + C_Y - 2 (C_X^{1/2} C_Y C_X^{1/2})^{1/2})

The shipped weights (``fd_fmnist_classifier.pt`` next to this module) are checked against
``CLASSIFIER_SHA256`` on every load; :func:`train_classifier` re-creates them
(``python benchmarks/fd_classifier.py``).
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "CLASSIFIER_DATASET",
    "FashionClassifier",
    "frechet_distance",
    "train_classifier",
    "classifier_accuracy",
    "load_classifier",
    "fd_fmnist",
    "CLASSIFIER_PATH",
    "CLASSIFIER_SHA256",
]

CLASSIFIER_DATASET = "fashion-mnist"
"""The data set the shipped classifier was trained on: the only one FD-FMNIST scores."""
CLASSIFIER_PATH = Path(__file__).with_name("fd_fmnist_classifier.pt")
CLASSIFIER_SHA256 = "52171adcacca4360bff515e6aa18c78a952a4176d962342f228f80eafdcef3a8"


class FashionClassifier(nn.Module):
    """Three 3x3 convolution stages (32, 64, 128 channels; max-pool after the first two), global
    average pooling to the 128-d feature, a linear layer to 10 logits.

    ``features(x: (B, 1, 28, 28) in [0, 1]) -> (B, 128)``; ``forward(x) -> (B, 10)`` logits.
    """

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1),
            nn.BatchNorm2d(128),
            nn.ReLU(),
        )
        self.head = nn.Linear(128, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != (1, 28, 28):
            raise ValueError(f"expected Fashion-MNIST images (B, 1, 28, 28), got {tuple(x.shape)}")
        return self.body(x - 0.5).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to two feature sets ``(N, f)`` and ``(M, f)``.

    The trace of the matrix square root is computed as the sum of the square roots of the
    eigenvalues of the symmetric PSD matrix ``C_a^{1/2} C_b C_a^{1/2}`` (float64).
    """
    if features_a.dim() != 2 or features_b.dim() != 2 or features_a.shape[1] != features_b.shape[1]:
        raise ValueError(
            f"features must be (N, f) and (M, f), got {tuple(features_a.shape)} and "
            f"{tuple(features_b.shape)}"
        )
    if min(features_a.shape[0], features_b.shape[0]) < 2:
        raise ValueError("need at least 2 items per set to estimate a covariance")
    a, b = features_a.double(), features_b.double()
    mean_a, mean_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    eigval, eigvec = torch.linalg.eigh(cov_a)
    root_a = eigvec @ torch.diag(eigval.clamp_min(0).sqrt()) @ eigvec.T
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp_min(0).sqrt().sum()
    distance = (mean_a - mean_b).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * cross
    return float(distance)


def train_classifier(
    images: torch.Tensor,
    labels: torch.Tensor,
    epochs: int = 4,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
) -> FashionClassifier:
    """Adam on cross-entropy with random horizontal flips; ``images (N, 1, 28, 28)`` in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = FashionClassifier()
    optimiser = torch.optim.Adam(net.parameters(), lr=lr)
    steps = epochs * (images.shape[0] // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, lr, total_steps=steps)
    net.train()
    for _ in range(epochs):
        order = torch.randperm(images.shape[0], generator=generator)
        for start in range(0, images.shape[0] - batch_size + 1, batch_size):
            idx = order[start : start + batch_size]
            x = images[idx]
            flip = torch.rand(x.shape[0], generator=generator) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            loss = F.cross_entropy(net(x), labels[idx])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
    return net.eval()


@torch.no_grad()
def classifier_accuracy(
    net: FashionClassifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000
) -> float:
    """Fraction of ``images`` whose arg-max logit is the label."""
    correct = sum(
        int((net(images[i : i + batch_size]).argmax(-1) == labels[i : i + batch_size]).sum())
        for i in range(0, images.shape[0], batch_size)
    )
    return correct / images.shape[0]


def load_classifier(
    path: Path = CLASSIFIER_PATH, sha256: str | None = CLASSIFIER_SHA256
) -> FashionClassifier:
    """The stored classifier (eval mode); raises ``ValueError`` when the file's SHA-256 is not
    ``sha256`` (``None`` skips the check)."""
    if not path.is_file():
        raise FileNotFoundError(f"no FD-FMNIST classifier at {path}")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if sha256 is not None and digest != sha256:
        raise ValueError(f"{path} has SHA-256 {digest}, expected {sha256}")
    net = FashionClassifier()
    net.load_state_dict(torch.load(io.BytesIO(data), weights_only=True))
    return net.eval()


@torch.no_grad()
def fd_fmnist(
    images_a: torch.Tensor,
    images_b: torch.Tensor,
    net: FashionClassifier | None = None,
    batch_size: int = 500,
) -> float:
    """FD-FMNIST between two sets of Fashion-MNIST-shaped images ``(N, 1, 28, 28)`` in [0, 1]."""
    net = load_classifier() if net is None else net
    net = net.to(images_a.device)

    def features(images: torch.Tensor) -> torch.Tensor:
        chunks = [
            net.features(images[i : i + batch_size]) for i in range(0, len(images), batch_size)
        ]
        return torch.cat(chunks)

    return frechet_distance(features(images_a), features(images_b))
