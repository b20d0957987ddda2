"""The ELBO of the bridge VQ-VAE, both formulations: closed-form step terms, the two estimators,
gradient paths. (The tight bound's own identities: tests/test_tight_bound.py.)"""

import math
from dataclasses import replace

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from torch.distributions import Normal, kl_divergence

from pbridge.bridge_prior import DiffusionPrior, prior_options, reverse_step
from pbridge.codebook import Codebook
from pbridge.config import PAPER_SETTINGS, BridgeSettings, PaperSettings
from pbridge.models.bridge_vqvae import DiffusionBridgeVQVAE
from pbridge.models.formulations import bridge_class
from pbridge.networks import NormalDecoder, PointwiseMLP, ResidualMLPDenoiser
from pbridge.ou_bridge import OUSchedule
from pbridge.samplers import SamplerSettings

SCHEDULE = OUSchedule(
    theta=1.0, eta2=2.0, z_star=0.3, deltas=torch.tensor([0.1, 0.2, 0.15, 0.3], dtype=torch.float64)
)
# sigma2 = 1 above hides a dropped sigma2; this one has sigma2 = 0.25 and z* = -0.4.
SCHEDULE_S2 = OUSchedule(
    theta=2.0,
    eta2=1.0,
    z_star=-0.4,
    deltas=torch.tensor([0.05, 0.1, 0.08, 0.15], dtype=torch.float64),
)


def small_denoiser(event=(2, 3)):
    torch.manual_seed(3)
    net = ResidualMLPDenoiser(event, width=16, blocks=1)
    torch.nn.init.normal_(net.out[-1].weight, std=0.3)  # a non-trivial eps_theta
    return net.double()


def small_head_network(in_channels=4, cells=2, num_codes=4):
    """h_theta of a tight variant, with a non-trivial output."""
    torch.manual_seed(3)
    net = ResidualMLPDenoiser(
        (in_channels, cells), width=16, blocks=1, out_shape=(num_codes, cells)
    )
    torch.nn.init.normal_(net.out[-1].weight, std=0.3)
    return net.double()


def small_variant(formulation="paper", **settings) -> DiffusionBridgeVQVAE:
    torch.manual_seed(4)
    if formulation == "paper":
        paper = dict(tau_p=0.5, tau_q=0.0, encoder_scale=0.4, denoiser_loss="elbo")
        paper.update({k: settings.pop(k) for k in PAPER_SETTINGS if k in settings})
        base = dict(paper=PaperSettings(**paper))
        denoiser = small_denoiser((2, 2))
    else:
        base = dict(t_sampling="uniform")
        in_channels = 2 if settings.get("self_condition") is False else 4
        denoiser = small_head_network(in_channels)
    settings = BridgeSettings(formulation=formulation, **{**base, **settings})
    return bridge_class(settings)(
        encoder=PointwiseMLP(2, 2, 8),
        decoder=NormalDecoder(PointwiseMLP(2, 2, 8), 0.5, event_dims=2),
        denoiser=denoiser,
        codebook=Codebook(4, 2, radius=1.0),
        schedule=SCHEDULE,
        data_shape=(2, 2),
        latent_shape=(2, 2),
        settings=settings,
    ).double()


@pytest.mark.parametrize("sigma2", [1.0, 0.25], ids=["sigma2=1", "sigma2=0.25"])
@pytest.mark.parametrize("variance", ["beta_tilde", "beta"])
@pytest.mark.parametrize("t", [1, 2, 4])
def test_step_term_is_the_gaussian_kl(variance, t, sigma2, float64):
    """w_t ||eps - eps_theta||^2 + c_t equals KL(q(z^{t-1}|z^t,z^0) || p_theta(z^{t-1}|z^t))
    from torch.distributions (t >= 2), and -log p_theta(z^0 | z^1) at t = 1."""
    schedule = SCHEDULE if sigma2 == 1.0 else SCHEDULE_S2
    assert schedule.sigma2 == sigma2
    denoiser = small_denoiser()
    prior = DiffusionPrior(schedule, denoiser, (2, 3), 5, model_variance=variance)
    z0, eps = torch.randn(5, 2, 3), torch.randn(5, 2, 3)
    tt = torch.full((5,), t)
    mean, var = schedule.marginal(z0, tt)
    z_t = mean + var.sqrt() * eps
    p_mean, p_var = reverse_step(schedule, denoiser, z_t, tt, variance)
    if t == 1:
        ref = -Normal(p_mean, p_var.sqrt()).log_prob(z0)
    else:
        q_mean, q_var = schedule.posterior(z_t, z0, tt)
        ref = kl_divergence(Normal(q_mean, q_var.sqrt()), Normal(p_mean, p_var.sqrt()))
    assert torch.allclose(prior.step_terms(z0, tt, eps), ref.flatten(1).sum(-1))


def test_epsilon_weight_closed_forms():
    """The two weights of docs/maths.md eq. 7."""
    s, t = SCHEDULE, torch.arange(2, 5)
    a, b, abar = s.alpha[t], s.beta[t], s.abar
    assert torch.allclose(s.epsilon_weight(t, "beta"), b / (2 * a * (1 - abar[t])))
    assert torch.allclose(s.epsilon_weight(t, "beta_tilde"), b / (2 * a * (1 - abar[t - 1])))
    one = torch.tensor([1])
    for variance in ("beta", "beta_tilde"):
        assert torch.allclose(s.epsilon_weight(one, variance), 1 / (2 * s.alpha[one]))


def _elbo_batches(variant, x, batches, strata=None):
    """ELBO per item of ``batches`` independent batches (Pyro's Trace_ELBO), the prior scored
    with ``strata`` stratified steps per item (``None``: the variant's estimator)."""
    model = prior_options(variant.model, strata=strata)
    return torch.tensor(
        [-Trace_ELBO().loss(model, variant.guide, x) / len(x) for _ in range(batches)]
    )


@pytest.mark.parametrize(
    "settings",
    [
        dict(formulation="paper", t_sampling="uniform"),
        dict(formulation="paper", t_sampling="importance", model_variance="beta"),
        dict(formulation="paper", tau_q=0.3),
        dict(formulation="tight"),
        dict(formulation="tight", self_condition=False),
        dict(formulation="tight", t_sampling="importance"),
    ],
    ids=[
        "paper-uniform",
        "paper-importance-beta",
        "paper-soft-guide",
        "tight",
        "tight-no-self-conditioning",
        "tight-importance",
    ],
)
def test_random_step_mean_equals_full_chain_elbo(settings, float64):
    """E[random-step ELBO] = E[full-chain ELBO] (every step a site), 5 combined standard errors.
    The tight model's importance proposal is the tracked one, updated by each batch before."""
    pyro.enable_validation(False)  # 10^5 items; the shapes are validated in other tests
    x = torch.tensor([[[0.8, -0.2], [0.1, 0.9]]]).expand(40000, 2, 2)
    full = small_variant(estimator="full_chain", **settings)
    rand = small_variant(estimator="random_step", **settings)
    if rand.step_costs is not None:  # a tracked, non-uniform proposal
        with torch.enable_grad():
            _elbo_batches(rand, x[:2000], 1)
        assert rand.step_costs.seen.all()
    torch.manual_seed(0)
    a, b = _elbo_batches(full, x, 10), _elbo_batches(rand, x, 10)
    se = math.sqrt(a.var() / len(a) + b.var() / len(b))
    assert abs(float(a.mean() - b.mean())) < 5 * se, (a.mean(), b.mean(), se)
    assert se < 0.04  # sharp enough to catch any missing or doubled term above 0.2 nat


def test_simple_denoiser_loss_keeps_the_value_and_the_latent_gradient(float64):
    """``denoiser_loss="simple"``: same value and d/dz^0 as the ELBO; the denoiser's gradient is
    that of mean(w) ||eps - eps_theta||^2 scaled by 1/q(t)."""
    z0 = torch.randn(6, 2, 3, requires_grad=True)
    t, eps = torch.tensor([1, 2, 3, 4, 2, 3]), torch.randn(6, 2, 3)
    grads = {}
    for loss in ("elbo", "simple"):
        den = small_denoiser()
        value = DiffusionPrior(SCHEDULE, den, (2, 3), 6, denoiser_loss=loss).step_terms(z0, t, eps)
        grads[loss] = (value, *torch.autograd.grad(value.sum(), [z0, *den.parameters()]))
    assert torch.allclose(grads["elbo"][0], grads["simple"][0])
    assert torch.allclose(grads["elbo"][1], grads["simple"][1])
    den = small_denoiser()
    w_mean = float(SCHEDULE.epsilon_weight(torch.arange(1, 5), "beta_tilde").mean())
    mean, var = SCHEDULE.marginal(z0.detach(), t)
    sq = (eps - den(mean + var.sqrt() * eps, t)).pow(2).sum((1, 2))
    ref = torch.autograd.grad(w_mean * sq.sum(), list(den.parameters()))
    for got, want in zip(grads["simple"][2:], ref, strict=True):
        assert torch.allclose(got, want)


def _prior_term_grads(variant, x):
    """|d/d encoder| and |d/d codebook| of the prior's log-density of the guide's draw."""
    guide_trace = poutine.trace(variant.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(variant.model, guide_trace)).get_trace(x)
    site = model_trace.nodes["z_q_0" if variant.formulation == "tight" else "z_e_0"]
    term = site["fn"].log_prob(site["value"]).sum()
    enc = torch.autograd.grad(
        term, list(variant.encoder.parameters()), retain_graph=True, allow_unused=True
    )
    (code,) = torch.autograd.grad(term, [variant.codebook.weight], allow_unused=True)
    enc_norm = sum(0.0 if g is None else float(g.abs().sum()) for g in enc)
    return enc_norm, 0.0 if code is None else float(code.abs().sum())


def test_paper_chain_term_reaches_the_encoder_not_the_codebook(float64):
    enc, code = _prior_term_grads(small_variant("paper"), torch.randn(8, 2, 2))
    assert enc > 1e-6 and code == 0.0


def test_tight_prior_term_reaches_the_codebook_not_the_encoder(float64):
    """The tight prior scores the guide's codes: its gradient moves the codes (and the head),
    and reaches the encoder only through the codebook surrogate, not through the prior."""
    enc, code = _prior_term_grads(small_variant("tight"), torch.randn(8, 2, 2))
    assert code > 1e-6 and enc == 0.0


@pytest.mark.parametrize("formulation", ["paper", "tight"])
def test_joint_loss_trains_every_part(formulation, float64):
    """One ELBO gradient reaches encoder, decoder, codebook and denoiser together."""
    variant = small_variant(formulation)
    loss = Trace_ELBO().differentiable_loss(variant.model, variant.guide, torch.randn(8, 2, 2))
    loss.backward()
    for part in ("encoder", "decoder", "codebook", "denoiser"):
        total = sum(float(p.grad.abs().sum()) for p in getattr(variant, part).parameters())
        assert total > 0, part


def test_bad_settings_and_data_are_reported():
    with pytest.raises(ValueError, match="estimator"):
        BridgeSettings(estimator="two_steps")
    with pytest.raises(ValueError, match="tau_q > 0"):
        PaperSettings(gradient="gumbel", tau_q=0.0)
    with pytest.raises(ValueError, match="formulation"):
        BridgeSettings(formulation="diffuse-the-code")
    with pytest.raises(ValueError, match=r"changed: model_variance='beta'.*formulation=paper"):
        BridgeSettings(formulation="tight", paper=PaperSettings(model_variance="beta"))
    with pytest.raises(ValueError, match="readout_aux"):
        BridgeSettings(readout_aux=-0.1)
    with pytest.raises(ValueError, match=r"self_condition=False: read by the tight formulation"):
        BridgeSettings(formulation="paper", self_condition=False)
    variant = small_variant()
    with pytest.raises(ValueError, match=r"\(B, 2, 2\)"):
        variant.guide(torch.zeros(3, 2, 5, dtype=torch.float64))
    with pytest.raises(TypeError, match="dtype"):
        variant.guide(torch.zeros(3, 2, 2, dtype=torch.long))
    assert replace(PaperSettings(), tau_p=1.0).tau_p == 1.0


@pytest.mark.parametrize("formulation", ["paper", "tight"])
def test_stratified_steps_are_unbiased_and_less_noisy(formulation, float64):
    """Stratified steps (paper: every step once per item; tight: the read-out and one step in
    each of T - 1 strata): same mean as the full chain, and a smaller spread than one random
    step per item."""
    pyro.enable_validation(False)
    x = torch.tensor([[[0.8, -0.2], [0.1, 0.9]]]).expand(40000, 2, 2)
    full = small_variant(formulation, estimator="full_chain")
    rand = small_variant(formulation)
    strata = SCHEDULE.num_steps - (formulation == "tight")
    torch.manual_seed(1)
    a = _elbo_batches(full, x, 10)
    single = _elbo_batches(rand, x, 10)
    b = _elbo_batches(rand, x, 10, strata=strata)
    se = math.sqrt(a.var() / len(a) + b.var() / len(b))
    assert abs(float(a.mean() - b.mean())) < 5 * se
    assert b.std() < single.std()


def test_strata_must_be_positive():
    with pytest.raises(ValueError, match="strata must be >= 1, got 0"):
        DiffusionPrior(SCHEDULE, small_denoiser(), (2, 3), 5, strata=0)


@pytest.mark.parametrize("formulation", ["paper", "tight"])
def test_elbo_terms_add_up_to_pyros_elbo(formulation, float64):
    """The per-site split shown in the progress bar sums to Trace_ELBO's value of the same draw
    (the commitment surrogate left out of both)."""
    from pbridge.inference.bound import elbo_terms

    variant = small_variant(formulation)
    x = torch.randn(16, 2, 2)
    pyro.set_rng_seed(5)
    terms = elbo_terms(variant, x)
    pyro.set_rng_seed(5)
    guide = poutine.block(variant.guide, hide=["commitment"])
    elbo = -Trace_ELBO().loss(variant.model, guide, x) / 16
    assert set(terms) == ({"z_q_0", "x"} if formulation == "tight" else {"z_e", "z_q_0", "x"})
    assert math.isclose(sum(terms.values()), elbo, rel_tol=1e-9, abs_tol=1e-9)


@pytest.mark.parametrize("formulation", ["paper", "tight"])
def test_elbo_per_item_sums_to_the_bound_of_the_same_draw(formulation, float64):
    """The per-item ELBO (the paired comparison's score) of one draw averages to Trace_ELBO's
    value of the same draw, with the same stratified chain steps, item by item independent of
    the batch it sits in."""
    from pbridge.inference.bound import elbo_per_item, estimate_elbo

    variant = small_variant(formulation)
    x = torch.randn(16, 2, 2)
    strata = 2
    pyro.set_rng_seed(7)
    per_item = elbo_per_item(variant, x, strata)
    pyro.set_rng_seed(7)
    elbo, _ = estimate_elbo(variant, x, repeats=1, strata=strata)
    assert per_item.shape == (16,)
    assert math.isclose(float(per_item.mean()), elbo, rel_tol=1e-9, abs_tol=1e-9)
    assert per_item.std() > 0  # items differ: not one figure spread over the batch


CHAIN_SAMPLERS = {
    "ancestral": SamplerSettings(),
    "respaced": SamplerSettings("respaced", 3),
    "respaced-eta0": SamplerSettings("respaced", 3, ddim_eta=0.0),
    "sde": SamplerSettings("sde", 6),
    "ode": SamplerSettings("ode", 6),
}


@pytest.mark.parametrize("formulation", ["tight", "paper"])
@pytest.mark.parametrize("name", list(CHAIN_SAMPLERS))
def test_prior_draws_end_the_chain_at_z1_in_the_tight_formulation(name, formulation, float64):
    """Tight: every sampler stops the chain at z^1, so the network is evaluated at t = 1 only by
    the read-out (its two self-conditioning passes, last); the ancestral chain's ``record``
    ends at t = 1. Paper: the chain runs to z^0, its last evaluation at t = 1, recorded t = 0."""
    variant = small_variant(formulation)
    sampler = CHAIN_SAMPLERS[name]
    times = []
    variant.denoiser.register_forward_hook(
        lambda module, args, out: times.append(float(args[1].double().max()))
    )
    with torch.no_grad():
        drawn = variant.prior(8).with_options(sampler=sampler).sample()
    assert drawn.shape == (8, 2, 2) and torch.isfinite(drawn).all()
    if formulation == "tight":
        assert [t for t in times if t <= 1] == times[-2:] == [1.0, 1.0], times
    else:
        assert times[-1] == 1.0 and min(times[:-1]) > 1, times
    if name == "ancestral":
        recorded = []
        z_T = SCHEDULE.stationary_draw(torch.zeros(8, 2, 2))
        variant.draw_chain(z_T, sampler, record=lambda t, z: recorded.append(t))
        assert recorded == [3, 2, 1] + ([] if formulation == "tight" else [0])


@pytest.mark.parametrize("formulation", ["paper", "tight"])
def test_inpainting_holds_the_encoding_of_the_known_codes(formulation, float64):
    """The z^0 inpainting holds at known cells: the paper's encoding e_k + s eps (mean e_k,
    standard deviation s = encoder_scale = 0.4 per coordinate, within 5 standard errors of
    4000 draws); the tight one's e_k itself (a noiseless draw is 0.4 too narrow, a doubled
    one 0.4 too wide)."""
    model = small_variant(formulation)
    torch.manual_seed(0)
    indices = torch.randint(0, 4, (4000, 2, 2))
    e_k = model.codebook()[indices].movedim(-1, 1)
    z0 = model.known_start(indices)
    assert z0.shape == e_k.shape == (4000, 2, 2, 2)
    if formulation == "tight":
        assert torch.equal(z0, e_k)
        return
    u = (z0 - e_k).flatten(1)
    n = u.shape[0]
    assert u.mean(0).abs().max() < 5 * 0.4 / math.sqrt(n)
    assert (u.std(0) - 0.4).abs().max() < 5 * 0.4 / math.sqrt(2 * n)
