"""The toy problem end to end through the command line (a learning check, about a minute)."""

import json
import math
import subprocess
import sys

import pytest
import torch

from pbridge.checkpoint import load_checkpoint
from pbridge.cli import main
from pbridge.toy import centroids, nearest_centroid, sample_walks, transition_accuracy


def test_walks_move_one_centroid_per_step(float64):
    """4,000 walks of length 5: every step moves +-1 mod 8; the law of the walk holds within 5
    Monte Carlo s.e.: the centroid at every time is uniform over 8 (the chain started uniform
    stays uniform), the number of +1 moves per walk is Binomial(4, 1/2) (independent fair
    steps), and the residuals are independent N(0, 0.05^2) in every coordinate and time (their
    10 x 10 covariance is 0.05^2 I; s.e. 0.05^2 sqrt(2 / N) on the diagonal, 0.05^2 / sqrt(N)
    off it)."""
    n, length, noise = 4000, 5, 0.05
    g = torch.Generator().manual_seed(0)
    x, states = sample_walks(n, length=length, noise=noise, generator=g)
    assert x.shape == (n, 2, length) and transition_accuracy(states) == 1.0
    assert torch.equal(nearest_centroid(x), states)
    at_time = torch.stack([torch.bincount(s, minlength=8) for s in states.T]) / n  # (L, 8)
    assert torch.all((at_time - 1 / 8).abs() < 5 * math.sqrt(1 / 8 * 7 / 8 / n)), at_time
    ups = ((states[:, 1:] - states[:, :-1]) % 8 == 1).sum(-1)
    freq = torch.bincount(ups, minlength=length) / n
    binomial = torch.tensor([math.comb(length - 1, k) for k in range(length)]) / 2 ** (length - 1)
    assert torch.all((freq - binomial).abs() < 5 * (binomial * (1 - binomial) / n).sqrt()), freq
    residual = (x - centroids()[states].movedim(-1, 1)).flatten(1)
    cov = residual.T @ residual / n
    var = noise**2
    se = torch.full_like(cov, var / math.sqrt(n)).fill_diagonal_(var * math.sqrt(2 / n))
    assert torch.all((cov - var * torch.eye(2 * length)).abs() < 5 * se), cov


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy")
    assert main(["train", "toy", "--out", str(out), "--no-progress", "--seed", "0"]) == 0
    return out


@pytest.mark.slow
def test_toy_trains_end_to_end(toy_run):
    """Fixed seed 0, the default preset: the acceptance figures of the core issue."""
    metrics = json.loads((toy_run / "metrics.json").read_text())
    assert metrics["transition_accuracy"] >= 0.95
    assert metrics["codes_used"] == 8 and metrics["prior_codes_used"] == 8
    assert metrics["reconstruction_mse"] < 0.01  # data noise alone gives 0.0025
    losses = load_checkpoint(toy_run / "checkpoint.pt")["losses"]
    first, last = sum(losses[:50]) / 50, sum(losses[-100:]) / 100
    assert first - last > 100  # nats per walk: the loss fell by a wide margin
    assert abs(metrics["elbo"] + last) < 10  # held-out ELBO close to the final training loss
    for name in ("config.json", "checkpoint.pt", "metrics.json", "trajectories.png"):
        assert (toy_run / name).stat().st_size > 0


@pytest.mark.slow
def test_sample_command_draws_from_the_trained_prior(toy_run, capsys):
    assert main(["sample", str(toy_run), "--num", "500"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["transition_accuracy"] >= 0.9
    samples = torch.load(toy_run / "samples.pt", weights_only=True)
    assert samples["x"].shape == (500, 2, 5) and samples["codes"].max() < 8
    assert (toy_run / "samples.png").stat().st_size > 0


def test_unknown_dataset_is_named(tmp_path, capsys):
    assert main(["train", "imagenet-21k", "--out", str(tmp_path)]) == 2
    assert "unknown dataset 'imagenet-21k'" in capsys.readouterr().err


def test_non_positive_steps_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train", "toy", "--out", str(tmp_path), "--steps", "0"])
    assert "must be a positive integer, got 0" in capsys.readouterr().err


def test_missing_run_directory_is_named(tmp_path, capsys):
    assert main(["sample", str(tmp_path / "nowhere")]) == 2
    assert "nowhere is not a run directory: no config.json" in capsys.readouterr().err


def test_console_script_help():
    out = subprocess.run(
        [sys.executable, "-m", "pbridge.cli", "train", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--out" in out and "--device" in out
