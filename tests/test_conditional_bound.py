"""The conditional bound of inpainting (docs/maths.md s. 7): the hidden cells' share of the tight
bound, against the cross-entropy of a context-free head and the joint bound it splits. (The
trained case, Markov walks, is in tests/test_tight_bound.py.)"""

import math

import torch
from test_tight_bound import ConstantCorrection

from pbridge.bridge_prior import BridgeCodePrior, readout_and_strata
from pbridge.code_head import CodeHead
from pbridge.codebook import Codebook, gather_codes
from pbridge.masked_patch import patch_bits
from pbridge.networks import ResidualMLPDenoiser
from pbridge.ou_bridge import OUSchedule, image_schedule

SCHEDULE = OUSchedule(
    theta=1.0, eta2=2.0, z_star=0.3, deltas=torch.tensor([0.1, 0.2, 0.15, 0.3], dtype=torch.float64)
)
"""sigma2 = eta2 / (2 theta) = 1 would hide a dropped 1 / sigma2: here it is 1, so the context
tests below also run on a schedule with sigma2 = 0.25 (:data:`NARROW`)."""
NARROW = OUSchedule(
    theta=2.0,
    eta2=1.0,
    z_star=-0.2,
    deltas=torch.tensor([0.1, 0.2, 0.15, 0.3], dtype=torch.float64),
)


def test_conditional_bound_of_a_context_free_head_is_the_cross_entropy(float64):
    """h = log(pi_hat): every cell's share is log pi_hat of its code up to the chain's
    discretisation, whatever its neighbour, so the hidden cell's conditional bound is
    H(pi, pi_hat) within 0.05 bits per cell (16 codes, d = 8, radius 2, the image schedule; a
    1 x 2 grid, the right cell hidden and scored with every code, the left one code 0; 800
    items per code, 200 strata: standard error about 0.01 bits, discretisation gap about 0.03).
    Shares taken from the wrong cell give -log2 pi_hat_0 instead."""
    torch.manual_seed(1)
    K, items = 16, 800
    codebook = Codebook(K, 8, radius=2.0).double()
    pi = torch.distributions.Dirichlet(torch.ones(K)).sample()
    pi_hat = torch.distributions.Dirichlet(torch.ones(K)).sample()
    head = CodeHead(image_schedule(), ConstantCorrection(pi_hat.log()), codebook, False)
    patch = torch.tensor([[False, True]])
    k = torch.zeros(K * items, 1, 2, dtype=torch.long)
    k[:, 0, 1] = torch.arange(K).repeat_interleave(items)
    prior = BridgeCodePrior(head, k.shape[0], (8, 1, 2), strata=200)
    with torch.no_grad():
        shares = prior.cell_log_prob(gather_codes(k, codebook()))
    bits = patch_bits(shares, patch).view(K, items).mean(1)
    conditional = float((pi * bits).sum())
    cross_entropy = float(-(pi * pi_hat.log2()).sum())
    assert abs(conditional - cross_entropy) < 0.05, (conditional, cross_entropy)
    assert abs(float(-pi_hat[0].log2()) - cross_entropy) > 0.4  # the visible cell differs


def _context_head(schedule: OUSchedule, codebook: Codebook, cells: int) -> CodeHead:
    """A head whose correction mixes every cell (a random residual MLP over the grid)."""
    torch.manual_seed(3)
    d, K = codebook.weight.shape[1], codebook.weight.shape[0]
    net = ResidualMLPDenoiser((2 * d, cells), width=16, blocks=1, out_shape=(K, cells))
    torch.nn.init.normal_(net.out[-1].weight, std=0.3)
    return CodeHead(schedule, net.double(), codebook, True)


def test_conditional_shares_add_up_to_the_joint_bound(float64):
    """The per-cell shares add up to the joint bound written out from the per-item step terms
    with the same draws (the stratified steps, then one eps per step): -L_T - sum_j w_j
    L_{t_j}; on schedules with sigma2 = 1 and 0.25, z* != 0, 3 strata. The hidden and visible
    cells' conditional bounds add up to it too."""
    for schedule in (SCHEDULE, NARROW):
        codebook = Codebook(4, 2, radius=1.0).double()
        head = _context_head(schedule, codebook, cells=5)
        k = torch.randint(0, 4, (6, 5))
        e_k = gather_codes(k, codebook()).detach()
        prior = BridgeCodePrior(head, 6, (2, 5), strata=3)
        torch.manual_seed(7)
        with torch.no_grad():
            shares = prior.cell_log_prob(e_k)
        torch.manual_seed(7)
        t, w = readout_and_strata(schedule.num_steps, 3, 6)
        k_n = k.repeat_interleave(t.shape[1], 0)
        eps = torch.randn_like(gather_codes(k_n, codebook()))  # the layout of e_k's draw
        with torch.no_grad():
            terms = prior.step_terms(gather_codes(k_n, codebook()), t.flatten(), eps)
        joint = -schedule.prior_kl(e_k) - (w * terms.view(6, -1)).sum(1)
        torch.testing.assert_close(shares.sum(1), joint)
        hidden = torch.tensor([False, True, True, False, False])
        split = shares[:, hidden].sum(1) + shares[:, ~hidden].sum(1)
        torch.testing.assert_close(split, joint)
        assert (shares[:, hidden].sum(1) - joint).abs().min() > 1e-3  # a share is not the whole


def test_conditional_step_terms_are_the_per_cell_gaussian_kls(float64):
    """At t >= 2 a cell's term is the KL between q(z^{t-1} | z^t, e_k) and p_theta(z^{t-1} |
    z^t) of that cell's d coordinates (docs/maths.md (12)), on a schedule with sigma2 = 0.25 and
    z* != 0: computed here with torch.distributions from the reverse kernel's mean and variance."""
    from torch.distributions import Normal, kl_divergence

    codebook = Codebook(4, 2, radius=1.0).double()
    head = _context_head(NARROW, codebook, cells=3)
    k = torch.randint(0, 4, (5, 3))
    prior = BridgeCodePrior(head, 5, (2, 3))
    e_k = gather_codes(k, codebook())
    for step in (2, 3, 4):
        t = torch.full((5,), step)
        mean, var = NARROW.marginal(e_k, t)
        eps = torch.randn_like(e_k)
        z_t = mean + var.sqrt() * eps
        with torch.no_grad():
            terms, _ = prior.cell_terms(k, t, eps)
            z0_hat = (head.logits(z_t, t).softmax(-1) @ codebook()).movedim(-1, 1)
        q_mean, q_var = NARROW.posterior(z_t, e_k, t)
        p_mean, _ = NARROW.posterior(z_t, z0_hat, t)
        kl = kl_divergence(Normal(q_mean, q_var.sqrt()), Normal(p_mean, q_var.sqrt()))
        torch.testing.assert_close(terms, kl.sum(1))
    assert math.isclose(float(NARROW.sigma2), 0.25)
