"""The image model's bound: every preset's shapes, one SVI step, resume, and bits/dim by hand."""

import math

import pyro
import pytest
import torch
from pyro import poutine

from pbridge.codebook import Codebook
from pbridge.config import BridgeSettings, image_preset
from pbridge.data import DATASETS
from pbridge.image_networks import ResNetDecoder, ResNetEncoder, UNetDenoiser
from pbridge.inference.bound import negative_elbo
from pbridge.inference.images import test_bits_per_dim as bits_per_dim_of
from pbridge.likelihoods import DiscretizedLogisticDecoder
from pbridge.models.bridge_vqvae import DiffusionBridgeVQVAE
from pbridge.models.builders import build_image_model
from pbridge.ou_bridge import OUSchedule

IMAGE_SETS = list(DATASETS)


@pytest.mark.parametrize("preset", ["small", "paper"])
@pytest.mark.parametrize("dataset", IMAGE_SETS)
def test_every_preset_has_the_papers_latent_grid(dataset, preset):
    """One model/guide draw per preset: x, z_e^0 and z_q^0 have the shapes of the data set and
    its latent grid (CIFAR-10 16x16, Fashion-MNIST 14x14, mini-ImageNet 21x21, digits 4x4)."""
    grids = {"cifar10": 16, "fashion-mnist": 14, "miniimagenet": 21, "digits": 4}
    config = image_preset(dataset, preset)
    torch.manual_seed(0)
    variant = build_image_model(config)
    x = torch.rand(2, *DATASETS[dataset].shape)
    guide = poutine.trace(variant.guide).get_trace(x)
    model = poutine.trace(poutine.replay(variant.model, trace=guide)).get_trace(x)
    grid = grids[dataset]
    assert guide.nodes["z_q_0"]["value"].shape == (2, config.latent_dim, grid, grid)
    assert model.nodes["z_q_0"]["value"].shape == (2, config.latent_dim, grid, grid)
    assert model.nodes["x"]["fn"].batch_shape == (2,)
    assert math.isfinite(float(negative_elbo(variant, x).detach()))


def test_one_svi_step_lowers_the_loss_on_a_fixed_batch():
    """Same batch, same random draws: one Adam step lowers the training loss."""
    torch.manual_seed(0)
    variant = build_image_model(image_preset("digits", "small"))
    x = torch.rand(32, 1, 8, 8).mul(255).round().div(255)
    variant.initialise_codebook(x)
    optimiser = torch.optim.Adam(variant.parameters(), lr=1e-3)
    pyro.set_rng_seed(1)
    before = negative_elbo(variant, x)
    optimiser.zero_grad()
    before.backward()
    optimiser.step()
    pyro.set_rng_seed(1)
    after = float(negative_elbo(variant, x).detach())
    assert after < float(before.detach()) - 1.0, (float(before), after)


def _normal_log_pdf(value, mean, var):
    var = torch.as_tensor(var, dtype=value.dtype)
    return (-0.5 * (value - mean) ** 2 / var - 0.5 * torch.log(2 * math.pi * var)).flatten(1).sum(1)


def _logistic_log_pmf(x, loc, log_scale):
    """log P(level of x) of 256-level discretised logistics, by differences of sigmoids."""
    y, s, half = 2 * x - 1, log_scale.exp(), 1 / 255
    upper = torch.where(x >= 254.5 / 255, torch.ones_like(y), torch.sigmoid((y - loc + half) / s))
    lower = torch.where(x <= 0.5 / 255, torch.zeros_like(y), torch.sigmoid((y - loc - half) / s))
    return torch.log(upper - lower).flatten(1).sum(1)


def test_bits_per_dim_is_the_hand_summed_bound(float64):
    """A tiny full-chain model (T = 5, z* != 0, self-conditioned head, tight formulation): the
    reported bits/dim equals -(sum of every log-density of the drawn chain, written out by hand:
    the forward kernels from the code, the backward Gaussian kernels with mean mu~(z^t, z0_hat),
    the categorical read-out at z^1, the decoder) / (D log 2)."""
    pyro.enable_validation(False)
    torch.manual_seed(0)
    d, T, K = 3, 5, 6
    schedule = OUSchedule(1.5, 0.5, -0.4, torch.full((T,), 0.05, dtype=torch.float64))
    settings = BridgeSettings(estimator="full_chain", spherical_radius=1.0)
    network = UNetDenoiser(2 * d, width=8, channel_mults=(1,), out_channels=K)
    torch.nn.init.normal_(network.out[-1].weight, std=0.5)
    variant = DiffusionBridgeVQVAE(
        ResNetEncoder(1, d, 1),
        DiscretizedLogisticDecoder(ResNetDecoder(d, 2, 1)),
        network,
        Codebook(K, d, radius=1.0),
        schedule,
        (1, 8, 8),
        (d, 4, 4),
        settings,
    )
    x = torch.rand(6, 1, 8, 8).mul(255).round().div(255)
    x[0, 0, 0, :2] = torch.tensor([0.0, 1.0])  # both edge bins
    variant.initialise_codebook(x)

    pyro.set_rng_seed(7)
    reported, _ = bits_per_dim_of(variant, x, strata=T)

    pyro.set_rng_seed(7)
    with torch.no_grad():
        draws = poutine.trace(variant.guide).get_trace(x).nodes
        z = [None] + [draws[f"z_e_{t}"]["value"] for t in range(1, T + 1)]
        codes = variant.codebook()
        f = variant.encode(x)
        k = ((f[:, None] - codes[None, :, :, None, None]) ** 2).sum(2).argmin(1)  # (B, 4, 4)
        e_k = codes[k].movedim(-1, 1)
        z[0] = e_k
        s2, z_star = schedule.sigma2, schedule.z_star
        beta, abar = schedule.beta, schedule.abar

        def head_logits(z_t, t):  # (B, K, 4, 4), the self-conditioned two-pass head
            mean = z_star + abar[t].sqrt() * (codes[None, :, :, None, None] - z_star)
            local = -((z_t[:, None] - mean) ** 2).sum(2) / (2 * s2 * (1 - abar[t]))
            steps = torch.full((6,), t)
            first = local + network(torch.cat([z_t, torch.zeros_like(z_t)], 1), steps)
            z0_first = torch.einsum("bkhw,kd->bdhw", first.softmax(1), codes)
            return local + network(torch.cat([z_t, z0_first], 1), steps)

        log_q = torch.zeros(6)
        for t in range(1, T + 1):
            mean = z_star + (1 - beta[t]).sqrt() * (z[t - 1] - z_star)
            log_q += _normal_log_pdf(z[t], mean, s2 * beta[t])

        log_p = _normal_log_pdf(z[T], z_star, s2)
        for t in range(T, 1, -1):
            z0_hat = torch.einsum("bkhw,kd->bdhw", head_logits(z[t], t).softmax(1), codes)
            mean = z_star + (
                abar[t - 1].sqrt() * beta[t] * (z0_hat - z_star)
                + (1 - beta[t]).sqrt() * (1 - abar[t - 1]) * (z[t] - z_star)
            ) / (1 - abar[t])
            var = beta[t] * (1 - abar[t - 1]) / (1 - abar[t])
            log_p += _normal_log_pdf(z[t - 1], mean, s2 * var)
        log_p += head_logits(z[1], 1).log_softmax(1).gather(1, k[:, None]).sum((1, 2, 3))
        loc, log_scale = variant.decoder.net(e_k).chunk(2, dim=1)
        log_p += _logistic_log_pmf(x, loc, log_scale.clamp_min(-7.0))
        hand = -float((log_p - log_q).mean()) / (64 * math.log(2))
    assert reported == pytest.approx(hand, rel=1e-9)
