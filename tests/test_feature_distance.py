"""FD-FMNIST: the Frechet distance against closed forms, the stored classifier by hash and test
accuracy."""

import hashlib
import math

import pytest
import scipy.linalg
import torch
from torch import nn

import pbridge.feature_distance as feature_distance
from pbridge.data import DEBIAN_FASHION_MNIST, load_images
from pbridge.feature_distance import (
    CLASSIFIER_PATH,
    CLASSIFIER_SHA256,
    classifier_accuracy,
    fd_fmnist,
    frechet_distance,
    load_classifier,
    train_classifier,
)

needs_fashion = pytest.mark.skipif(
    not DEBIAN_FASHION_MNIST.is_dir(), reason="Debian's dataset-fashion-mnist is not installed"
)


def test_frechet_distance_matches_scipy_sqrtm(float64):
    """Against the textbook formula with scipy's matrix square root, on correlated features."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(400, 5, generator=g) @ torch.randn(5, 5, generator=g)
    b = 0.5 + torch.randn(300, 5, generator=g) @ torch.randn(5, 5, generator=g)
    ca, cb = torch.cov(a.T).numpy(), torch.cov(b.T).numpy()
    root = scipy.linalg.sqrtm(ca @ cb).real
    expected = float((a.mean(0) - b.mean(0)).pow(2).sum()) + (ca + cb - 2 * root).trace()
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_of_isotropic_gaussians(float64):
    """N(m1, s1^2 I) vs N(m2, s2^2 I) in f dims: ||m1 - m2||^2 + f (s1 - s2)^2, from samples."""
    g = torch.Generator().manual_seed(1)
    a = 1.0 + 2.0 * torch.randn(200_000, 3, generator=g)
    b = -1.0 + 0.5 * torch.randn(200_000, 3, generator=g)
    assert frechet_distance(a, b) == pytest.approx(3 * 4.0 + 3 * 1.5**2, rel=0.01)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_bad_feature_shapes_are_reported():
    with pytest.raises(ValueError, match=r"\(N, f\)"):
        frechet_distance(torch.zeros(4, 3), torch.zeros(4, 2))


def test_stored_classifier_is_verified_by_hash(tmp_path):
    assert hashlib.sha256(CLASSIFIER_PATH.read_bytes()).hexdigest() == CLASSIFIER_SHA256
    tampered = tmp_path / "classifier.pt"
    data = bytearray(CLASSIFIER_PATH.read_bytes())
    data[-100] ^= 1
    tampered.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="SHA-256"):
        load_classifier(tampered)


@needs_fashion
def test_stored_classifier_accuracy_and_feature_distances():
    """>= 88% on the Fashion-MNIST test split; FD-FMNIST is small between two halves of the test
    set and large against images with the classes shuffled out of shape (flipped upside down)."""
    test = load_images("fashion-mnist", "test")
    net = load_classifier()
    x = test.as_float()
    assert classifier_accuracy(net, x, test.labels) >= 0.88
    same = fd_fmnist(x[:2000], x[2000:4000], net)
    flipped = fd_fmnist(x[:2000], x[2000:4000].flip(-2), net)
    assert same < 0.1 * flipped


class _RecordingClassifier(nn.Module):
    """Stands in for the classifier in training: records which items it sees and whether each
    came flipped left-right (an item i is one bright pixel (i + 1) / N at row 3, column 0)."""

    seen: list[torch.Tensor] = []

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(28 * 28, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left, right = x[:, 0, 3, 0], x[:, 0, 3, 27]
        moved_left_right = (left > 0) ^ (right > 0)
        assert bool(moved_left_right.all()), "an item was moved other than left-right"
        self.seen.append(torch.stack([left + right, (right > 0).double()], -1))
        return self.head(x.flatten(1))


def test_classifier_training_visits_each_item_once_per_epoch_flipped_at_random(monkeypatch):
    """512 items, batches of 128, 4 epochs: each epoch shows every item once; each showing is
    flipped left-right with probability 1/2 independently, so the flips per item over the 4
    epochs are Binomial(4, 1/2) (frequencies within 5 binomial s.e.) and every batch mixes
    flipped and unflipped items."""
    monkeypatch.setattr(_RecordingClassifier, "seen", [])
    monkeypatch.setattr(feature_distance, "FashionClassifier", _RecordingClassifier)
    n, epochs = 512, 4
    images = torch.zeros(n, 1, 28, 28)
    images[:, 0, 3, 0] = (torch.arange(n) + 1) / n
    train_classifier(images, torch.arange(n) % 10, epochs=epochs, batch_size=128)
    batches = _RecordingClassifier.seen
    assert len(batches) == epochs * n // 128
    shown = torch.cat(batches)
    item, flipped = (shown[:, 0] * n).round().long() - 1, shown[:, 1]
    for epoch in item.view(epochs, n):
        assert torch.equal(epoch.sort().values, torch.arange(n)), "an epoch repeats items"
    per_batch = [int(b[:, 1].sum()) for b in batches]
    assert all(0 < k < 128 for k in per_batch), f"flipped items per batch: {per_batch}"
    flips = torch.zeros(n).index_add_(0, item, flipped.float()).long()
    freq = torch.bincount(flips, minlength=epochs + 1) / n
    binomial = torch.tensor([math.comb(epochs, k) for k in range(epochs + 1)]) / 2**epochs
    assert torch.all((freq - binomial).abs() < 5 * (binomial * (1 - binomial) / n).sqrt()), freq
