"""The image pipeline through the command line on scikit-learn's digits (a short learning check)."""

import json
import math
from dataclasses import replace

import pyro
import pytest
import torch

from pbridge.checkpoint import load_checkpoint
from pbridge.cli import main
from pbridge.config import ImageConfig, image_preset
from pbridge.data import load_images
from pbridge.inference.images import run_images
from pbridge.inference.sampling import sample_posterior
from pbridge.inference.svi import train
from pbridge.models.builders import build_image_denoiser, build_image_model, build_image_vqvae
from pbridge.models.two_stage import bridge_on_frozen_vqvae
from pbridge.ou_bridge import image_schedule


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits")
    argv = ["train", "digits", "--steps", "100", "--vqvae-steps", "20", "--out", str(out)]
    assert main([*argv, "--no-progress"]) == 0
    return out


@pytest.mark.slow
def test_digits_trains_end_to_end(digits_run):
    """Learning happened: reconstructions are far better than the untrained model's (the
    per-step loss itself swings by thousands of nats: one random step of T = 1000)."""
    metrics = json.loads((digits_run / "metrics.json").read_text())
    torch.manual_seed(0)
    untrained = build_image_model(image_preset("digits", "small")).eval()
    x = load_images("digits", "test").as_float()
    with pyro.validation_enabled(False):
        mse_untrained = float((sample_posterior(untrained, x).x_mean - x).pow(2).mean())
    assert metrics["reconstruction_mse"] < 0.6 * mse_untrained
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


def _tiny(variant: str, **train) -> ImageConfig:
    config = image_preset("digits", "small")
    return replace(
        config,
        variant=variant,
        vqvae_steps=30,
        eval_items=64,
        unet_width=16,
        train=replace(config.train, steps=30, **train),
    )


def test_vqvae_elbo_has_the_uniform_prior_term():
    """VQ-VAE: log p(z_q) = -cells log K exactly, and the guide's point mass has log q = 0."""
    from pbridge.inference.svi import elbo_terms

    vqvae = build_image_vqvae(_tiny("two-stage"))
    terms = elbo_terms(vqvae, torch.rand(8, 1, 8, 8))
    assert math.isclose(terms["z_q_0"], -16 * math.log(32), rel_tol=1e-6)


def test_two_stage_moves_only_the_denoiser():
    config = _tiny("two-stage")
    torch.manual_seed(0)
    vqvae = build_image_vqvae(config)
    variant = bridge_on_frozen_vqvae(
        vqvae, build_image_denoiser(config), image_schedule(config.num_steps), config.bridge
    )
    frozen = {k: v.clone() for k, v in vqvae.state_dict().items()}  # BN statistics included
    denoiser = {k: v.clone() for k, v in variant.denoiser.state_dict().items()}
    x = torch.rand(64, 1, 8, 8)
    with pyro.validation_enabled(False):
        train(variant, x, replace(config.train, steps=5, batch_size=16), progress=False)
    assert all(torch.equal(v, frozen[k]) for k, v in vqvae.state_dict().items())
    changed = [not torch.equal(v, denoiser[k]) for k, v in variant.denoiser.state_dict().items()]
    assert any(changed)


@pytest.mark.slow
def test_two_stage_run_writes_both_stages(tmp_path):
    metrics = run_images(_tiny("two-stage"), tmp_path, progress=False)
    assert (tmp_path / "vqvae.pt").is_file() and (tmp_path / "checkpoint.pt").is_file()
    stage_one = load_checkpoint(tmp_path / "vqvae.pt")
    assert stage_one["step"] == 30 and stage_one["losses"][-1] < stage_one["losses"][0]
    assert math.isfinite(metrics["test_bits_per_dim"]) and metrics["codes_used"] >= 4


def test_pixelcnn_run_writes_both_stages_and_scores(tmp_path):
    """The PixelCNN baseline through the same run: VQ-VAE stage, PixelCNN stage, test bits/dim
    and prior samples drawn in raster order."""
    metrics = run_images(_tiny("pixelcnn"), tmp_path, progress=False)
    stage_two = load_checkpoint(tmp_path / "checkpoint.pt")
    assert stage_two["variant"] == "PixelCNNVQVAE"
    assert stage_two["losses"][-1] < stage_two["losses"][0]
    assert math.isfinite(metrics["test_bits_per_dim"]) and (tmp_path / "samples.png").is_file()
