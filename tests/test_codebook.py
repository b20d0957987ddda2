"""The discrete kernel, its exact KL, the code-vector distribution and usage diagnostics."""

import itertools
import math

import pytest
import torch
from torch.distributions import kl_divergence

from pbridge.code_distribution import CodeVector
from pbridge.codebook import (
    Codebook,
    EMACodebook,
    categorical_kl,
    code_indices,
    code_logits,
    code_usage,
    gather_codes,
    kmeans,
)


def _twin_codes(n=64, gap=2e-4):
    """n unit codes at random angles, each followed by a twin ``gap`` radians away (float32)."""
    angle = torch.rand(n, generator=torch.Generator().manual_seed(0)) * 2 * math.pi
    angle = torch.stack([angle, angle + gap], 1).flatten()
    return torch.stack([angle.cos(), angle.sin()], 1)  # (2n, 2)


def test_code_indices_read_back_twin_codes_and_a_point_mass_scores_zero():
    """Codes 2e-4 apart (as training made them in a toy run that then stopped on -inf): the
    matrix-product distance confuses some twins in float32, code_indices reads every code back
    as itself, and the guide's point mass on a code has log-probability 0, not -inf."""
    codes = _twin_codes()
    k = torch.arange(len(codes)).view(1, -1)  # (1, cells = K)
    value = gather_codes(k, codes)  # (1, 2, K): every code once
    assert (code_logits(value, codes, 1.0).argmax(-1) != k).any()  # the case is real
    assert torch.equal(code_indices(value, codes), k)
    assert torch.equal(code_indices(value.double(), codes.double()), k)
    f = value + 1e-5 * torch.randn(value.shape, generator=torch.Generator().manual_seed(1))
    point_mass = CodeVector(code_logits(f, codes, 0.0), codes)  # the tight guide's z_q_0 at f
    assert torch.equal(point_mass.log_prob(point_mass.sample()), torch.zeros(1))


def test_code_indices_is_the_nearest_code(float64):
    """Off the codes, the index of the nearest code by brute force (ties have probability 0)."""
    gen = torch.Generator().manual_seed(1)
    codes, z = torch.randn(16, 3, generator=gen), torch.randn(4, 3, 5, generator=gen)
    nearest = (z.movedim(1, -1).unsqueeze(-2) - codes).norm(dim=-1).argmin(-1)
    assert torch.equal(code_indices(z, codes), nearest)
    assert torch.equal(code_indices(z, codes[:1]), torch.zeros(4, 5, dtype=torch.long))


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


@pytest.mark.parametrize("temperature", [0.5, 2.0], ids=["cold", "warm"])
@pytest.mark.parametrize("gradient", ["straight_through", "gumbel"], ids=["st", "gumbel"])
def test_hard_draws_follow_the_softmax_of_the_logits(gradient, temperature, float64):
    """Whatever the gradient path and its relaxation temperature, the forward value is a code
    drawn from softmax(logits): frequencies over 20,000 cells within 5 binomial s.e."""
    cells = 20_000
    logits = torch.tensor([2.0, 1.0, 0.0]).expand(1, cells, 3)
    codes = torch.eye(3)
    z = CodeVector(logits, codes, gradient=gradient, temperature=temperature)
    freq = torch.bincount(z.indices(z.rsample()).flatten(), minlength=3) / cells
    p = logits[0, 0].softmax(-1)  # [0.665, 0.245, 0.090]
    se = (p * (1 - p) / cells).sqrt()
    assert torch.all((freq - p).abs() < 5 * se), (freq, p)


def test_code_usage_perplexity():
    uniform = code_usage(torch.arange(8).repeat(10), 8)
    assert uniform.codes_used == 8 and math.isclose(uniform.perplexity, 8.0, rel_tol=1e-9)
    single = code_usage(torch.full((50,), 3), 8)
    assert single.codes_used == 1 and math.isclose(single.perplexity, 1.0)
    two = code_usage(torch.tensor([0, 0, 0, 1]), 8)
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert math.isclose(two.perplexity, math.exp(h), rel_tol=1e-9)


def test_kmeans_plus_plus_seeds_follow_the_squared_distance_law(float64):
    """Seeding (no Lloyd step) of K = 3 centres among 4 points: the first is uniform, each next
    one is drawn with probability proportional to its squared distance to the NEAREST centre
    so far. Frequencies of the 24 ordered triples over 4,000 seedings within 5 binomial s.e.;
    a repeated point has probability ~1e-12."""
    points = torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [3.0, 2.0]])
    sq = torch.cdist(points, points).pow(2)
    exact = torch.zeros(4, 4, 4)
    for i, j, k in itertools.permutations(range(4), 3):
        nearest = torch.minimum(sq[i], sq[j])
        exact[i, j, k] = 0.25 * sq[i, j] / sq[i].sum() * nearest[k] / nearest.sum()
    draws, g = 4000, torch.Generator().manual_seed(0)
    counts = torch.zeros(4, 4, 4)
    for _ in range(draws):
        seeds = kmeans(points, 3, iters=0, generator=g)
        counts[tuple(torch.cdist(seeds, points).argmin(-1))] += 1
    freq, se = counts / draws, (exact * (1 - exact) / draws).sqrt()
    excess = ((freq - exact).abs() - 5 * se).max()
    assert excess <= 0, f"a triple's frequency is {float(excess):.4f} beyond 5 s.e."


def test_kmeans_seeds_every_point_once_when_there_are_k_points(float64):
    """N = K distinct points: every seeding (100 seeds) picks each point exactly once."""
    points = torch.randn(8, 3, generator=torch.Generator().manual_seed(0))
    for seed in range(100):
        seeds = kmeans(points, 8, iters=0, generator=torch.Generator().manual_seed(seed))
        picked = torch.cdist(seeds, points).argmin(-1)
        assert sorted(picked.tolist()) == list(range(8)), (seed, picked)


def test_kmeans_rarely_misses_a_separated_cluster(float64):
    """4 separated clusters, K = 4, 20 Lloyd iterations, 200 seeds: every centre lands within
    0.1 of a distinct cluster's centre in all but at most 4% of seeds (the correct seeding
    misses in ~1%; picking seeds by distance to the farthest centre misses in ~30%)."""
    centres = torch.tensor([[5.0, 0.0], [0.0, 5.0], [-5.0, 0.0], [0.0, -5.0]])
    misses = 0
    for seed in range(200):
        g = torch.Generator().manual_seed(seed)
        points = centres.repeat(100, 1) + 0.1 * torch.randn(400, 2, generator=g)
        dist = torch.cdist(kmeans(points, 4, generator=g), centres)
        close = bool(torch.all(dist.min(-1).values < 0.1))
        misses += not (close and dist.argmin(-1).unique().numel() == 4)
    assert misses <= 8, misses


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
    book.restart_dead(f)  # usage of code 2: 0.5 * 8/3 = 1.33, alive
    assert float(book.weight[2, 0].detach()) > 49.9
    book.restart_dead(f)  # 0.67: alive
    assert float(book.weight[2, 0].detach()) > 49.9
    book.restart_dead(f)  # 0.33 < 0.5: restarted onto one of the encodings
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
