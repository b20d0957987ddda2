"""Ancestral sampling (Algorithm 2) with the exact denoiser of a Gaussian data distribution."""

import math

import pytest
import torch
from torch import nn

from pbridge.bridge_prior import BallProjectedDenoiser, DiffusionPrior, ancestral_sample
from pbridge.ou_bridge import OUSchedule, image_schedule


class GaussianOracle(nn.Module):
    """E[eps | z^t] when z^0 ~ N(m, v I): the best possible eps_theta, in closed form.

    z^t ~ N(mu_t, s_t) with mu_t = z* + sqrt(abar_t)(m - z*), s_t = abar_t v + sigma2 (1 - abar_t),
    and E[eps | z^t] = sqrt(sigma2 (1 - abar_t)) (z^t - mu_t) / s_t.
    """

    def __init__(self, schedule: OUSchedule, m: float, v: float, shift: int = 0) -> None:
        super().__init__()
        self.schedule, self.m, self.v, self.shift = schedule, m, v, shift
        self.dummy = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s = self.schedule
        abar = s.abar[(t + self.shift).clamp(0, s.num_steps)].to(z_t)
        abar = abar.view(-1, *([1] * (z_t.dim() - 1)))
        mu = s.z_star + abar.sqrt() * (self.m - s.z_star)
        var = abar * self.v + s.sigma2 * (1 - abar)
        return (s.sigma2 * (1 - abar)).sqrt() * (z_t - mu) / var


SCHEDULES = {
    "image": image_schedule(),
    "ou_zstar": OUSchedule(
        theta=1.5, eta2=0.5, z_star=-0.4, deltas=torch.full((400,), 0.005, dtype=torch.float64)
    ),
}


def _moments(schedule, denoiser, n=10000, variance="beta_tilde"):
    torch.manual_seed(0)
    prior = DiffusionPrior(schedule, denoiser, (2, 3), n, model_variance=variance)
    z0 = prior.sample()
    return float(z0.mean()), float(z0.var()), z0.numel()


def exact_chain_law(schedule: OUSchedule, m: float, v: float, variance: str):
    """Mean and variance of z^0 under the ancestral chain with the oracle, by a scalar recursion.

    Every step is affine in z^t plus Gaussian noise, z^{t-1} = A_t z^t + B_t + N(0, sigma2 v_t),
    so the law stays Gaussian: M <- A M + B, V <- A^2 V + sigma2 v_t, from N(z*, sigma2).
    Written with plain floats from the paper's formulas (independent of the tensor code).
    """
    zs, s2, T = schedule.z_star, schedule.sigma2, schedule.num_steps
    alpha = [float(a) for a in schedule.alpha]
    abar = [1.0]
    for t in range(1, T + 1):
        abar.append(abar[-1] * alpha[t])

    def mean_map(z: float, t: int) -> float:
        a, a_prev, beta = abar[t], abar[t - 1], 1.0 - alpha[t]
        c = math.sqrt(s2 * (1 - a))
        mu_t = zs + math.sqrt(a) * (m - zs)
        eps = c * (z - mu_t) / (a * v + s2 * (1 - a))
        z0_hat = zs + (z - zs - c * eps) / math.sqrt(a)
        c0 = math.sqrt(a_prev) * beta / (1 - a)
        ct = math.sqrt(alpha[t]) * (1 - a_prev) / (1 - a)
        return zs + c0 * (z0_hat - zs) + ct * (z - zs)

    M, V = zs, s2
    for t in range(T, 0, -1):
        beta = 1.0 - alpha[t]
        var_t = beta if (variance == "beta" or t == 1) else beta * (1 - abar[t - 1]) / (1 - abar[t])
        B = mean_map(0.0, t)
        A = mean_map(1.0, t) - B
        M, V = A * M + B, A * A * V + s2 * var_t
    return M, V


@pytest.mark.parametrize("name", list(SCHEDULES))
@pytest.mark.parametrize("variance", ["beta_tilde", "beta"])
def test_ancestral_sampler_matches_the_exact_chain_law(name, variance, float64):
    """Samples of Algorithm 2 with the oracle vs the chain's exact Gaussian law (5 s.e.)."""
    schedule = SCHEDULES[name]
    m, v = 1.3, 0.09
    mean, var, n = _moments(schedule, GaussianOracle(schedule, m, v), variance=variance)
    M, V = exact_chain_law(schedule, m, v, variance)
    assert abs(mean - M) < 5 * math.sqrt(V / n)
    assert abs(var / V - 1) < 5 * math.sqrt(2 / n)


@pytest.mark.parametrize("variance", ["beta_tilde", "beta"])
def test_image_chain_with_the_oracle_recovers_the_data_law(variance):
    """At T = 1000 (image preset) the chain's law is within 3% of the data's N(m, v)."""
    m, v = 1.3, 0.09
    M, V = exact_chain_law(SCHEDULES["image"], m, v, variance)
    assert abs(M - m) < 0.01 and abs(V / v - 1) < 0.03


def test_an_off_by_one_time_index_is_detected(float64):
    """The exact-law test can fail: a denoiser queried one step late gives another law."""
    schedule = SCHEDULES["ou_zstar"]
    m, v = 1.3, 0.09
    mean, var, n = _moments(schedule, GaussianOracle(schedule, m, v, shift=1))
    M, V = exact_chain_law(schedule, m, v, "beta_tilde")
    assert abs(mean - M) > 5 * math.sqrt(V / n) or abs(var / V - 1) > 5 * math.sqrt(2 / n)


def test_kept_states_are_the_chain(float64):
    """States returned by ``keep`` are those of the chain: z^T is the start, z^0 the result."""
    schedule = SCHEDULES["ou_zstar"]
    z_T = torch.randn(4, 2, 3)
    z0, kept = ancestral_sample(schedule, GaussianOracle(schedule, 0.0, 1.0), z_T, keep=(0, 400))
    assert torch.equal(kept[400], z_T) and torch.equal(kept[0], z0)


class ScaledDenoiser(nn.Module):
    """A biased eps_theta: the oracle's guess times ``factor``."""

    def __init__(self, oracle: nn.Module, factor: float) -> None:
        super().__init__()
        self.oracle, self.factor = oracle, factor

    def forward(self, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.factor * self.oracle(z_t, t)


def test_ball_projection_is_the_nearest_point_of_the_ball(float64):
    """Inside the ball eps' = eps_theta; outside, z0_hat' is the ball's nearest point to z0_hat
    (checked against 20,000 random points of the ball)."""
    schedule = SCHEDULES["ou_zstar"]
    oracle = ScaledDenoiser(GaussianOracle(schedule, 0.0, 1.0), 0.5)
    radius = 1.0
    projected = BallProjectedDenoiser(schedule, oracle, radius)
    z_t = 2.0 * torch.randn(64, 3, 5)
    t = torch.randint(1, schedule.num_steps + 1, (64,))
    z0_hat = schedule.predict_z0(z_t, oracle(z_t, t), t) - schedule.z_star
    z0_new = schedule.predict_z0(z_t, projected(z_t, t), t) - schedule.z_star
    inside = z0_hat.norm(dim=1) <= radius
    assert inside.any() and (~inside).any()
    torch.testing.assert_close(z0_new.movedim(1, -1)[inside], z0_hat.movedim(1, -1)[inside])
    assert (z0_new.norm(dim=1) <= radius + 1e-12).all()
    ball = torch.randn(20000, 3)
    ball = ball / ball.norm(dim=1, keepdim=True) * torch.rand(20000, 1) ** (1 / 3) * radius
    outside = z0_hat.movedim(1, -1)[~inside]
    best_random = torch.cdist(outside, ball).min(dim=1).values
    ours = (outside - z0_new.movedim(1, -1)[~inside]).norm(dim=1)
    assert (ours <= best_random + 1e-12).all()


def test_ball_projection_stops_the_drift_of_a_biased_denoiser(float64):
    """An eps_theta half too small sends the chain away from data of norm ~1 (mean norm > 1.8);
    projecting z0_hat onto the ball of radius 1.5 keeps z^0 within the ball plus the last
    step's noise, and leaves the exact denoiser's law unchanged."""
    schedule = image_schedule(200)
    oracle = GaussianOracle(schedule, 0.0, 1.0 / 8)
    biased = ScaledDenoiser(oracle, 0.5)
    z_T = torch.randn(500, 8, 2)
    torch.manual_seed(1)
    drifted, _ = ancestral_sample(schedule, biased, z_T)
    torch.manual_seed(1)
    held, _ = ancestral_sample(schedule, BallProjectedDenoiser(schedule, biased, 1.5), z_T)
    last_noise = math.sqrt(schedule.sigma2 * float(schedule.beta[1]) * 8)
    assert drifted.norm(dim=1).mean() > 1.8
    assert (held.norm(dim=1) <= 1.5 + 6 * last_noise).all()
    torch.manual_seed(1)
    exact, _ = ancestral_sample(schedule, oracle, z_T)
    torch.manual_seed(1)
    exact_held, _ = ancestral_sample(schedule, BallProjectedDenoiser(schedule, oracle, 1e6), z_T)
    torch.testing.assert_close(exact_held, exact)


def test_ball_projection_accepts_fractional_times(float64):
    """At an integer-valued float t the projected denoiser equals its integer-t value (the
    continuous samplers call it with fractional t)."""
    schedule = image_schedule(100)
    net = BallProjectedDenoiser(schedule, lambda z, t: 3.0 * torch.ones_like(z), 1.0)
    z = torch.randn(4, 3, 5)
    t = torch.tensor([1, 10, 50, 100])
    torch.testing.assert_close(net(z, t.double()), net(z, t))
