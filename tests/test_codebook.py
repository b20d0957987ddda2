"""The discrete kernel, its exact KL, the code-vector distribution and usage diagnostics."""

import math

import pytest
import torch
from torch.distributions import kl_divergence

from pbridge.code_distribution import CodeVector
from pbridge.codebook import (
    Codebook,
    EMACodebook,
    categorical_kl,
    code_logits,
    code_usage,
    kmeans,
)


def brute_force_logits(z_e, codes, tau):
    B, d, L = z_e.shape
    out = torch.empty(B, L, codes.shape[0])
    for b in range(B):
        for i in range(L):
            for k in range(codes.shape[0]):
                out[b, i, k] = -sum((z_e[b, j, i] - codes[k, j]) ** 2 for j in range(d)) / tau
    return out


def brute_force_kl(logits_q, logits_p):
    q, p = logits_q.softmax(-1), logits_p.softmax(-1)
    total = torch.zeros(logits_q.shape[:-1])
    for k in range(logits_q.shape[-1]):
        term = q[..., k] * (q[..., k].log() - p[..., k].log())
        total += torch.where(q[..., k] > 0, term, torch.zeros_like(term))
    return total


def test_code_logits_match_brute_force(float64):
    z_e, codes = torch.randn(3, 4, 5), torch.randn(6, 4)
    assert torch.allclose(code_logits(z_e, codes, 0.3), brute_force_logits(z_e, codes, 0.3))


def test_zero_temperature_is_the_nearest_code(float64):
    z_e, codes = torch.randn(3, 4, 5), torch.randn(6, 4)
    logits = code_logits(z_e, codes, 0.0)
    nearest = brute_force_logits(z_e, codes, 1.0).argmax(-1)
    assert torch.equal(logits.argmax(-1), nearest)
    assert torch.equal(logits.softmax(-1), torch.nn.functional.one_hot(nearest, 6).double())


@pytest.mark.parametrize("tau_q", [0.0, 0.2, 2.0], ids=["point-mass", "sharp", "flat"])
def test_categorical_kl_matches_brute_force(tau_q, float64):
    z_e, codes = torch.randn(4, 3, 7), torch.randn(5, 3)
    lq, lp = code_logits(z_e, codes, tau_q), code_logits(z_e, codes, 0.5)
    kl = categorical_kl(lq, lp)
    assert torch.allclose(kl, brute_force_kl(lq, lp))
    assert torch.all(kl >= 0)


def test_registered_kl_and_log_prob(float64):
    z_e, codes = torch.randn(4, 3, 7), torch.randn(5, 3)
    q = CodeVector(code_logits(z_e, codes, 0.3), codes)
    p = CodeVector(code_logits(z_e, codes, 0.9), codes)
    kl = kl_divergence(q, p)
    assert kl.shape == (4,)
    assert torch.allclose(kl, brute_force_kl(q.logits, p.logits).sum(-1))
    # the exact KL equals the expectation of log q - log p over draws (Monte Carlo, 8 s.e.)
    draws = torch.stack([q.log_prob(v) - p.log_prob(v) for v in (q.sample() for _ in range(4000))])
    se = draws.std(0) / math.sqrt(draws.shape[0])
    assert torch.all((draws.mean(0) - kl).abs() < 8 * se + 1e-9)


def test_code_vector_log_prob_gathers_the_code_index(float64):
    codes = torch.randn(5, 3)
    logits = torch.randn(2, 4, 5)
    index = torch.tensor([[0, 4, 2, 2], [1, 1, 3, 0]])
    value = codes[index].movedim(-1, 1)
    ref = logits.log_softmax(-1).gather(-1, index[..., None]).squeeze(-1).sum(-1)
    assert torch.allclose(CodeVector(logits, codes).log_prob(value), ref)


def test_straight_through_passes_the_gradient_unchanged(float64):
    codes = torch.randn(5, 3, requires_grad=True)
    z = torch.randn(2, 3, 4, requires_grad=True)
    value = CodeVector(code_logits(z, codes, 0.0), codes, straight_through=z).rsample()
    nearest = code_logits(z, codes, 0.0).argmax(-1)
    assert torch.allclose(value, codes[nearest].movedim(-1, 1))
    weight = torch.randn_like(value)
    gz, gc = torch.autograd.grad((value * weight).sum(), (z, codes))
    assert torch.allclose(gz, weight)
    ref = torch.zeros(5, 3).index_add_(0, nearest.flatten(), weight.movedim(1, -1).reshape(-1, 3))
    assert torch.allclose(gc, ref)


def test_gumbel_path_is_hard_forward_and_relaxed_backward(float64):
    codes = torch.randn(5, 3)
    z = torch.randn(2, 3, 4, requires_grad=True)
    value = CodeVector(code_logits(z, codes, 0.5), codes, gradient="gumbel").rsample()
    index = CodeVector(code_logits(z, codes, 0.5), codes).indices(value)
    assert torch.allclose(value, codes[index].movedim(-1, 1))
    (grad,) = torch.autograd.grad(value.sum(), z)
    assert grad.abs().sum() > 0


def test_code_usage_perplexity():
    uniform = code_usage(torch.arange(8).repeat(10), 8)
    assert uniform.codes_used == 8 and math.isclose(uniform.perplexity, 8.0, rel_tol=1e-9)
    single = code_usage(torch.full((50,), 3), 8)
    assert single.codes_used == 1 and math.isclose(single.perplexity, 1.0)
    two = code_usage(torch.tensor([0, 0, 0, 1]), 8)
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert math.isclose(two.perplexity, math.exp(h), rel_tol=1e-9)


def test_kmeans_finds_separated_clusters(float64):
    centres = torch.tensor([[5.0, 0.0], [0.0, 5.0], [-5.0, 0.0], [0.0, -5.0]])
    g = torch.Generator().manual_seed(0)
    points = centres.repeat(100, 1) + 0.1 * torch.randn(400, 2, generator=g)
    found = kmeans(points, 4, generator=g)
    dist = torch.cdist(found, centres)
    assert torch.all(dist.min(-1).values < 0.1) and len(set(dist.argmin(-1).tolist())) == 4


def test_spherical_codebook_has_unit_norm_codes():
    codes = Codebook(8, 3, radius=2.0)()
    assert torch.allclose(codes.norm(dim=-1), torch.full((8,), 2.0))


def test_bad_shapes_are_reported():
    with pytest.raises(ValueError, match="d = 4"):
        code_logits(torch.zeros(2, 3, 5), torch.zeros(6, 4), 1.0)
    with pytest.raises(ValueError, match="tau"):
        code_logits(torch.zeros(2, 4, 5), torch.zeros(6, 4), -1.0)
    with pytest.raises(ValueError, match="gradient"):
        CodeVector(torch.zeros(2, 5, 6), torch.zeros(6, 4), gradient="reinforce")


def test_ema_codebook_update_matches_a_loop_over_cells(float64):
    """One update: N_k, m_k and e_k = m_k / N~_k (Laplace-smoothed) against a loop over cells."""
    book = EMACodebook(4, 3, radius=None, decay=0.9, eps=1e-3)
    start = book.weight.clone()
    f = torch.randn(5, 3, 6)
    book.update(f)
    size, total = torch.ones(4) * 0.9, start * 0.9
    for b in range(5):
        for i in range(6):
            point = f[b, :, i]
            k = int(((start - point) ** 2).sum(-1).argmin())
            size[k] += 0.1
            total[k] += 0.1 * point
    smoothed = (size + 1e-3) / (size.sum() + 4e-3) * size.sum()
    torch.testing.assert_close(book.cluster_size, size)
    torch.testing.assert_close(book.weight, total / smoothed[:, None])
    assert not any(p.requires_grad for p in book.parameters())


def test_ema_codebook_converges_to_cluster_means(float64):
    """Fed encodings from 3 separated clusters, EMA codes move to the cluster means."""
    centres = torch.tensor([[4.0, 0.0], [0.0, 4.0], [-4.0, -4.0]])
    book = EMACodebook(3, 2, radius=None, decay=0.8)
    book.weight.copy_(centres + 1.0)
    book.code_sum.copy_(book.weight)
    for _ in range(60):
        labels = torch.randint(3, (64,))
        book.update((centres[labels] + 0.1 * torch.randn(64, 2)).T.unsqueeze(0))
    torch.testing.assert_close(book.weight, centres, atol=0.05, rtol=0)


@pytest.mark.parametrize("kind", [Codebook, EMACodebook], ids=["gradient", "ema"])
def test_dead_codes_restart_onto_encodings(kind, float64):
    """A code no cell ever picks is moved onto an encoding of the batch once its usage average
    falls below the threshold; codes in use stay where they are (gradient codebook)."""
    book = kind(3, 2, radius=None, restart_below=0.5, decay=0.5)
    with torch.no_grad():
        book.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0], [50.0, 50.0]]))
    if kind is EMACodebook:
        book.code_sum.copy_(book.weight)
    f = torch.tensor([[1.0, 0.0], [-1.0, 0.0]]).repeat(4, 1).T.unsqueeze(0)  # (1, 2, 8)
    book.update(f)  # usage of code 2: 0.5 * 8/3 = 1.33, alive
    assert float(book.weight[2, 0].detach()) > 49.9
    book.update(f)  # 0.67: alive
    assert float(book.weight[2, 0].detach()) > 49.9
    book.update(f)  # 0.33 < 0.5: restarted onto one of the encodings
    moved = book.weight[2].detach()
    assert min(float((moved - p).norm()) for p in f[0].T) == 0.0
    torch.testing.assert_close(
        book.weight[:2].detach(), torch.tensor([[1.0, 0.0], [-1.0, 0.0]]), atol=1e-3, rtol=0
    )


def test_bad_codebook_options_are_reported():
    with pytest.raises(ValueError, match="restart_below"):
        Codebook(4, 2, restart_below=0.0)
    with pytest.raises(ValueError, match="decay"):
        EMACodebook(4, 2, decay=1.0)
