"""The tight bridge's bound over codes (docs/maths.md s. 6) against independent computations:
the Gaussian KL of torch.distributions, the exact posterior over codes, the cross-entropy
identity of a context-free head, and a short training on Markov code sequences of known
entropy."""

import math

import pytest
import torch
from torch import nn
from torch.distributions import Normal, kl_divergence

from pbridge.bridge_prior import BridgeCodePrior, StepCostTracker, stratified_steps
from pbridge.code_head import CodeHead, local_log_likelihood
from pbridge.codebook import Codebook, gather_codes
from pbridge.networks import ResidualMLPDenoiser
from pbridge.ou_bridge import OUSchedule, image_schedule

SCHEDULE = OUSchedule(
    theta=1.0, eta2=2.0, z_star=0.3, deltas=torch.tensor([0.1, 0.2, 0.15, 0.3], dtype=torch.float64)
)


class ConstantCorrection(nn.Module):
    """A context-free h_theta: the same logits ``log_pi`` ``(K,)`` at every cell and time."""

    def __init__(self, log_pi: torch.Tensor) -> None:
        super().__init__()
        self.log_pi = nn.Parameter(log_pi)

    def forward(self, z_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        shape = (z_in.shape[0], -1, *z_in.shape[2:])
        return self.log_pi.view(1, -1, *([1] * (z_in.dim() - 2))).expand(shape)


def _head(schedule, codebook, cells=3, self_condition=True, std=0.3):
    torch.manual_seed(3)
    d, k = codebook.weight.shape[1], codebook.weight.shape[0]
    net = ResidualMLPDenoiser(
        ((2 if self_condition else 1) * d, cells), width=16, blocks=1, out_shape=(k, cells)
    )
    nn.init.normal_(net.out[-1].weight, std=std)
    return CodeHead(schedule, net.double(), codebook, self_condition)


def test_code_step_weight_is_half_the_snr_drop(float64):
    """0.5 (SNR_{t-1} - SNR_t) / sigma2, SNR from abar directly; and w_t ||eps - eps'||^2 of the
    eps parametrisation (beta~ variances) written in z^0."""
    for schedule in (SCHEDULE, image_schedule()):
        t = torch.arange(2, schedule.num_steps + 1)
        abar = schedule.abar
        snr = abar / (1 - abar)
        want = 0.5 * (snr[t - 1] - snr[t]) / schedule.sigma2
        torch.testing.assert_close(schedule.code_step_weight(t), want, rtol=1e-9, atol=0)
        # ||eps - eps'||^2 = abar_t / (sigma2 (1 - abar_t)) ||z0 - z0'||^2
        w_eps = schedule.epsilon_weight(t, "beta_tilde") * abar[t] / (1 - abar[t])
        torch.testing.assert_close(schedule.code_step_weight(t), w_eps / schedule.sigma2)


@pytest.mark.parametrize("self_condition", [True, False], ids=["self-cond", "plain"])
@pytest.mark.parametrize("t", [1, 2, 4])
def test_step_term_is_the_gaussian_kl_or_the_readout(t, self_condition, float64):
    """t >= 2: the term equals KL(q(z^{t-1} | z^t, e_k) || N(mu~_t(z^t, z0_hat), sigma2 beta~_t))
    from torch.distributions; t = 1: -log softmax(l(z^1, 1))_k; summed over cells."""
    codebook = Codebook(4, 2, radius=1.0).double()
    head = _head(SCHEDULE, codebook, self_condition=self_condition)
    prior = BridgeCodePrior(head, 5, (2, 3))
    k = torch.randint(0, 4, (5, 3))
    eps, tt = torch.randn(5, 2, 3), torch.full((5,), t)
    term, cross_entropy = prior.step_terms(k, tt, eps)
    e_k = gather_codes(k, codebook())
    mean, var = SCHEDULE.marginal(e_k, tt)
    z_t = mean + var.sqrt() * eps
    logits = head.logits(z_t, tt)
    if t == 1:
        ref = -logits.log_softmax(-1).gather(-1, k[..., None]).sum((1, 2))
    else:
        z0_hat = (logits.softmax(-1) @ codebook()).movedim(-1, 1)
        q_mean, q_var = SCHEDULE.posterior(z_t, e_k, tt)
        p_mean, _ = SCHEDULE.posterior(z_t, z0_hat, tt)
        ref = kl_divergence(Normal(q_mean, q_var.sqrt()), Normal(p_mean, q_var.sqrt()))
        ref = ref.flatten(1).sum(-1)
    torch.testing.assert_close(term, ref)
    assert (cross_entropy >= 0).all()


def test_local_log_likelihood_is_the_exact_posterior_over_codes(float64):
    """softmax_k of the local term = the posterior over codes under q(z^t | k) and a uniform prior,
    computed with torch.distributions.Normal (codes of unequal norms, z* != 0, fractional t)."""
    codes = torch.randn(5, 3)
    z_t = torch.randn(4, 3, 2)
    for t in (torch.tensor([1, 2, 3, 4]), torch.tensor([0.5, 1.5, 2.2, 3.9])):
        abar = SCHEDULE.abar_at(t, z_t)  # (4, 1, 1)
        loc = SCHEDULE.z_star + abar.sqrt()[..., None] * (codes.T[None, :, None, :] - 0.3)
        sd = (SCHEDULE.sigma2 * (1 - abar)).sqrt()[..., None]
        log_n = Normal(loc, sd).log_prob(z_t[..., None]).sum(1)  # (4, 2, K)
        ours = local_log_likelihood(SCHEDULE, z_t, t, codes)
        torch.testing.assert_close(ours.log_softmax(-1), log_n.log_softmax(-1))


def test_readout_is_one_hot_on_clean_codes():
    """With h = 0 the read-out at t = 1 of a z^1 drawn from q(z^1 | k) puts > 1 - 1e-6 on k
    (image schedule, 128 codes on the radius-2 sphere in d = 16, float32)."""
    torch.manual_seed(0)
    codebook = Codebook(128, 16, radius=2.0)
    head = CodeHead(image_schedule(), ConstantCorrection(torch.zeros(128)), codebook, False)
    k = torch.randint(0, 128, (64, 6))
    t = torch.ones(64, dtype=torch.long)
    e_k = gather_codes(k, codebook())
    mean, var = head.schedule.marginal(e_k, t)
    with torch.no_grad():
        probs = head.logits(mean + var.sqrt() * torch.randn_like(e_k), t).softmax(-1)
    assert float(probs.gather(-1, k[..., None]).min()) > 1 - 1e-6


def test_context_free_head_gives_the_cross_entropy(float64):
    """h = log(pi_hat) (a context-free prior over codes): the bound on log p(k) is log pi_hat_k
    up to the discretisation of the chain, so E_{k ~ pi}[-bound] = H(pi, pi_hat) within 0.05 bits
    per cell (16 codes, d = 8, radius 2, the image schedule; every code scored exactly in
    expectation over pi, 100 strata per item)."""
    torch.manual_seed(1)
    K = 16
    codebook = Codebook(K, 8, radius=2.0).double()
    pi = torch.distributions.Dirichlet(torch.ones(K)).sample()
    pi_hat = torch.distributions.Dirichlet(torch.ones(K)).sample()
    head = CodeHead(image_schedule(), ConstantCorrection(pi_hat.log()), codebook, False)
    items = 200
    k = torch.arange(K).repeat_interleave(items)[:, None]  # (K * items, 1 cell)
    prior = BridgeCodePrior(head, k.shape[0], (8, 1), strata=100)
    with torch.no_grad():
        bound = prior.log_prob(gather_codes(k, codebook())).view(K, items).mean(1)
    bits = -(pi * bound).sum() / math.log(2)
    cross_entropy = -(pi * pi_hat.log2()).sum()
    assert abs(float(bits - cross_entropy)) < 0.05, (float(bits), float(cross_entropy))


def test_stratified_steps_cover_the_chain_once():
    """t = 1 with weight 1, then one t in each stratum of 2..T; the weights sum to T and every t
    in 2..T falls in exactly one stratum."""
    t, w = stratified_steps(1000, 100, 64)
    assert t.shape == (64, 101) and (t[:, 0] == 1).all() and (w[:, 0] == 1).all()
    assert float(w[0].sum()) == 1000
    edges = torch.cat([torch.tensor([2]), 2 + w[0, 1:].long().cumsum(0)])
    assert ((t[:, 1:] >= edges[:-1]) & (t[:, 1:] < edges[1:])).all()
    every, weight = stratified_steps(10, 50, 4)  # more strata than steps: each step once
    assert (every == torch.arange(1, 11)).all() and (weight == 1).all()
    with pytest.raises(ValueError, match="strata"):
        stratified_steps(10, 0, 4)


def test_step_cost_tracker_proposes_sqrt_second_moments():
    """Uniform until every t is seen; then (1 - floor) sqrt(m_t) / sum sqrt(m) + floor / T with m
    the moving average of squared terms (first value taken as is); state in the state dict."""
    tracker = StepCostTracker(4, decay=0.5, floor=0.2)
    tracker.update(torch.tensor([1, 2, 2]), torch.tensor([1.0, 2.0, 4.0]))
    torch.testing.assert_close(tracker.proposal(), torch.full((4,), 0.25, dtype=torch.float64))
    tracker.update(torch.tensor([3, 4, 1]), torch.tensor([3.0, 1.0, 3.0]))
    m = torch.tensor([0.5 * 1 + 0.5 * 9, 10.0, 9.0, 1.0], dtype=torch.float64)
    want = 0.8 * m.sqrt() / m.sqrt().sum() + 0.05
    torch.testing.assert_close(tracker.proposal(), want)
    copy = StepCostTracker(4, decay=0.5, floor=0.2)
    copy.load_state_dict(tracker.state_dict())
    torch.testing.assert_close(copy.proposal(), want)


def test_step_cost_tracker_stays_uniform_while_every_term_is_zero():
    """A short chain can read every code exactly, so every step term is 0: the proposal stays
    the uniform law (it was 0 / 0 = NaN, and training stopped in torch.multinomial), then
    follows the terms once one is not 0."""
    tracker = StepCostTracker(3, decay=0.5, floor=0.2)
    tracker.update(torch.tensor([1, 2, 3]), torch.zeros(3))
    uniform = torch.full((3,), 1 / 3, dtype=torch.float64)
    torch.testing.assert_close(tracker.proposal(), uniform)
    tracker.update(torch.tensor([2]), torch.tensor([2.0]))  # m = (0, 2, 0)
    want = torch.tensor([0.2 / 3, 0.8 + 0.2 / 3, 0.2 / 3], dtype=torch.float64)
    torch.testing.assert_close(tracker.proposal(), want)


def test_auxiliary_cross_entropy_moves_the_gradient_not_the_value(float64):
    """aux_weight a: the same value; the gradient is the bound's plus a times that of the head's
    cross-entropy at the drawn steps."""
    codebook = Codebook(4, 2, radius=1.0).double()
    head = _head(SCHEDULE, codebook, self_condition=False)
    value = gather_codes(torch.randint(0, 4, (6, 3)), codebook()).detach()
    params = list(head.network.parameters())
    results = {}
    for a in (0.0, 0.7):
        torch.manual_seed(5)
        lp = BridgeCodePrior(head, 6, (2, 3), aux_weight=a).log_prob(value)
        results[a] = (lp.detach(), torch.autograd.grad(lp.sum(), params))
    torch.manual_seed(5)
    prior = BridgeCodePrior(head, 6, (2, 3))
    t, _ = prior._draw_steps(6, value.device)
    ce = prior.step_terms(prior.indices(value), t.flatten())[1]
    ce_grad = torch.autograd.grad(ce.sum(), params)
    torch.testing.assert_close(results[0.0][0], results[0.7][0])
    for g0, g1, gc in zip(results[0.0][1], results[0.7][1], ce_grad, strict=True):
        torch.testing.assert_close(g1, g0 - 0.7 * gc)


def test_code_head_eps_round_trips_to_z0_hat(float64):
    """The eps the head returns gives back its z0_hat through predict_z0, at integer and
    fractional t alike (so every sampler runs on it)."""
    codebook = Codebook(4, 2, radius=1.0).double()
    head = _head(SCHEDULE, codebook)
    z_t = torch.randn(4, 2, 3)
    for t in (torch.tensor([1, 2, 3, 4]), torch.tensor([0.5, 1.5, 2.5, 3.9])):
        back = SCHEDULE.predict_z0(z_t, head(z_t, t), t)
        torch.testing.assert_close(back, head.z0_hat(z_t, t))
    integer = torch.tensor([1, 2, 3, 4])
    torch.testing.assert_close(head(z_t, integer.double()), head(z_t, integer))


def _markov_codes(n: int, cells: int, generator: torch.Generator) -> torch.Tensor:
    """Walks on 8 codes: a uniform first code, then +-1 (mod 8) with probability 1/2 each."""
    first = torch.randint(0, 8, (n, 1), generator=generator)
    steps = 2 * torch.randint(0, 2, (n, cells - 1), generator=generator) - 1
    return torch.cat([first, first + steps.cumsum(1)], 1) % 8


@pytest.fixture(scope="module")
def markov_head() -> CodeHead:
    """The head of a prior trained alone on walks of 5 cells over 8 codes (a uniform first
    code, then +-1 mod 8): 1,500 Adam steps, random step, tracked importance sampling,
    self-conditioning, the cross-entropy auxiliary."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    cells, K, batch = 5, 8, 128
    schedule = image_schedule(100, 1e-3, 0.18)  # abar_T ~ 1e-4
    angles = torch.arange(K) * 2 * math.pi / K
    codebook = Codebook(K, 2, radius=1.0)
    codebook.weight.data = torch.stack([angles.cos(), angles.sin()], 1)
    codebook.requires_grad_(False)
    net = ResidualMLPDenoiser((4, cells), width=128, blocks=2, out_shape=(K, cells))
    head = CodeHead(schedule, net, codebook, self_condition=True)
    tracker = StepCostTracker(schedule.num_steps)
    optimiser = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(1500):
        k = _markov_codes(batch, cells, gen)
        prior = BridgeCodePrior(
            head, batch, (2, cells), proposal=tracker.proposal(), tracker=tracker, aux_weight=0.1
        )
        loss = -prior.log_prob(gather_codes(k, codebook())).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return head


def _markov_test_cells(head: CodeHead, strata: int = 50) -> torch.Tensor:
    """Per-cell shares of the bound, bits, ``(500, 5)``, on 500 fresh walks."""
    k = _markov_codes(500, 5, torch.Generator().manual_seed(1))
    prior = BridgeCodePrior(head, 500, (2, 5), strata=strata)
    with torch.no_grad():
        return -prior.cell_log_prob(gather_codes(k, head.codebook())) / math.log(2)


@pytest.mark.slow
def test_short_training_on_markov_codes_beats_the_unigram_entropy(markov_head):
    """Walks of 5 cells on 8 codes (entropy (3 + 4) / 5 = 1.4 bits per cell; the unigram entropy
    is 3): the held-out bound (50 strata) lies below 2.0 bits per cell, a margin of 1 bit under
    the unigram entropy (measured: 1.78)."""
    bits = float(_markov_test_cells(markov_head).sum(1).mean()) / 5
    assert bits < 2.0, bits


@pytest.mark.slow
def test_conditional_bound_of_a_middle_cell_is_below_the_per_cell_bound(markov_head):
    """The inpainting model's bound on the middle cell given the other four (its share of the
    bound) against the bound per cell of whole walks: the middle code's entropy given its
    neighbours is 0.5 bits (its neighbours two apart fix it; equal, it is one of two), that of
    a walk 1.4 bits per cell. The conditional bound lies at least 0.5 bits per cell below the
    per-cell bound, and above the exact conditional entropy of 0.5 bits."""
    cells = _markov_test_cells(markov_head)
    middle, per_cell = float(cells[:, 2].mean()), float(cells.sum(1).mean()) / 5
    assert 0.5 < middle < per_cell - 0.5, (middle, per_cell)
