"""The toy problem end to end through the command line (a learning check, about a minute)."""

import json
import subprocess
import sys

import pytest
import torch

from pbridge.checkpoint import load_checkpoint
from pbridge.cli import main
from pbridge.toy import centroids, nearest_centroid, sample_walks, transition_accuracy


def test_walks_move_one_centroid_per_step():
    g = torch.Generator().manual_seed(0)
    x, states = sample_walks(4000, length=5, noise=0.05, generator=g)
    assert x.shape == (4000, 2, 5) and transition_accuracy(states) == 1.0
    assert torch.equal(nearest_centroid(x), states)
    residual = x - centroids()[states].movedim(-1, 1)
    assert abs(float(residual.std()) - 0.05) < 0.002
    # both directions, equally often (binomial s.e. 0.004)
    up = ((states[:, 1:] - states[:, :-1]) % 8 == 1).double().mean()
    assert abs(float(up) - 0.5) < 0.02


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
