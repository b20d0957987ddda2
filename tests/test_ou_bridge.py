"""The OU bridge's closed forms against independent computations (docs/maths.md, section 1)."""

import math

import pytest
import torch

from pbridge.ou_bridge import OUSchedule, image_schedule, toy_schedule

SCHEDULES = {
    "toy_zstar": OUSchedule(
        theta=2.0, eta2=0.01, z_star=0.7, deltas=torch.full((100,), 0.015, dtype=torch.float64)
    ),
    "image": image_schedule(),
}


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_marginal_matches_torchsde_simulation(name, float64):
    """Mean and variance of q(z^t | z^0) vs Euler-Maruyama paths of the same SDE (torchsde).

    Tolerance: 5 Monte Carlo standard errors plus twice the Euler scheme's own bias, which for
    this linear SDE is known exactly: mean factor (1 - theta h)^k instead of exp(-theta k h),
    variance v_k = sum_j (1 - theta h)^(2j) eta^2 h instead of sigma2 (1 - exp(-2 theta k h)).
    """
    schedule = SCHEDULES[name]
    n, num_dt = 10000, 400
    z0 = torch.tensor([[-1.0, 0.5, 2.0]]).expand(n, 3).contiguous()
    check = [schedule.num_steps // 10, schedule.num_steps // 2, schedule.num_steps]
    h = float(schedule.times[-1]) / num_dt
    torch.manual_seed(1)
    paths = schedule.sde().simulate(z0, schedule.times[[0] + check], dt=h)
    for i, step in enumerate(check):
        mean, var = schedule.marginal(z0[:1], torch.tensor([step]))
        mean, var = mean[0], var.squeeze()
        s = float(schedule.times[step])
        k = s / h
        euler_mean_bias = abs((1 - schedule.theta * h) ** k - math.exp(-schedule.theta * s))
        r2 = (1 - schedule.theta * h) ** 2
        euler_var = schedule.eta2 * h * (1 - r2**k) / (1 - r2)
        euler_var_bias = abs(euler_var - float(var))
        sim = paths[i + 1]
        se_mean = (var / n).sqrt()
        se_var = var * math.sqrt(2 / (n - 1))
        tol_mean = 5 * se_mean + 2 * euler_mean_bias * (z0[0] - schedule.z_star).abs()
        assert torch.all((sim.mean(0) - mean).abs() <= tol_mean), step
        assert torch.all((sim.var(0) - var).abs() <= 5 * se_var + 2 * euler_var_bias), step


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_transitions_compose_to_marginal(name, float64):
    """Sampling q(z^t | z^{t-1}) step by step gives the closed form q(z^t | z^0)."""
    schedule = SCHEDULES[name]
    n = 20000
    torch.manual_seed(2)
    z0 = torch.full((n, 2), 1.5)
    z = z0
    T = schedule.num_steps
    for step in range(1, T + 1):
        mean, var = schedule.transition(z, torch.full((n,), step))
        z = mean + var.sqrt() * torch.randn_like(z)
    mean, var = schedule.marginal(z0[:1], torch.tensor([T]))
    assert torch.allclose(z.mean(0), mean[0], atol=5 * float(var.sqrt()) / math.sqrt(n))
    assert torch.allclose(z.var(0), var[0].expand(2), rtol=5 * math.sqrt(2 / n))


@pytest.mark.parametrize("name", list(SCHEDULES))
@pytest.mark.parametrize("frac", [0.0, 0.3, 1.0], ids=["t=1", "t=0.3T", "t=T"])
def test_posterior_matches_bayes_rule_on_a_grid(name, frac, float64):
    """q(z^{t-1} | z^t, z^0) ∝ q(z^{t-1} | z^0) q(z^t | z^{t-1}), normalised numerically."""
    schedule = SCHEDULES[name]
    t = max(1, round(frac * schedule.num_steps))
    z0, z_t = torch.tensor([[0.9]]), torch.tensor([[-0.4]])
    tt = torch.tensor([t])
    mean, var = schedule.posterior(z_t, z0, tt)
    if t == 1:  # q(z^0 | z^1, z^0) is the point mass at z^0
        assert torch.allclose(mean, z0) and float(var) == 0.0
        return
    prev_mean, prev_var = schedule.marginal(z0, tt - 1)
    sd = float(var.sqrt())
    grid = torch.linspace(float(mean) - 12 * sd, float(mean) + 12 * sd, 200001)
    log_prior = torch.distributions.Normal(prev_mean.squeeze(), prev_var.sqrt().squeeze())
    log_w = log_prior.log_prob(grid)
    step_mean, step_var = schedule.transition(grid[:, None], tt.expand(grid.numel()))
    log_w = log_w + torch.distributions.Normal(step_mean[:, 0], step_var.sqrt()[:, 0]).log_prob(
        z_t.squeeze()
    )
    w = (log_w - log_w.max()).exp()
    w = w / w.sum()
    num_mean = (w * grid).sum()
    num_var = (w * (grid - num_mean) ** 2).sum()
    assert torch.allclose(num_mean, mean.squeeze(), rtol=1e-6, atol=1e-8 + 1e-6 * sd)
    assert torch.allclose(num_var, var.squeeze(), rtol=1e-5)


def test_prior_kl_matches_torch(float64):
    schedule = SCHEDULES["toy_zstar"]
    z0 = torch.randn(5, 2, 3)
    mean, var = schedule.marginal(z0, torch.full((5,), schedule.num_steps))
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean, var.sqrt()),
        torch.distributions.Normal(schedule.z_star, math.sqrt(schedule.sigma2)),
    )
    assert torch.allclose(schedule.prior_kl(z0), ref.flatten(1).sum(-1))


def test_image_preset_is_ddpm():
    """theta = 1, eta^2 = 2, z* = 0 with delta_t = -log(1 - beta_t)/2 gives alpha_t = 1 - beta_t."""
    s = image_schedule()
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    assert s.sigma2 == 1.0
    assert torch.allclose(s.beta[1:], betas)
    assert torch.allclose(s.abar[1:], torch.cumprod(1 - betas, 0))


def test_toy_preset_signal_to_noise():
    """The paper's toy preset ends with sqrt(abar_T) = exp(-3) (about 0.05 against sigma = 0.05)."""
    s = toy_schedule()
    assert s.num_steps == 100 and math.isclose(s.sigma2, 0.0025)
    assert math.isclose(float(s.abar[-1].sqrt()), math.exp(-3.0), rel_tol=1e-12)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(theta=0.0), "theta"),
        (dict(eta2=-1.0), "eta2"),
        (dict(deltas=torch.tensor([0.1, -0.1])), "deltas"),
        (dict(deltas=torch.zeros(0)), "deltas"),
    ],
    ids=["theta", "eta2", "negative-delta", "empty"],
)
def test_bad_schedule_names_the_value(kwargs, match):
    base = dict(theta=1.0, eta2=1.0, z_star=0.0, deltas=torch.ones(3))
    with pytest.raises(ValueError, match=match):
        OUSchedule(**{**base, **kwargs})


def test_bad_time_index_is_reported():
    s = toy_schedule()
    with pytest.raises(ValueError, match=r"\[1, 100\]"):
        s.transition(torch.zeros(2, 2), torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="integer"):
        s.marginal(torch.zeros(2, 2), torch.tensor([1.0, 2.0]))


def test_abar_at_fractional_times_interpolates_the_ou_time(float64):
    """Integer indices give the table; a fractional index gives exp(-2 theta s) at the OU time
    interpolated between its neighbours (what the continuous samplers pass)."""
    schedule = image_schedule(50)
    like = torch.zeros(3, 2)
    t = torch.tensor([1, 17, 50])
    torch.testing.assert_close(schedule.abar_at(t.double(), like)[:, 0], schedule.abar[t])
    half = torch.tensor([16.5])
    s = 0.5 * (schedule.times[16] + schedule.times[17])
    expected = torch.exp(-2.0 * schedule.theta * s)
    torch.testing.assert_close(schedule.abar_at(half, like[:1])[:, 0], expected.reshape(1))
    with pytest.raises(ValueError, match="time indices"):
        schedule.abar_at(torch.tensor([50.5]), like[:1])


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_eps_from_z0_is_the_standardised_marginal_draw(name, float64):
    """eps_from_z0(z^t, z^0, t) = (z^t - mean) / sd of q(z^t | z^0) at integer t, and at
    fractional t with abar = exp(-2 theta s); predict_z0 inverts it (sigma2 = 0.0025, z* = 0.7
    in the toy schedule: a dropped sigma2 shows)."""
    schedule = SCHEDULES[name]
    torch.manual_seed(3)
    z0, z_t = torch.randn(4, 2, 3), torch.randn(4, 2, 3)
    t = torch.tensor([1, 7, schedule.num_steps // 2, schedule.num_steps])
    mean, var = schedule.marginal(z0, t)
    eps = schedule.eps_from_z0(z_t, z0, t)
    torch.testing.assert_close(eps, (z_t - mean) / var.sqrt())
    torch.testing.assert_close(schedule.predict_z0(z_t, eps, t), z0)
    frac = t.double() - 0.5
    s = torch.tensor([float(schedule.times[i] + schedule.times[i - 1]) / 2 for i in t.tolist()])
    abar = torch.exp(-2 * schedule.theta * s).view(4, 1, 1)
    sd = (schedule.sigma2 * (1 - abar)).sqrt()
    want = (z_t - schedule.z_star - abar.sqrt() * (z0 - schedule.z_star)) / sd
    torch.testing.assert_close(schedule.eps_from_z0(z_t, z0, frac), want)
