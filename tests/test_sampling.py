"""Ancestral sampling (Algorithm 2) with the exact denoiser of a Gaussian data distribution, and
the stationary draw z^T every chain starts from."""

import math

import pytest
import torch
from torch import nn

from pbridge import bridge_prior
from pbridge.bridge_prior import BridgeCodePrior, DiffusionPrior
from pbridge.code_head import CodeHead
from pbridge.codebook import Codebook
from pbridge.networks import ResidualMLPDenoiser
from pbridge.ou_bridge import OUSchedule, image_schedule, toy_schedule
from pbridge.samplers import reverse_sample


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


def test_recorded_states_are_the_chain(float64):
    """``record`` sees every state t = T-1 .. to_time of the chain; the last one is its result,
    and the chain stopped at t = 1 is the first T - 1 steps of the chain run to 0."""
    schedule = SCHEDULES["ou_zstar"]
    z_T = torch.randn(4, 2, 3)
    oracle = GaussianOracle(schedule, 0.0, 1.0)
    seen: dict[int, torch.Tensor] = {}
    gen = torch.Generator().manual_seed(3)
    z0 = reverse_sample(schedule, oracle, z_T, record=seen.__setitem__, generator=gen)
    assert sorted(seen) == list(range(schedule.num_steps)) and torch.equal(seen[0], z0)
    z1 = reverse_sample(schedule, oracle, z_T, to_time=1, generator=gen.manual_seed(3))
    assert torch.equal(z1, seen[1])


def _capture(store: list):
    """A stand-in for the sampler engine that keeps the z^T it is given."""

    def reverse_sample(schedule, denoiser, z_T, sampler, **options) -> torch.Tensor:
        store.append(z_T)
        return z_T

    return reverse_sample


@pytest.mark.parametrize("prior", ["paper", "tight"])
@pytest.mark.parametrize("name", ["toy", "ou_zstar"])
def test_prior_draws_start_from_the_stationary_law(name, prior, float64, monkeypatch):
    """The z^T that a prior's ``sample`` hands to its chain is N(z*, sigma2 I): the mean and
    standard deviation of 24,000 coordinates within 5 standard errors. On the toy preset
    (sigma2 = 0.0025) a draw with standard deviation sigma2 instead of sqrt(sigma2) is 20x too
    narrow and fails."""
    schedule = toy_schedule() if name == "toy" else SCHEDULES["ou_zstar"]
    n, store = 4000, []
    monkeypatch.setattr(bridge_prior, "reverse_sample", _capture(store))
    if prior == "paper":
        net = ResidualMLPDenoiser((2, 3), width=8, blocks=1)
        DiffusionPrior(schedule, net, (2, 3), n).sample()
    else:
        codebook = Codebook(4, 2, radius=1.0)
        net = ResidualMLPDenoiser((2, 3), width=8, blocks=1, out_shape=(4, 3))
        head = CodeHead(schedule, net, codebook, self_condition=False)
        BridgeCodePrior(head, n, (2, 3)).sample()
    z_T = store[0]
    sd, m = math.sqrt(schedule.sigma2), z_T.numel()
    assert abs(float(z_T.mean()) - schedule.z_star) < 5 * sd / math.sqrt(m)
    assert abs(float(z_T.std()) / sd - 1) < 5 * math.sqrt(0.5 / m)


def test_samples_pt_holds_each_field_of_the_draws_under_its_own_name(tmp_path, monkeypatch):
    """``write_prior_draws`` saves the drawn codes, the read-out's most probable codes and the
    decoder means as ``codes``, ``mode_codes`` and ``x``: three different tensors stay apart."""
    from pbridge.inference import sampling

    draws = sampling.Draws(
        z_e=None,
        codes=torch.tensor([[0, 1]]),
        mode_codes=torch.tensor([[2, 3]]),
        x_mean=torch.tensor([[0.5]]),
        x=torch.tensor([[9.0]]),
    )
    monkeypatch.setattr(sampling, "sample_prior", lambda *args: draws)
    _, result = sampling.write_prior_draws(nn.Linear(1, 1), tmp_path / "samples.pt", 1, None, None)
    saved = torch.load(tmp_path / "samples.pt", weights_only=True)
    assert saved.keys() == {"codes", "mode_codes", "x"} and result["num"] == 1
    assert saved["codes"].tolist() == [[0, 1]] and saved["mode_codes"].tolist() == [[2, 3]]
    assert saved["x"].tolist() == [[0.5]]  # the decoder mean, not the program's draw of x
