"""The image pipeline through the command line on scikit-learn's digits (a short learning check)."""

import json

import pytest
import torch

from pbridge.cli import main
from pbridge.presets import ImageConfig, build_image_model, image_preset


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits")
    assert main(["train", "digits", "--steps", "100", "--out", str(out), "--no-progress"]) == 0
    return out


@pytest.mark.slow
def test_digits_trains_end_to_end(digits_run):
    metrics = json.loads((digits_run / "metrics.json").read_text())
    losses = torch.load(digits_run / "checkpoint.pt", weights_only=True)["losses"]
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.8 * first  # the joint loss fell by more than 20% in 100 steps
    assert metrics["codes_used"] >= 8  # of 32: the codebook has not collapsed
    assert metrics["test_bits_per_dim"] > 0 and metrics["reconstruction_mse"] < 0.2
    for name in ("reconstructions.png", "samples.png", "checkpoint.pt", "config.json"):
        assert (digits_run / name).stat().st_size > 0


@pytest.mark.slow
def test_sample_command_on_an_image_run(digits_run, capsys):
    assert main(["sample", str(digits_run), "--num", "4"]) == 0
    assert json.loads(capsys.readouterr().out)["num"] == 4
    assert torch.load(digits_run / "samples.pt", weights_only=True)["x"].shape == (4, 1, 8, 8)


def test_config_round_trips_through_json():
    config = image_preset("miniimagenet", "small")
    again = ImageConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config and build_image_model(again).latent_shape == (16, 21, 21)


@pytest.mark.parametrize(
    "dataset, preset, match",
    [("svhn", "small", "unknown data set 'svhn'"), ("cifar10", "huge", "unknown preset 'huge'")],
)
def test_unknown_dataset_or_preset(dataset, preset, match):
    with pytest.raises(ValueError, match=match):
        image_preset(dataset, preset)
