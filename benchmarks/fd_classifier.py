"""Train the FD-FMNIST classifier and store it next to pbridge/feature_distance.py.

    python benchmarks/fd_classifier.py

Prints the test accuracy and the SHA-256 to paste into ``CLASSIFIER_SHA256``.
"""

from __future__ import annotations

import hashlib
import time

import torch

from pbridge.data import load_images
from pbridge.feature_distance import CLASSIFIER_PATH, classifier_accuracy, train_classifier


def main() -> None:
    train = load_images("fashion-mnist", "train")
    test = load_images("fashion-mnist", "test")
    start = time.perf_counter()
    net = train_classifier(train.as_float(), train.labels)
    seconds = time.perf_counter() - start
    accuracy = classifier_accuracy(net, test.as_float(), test.labels)
    torch.save(net.state_dict(), CLASSIFIER_PATH)
    digest = hashlib.sha256(CLASSIFIER_PATH.read_bytes()).hexdigest()
    print(f"trained in {seconds:.0f} s; test accuracy {accuracy:.4f}")
    print(f"{CLASSIFIER_PATH}: sha256 {digest}")


if __name__ == "__main__":
    main()
