"""The learned backward chain p_theta(z_e^{0:T}) over the continuous latents (docs/maths.md, s. 3).

    z^T ~ N(z*, sigma2 I),   z^{t-1} | z^t ~ N(mu_theta(z^t, t), sigma2 v_t I),

with mu_theta = mu~_t(z^t, z0_hat) and z0_hat the z^0 implied by the denoiser's noise guess
eps_theta(z^t, t) (epsilon parametrisation). The denoiser is any module
``eps_theta(z_t: (B, d, *cells), t: (B,) int64 in 1..T) -> (B, d, *cells)``.
:class:`BallProjectedDenoiser` wraps one so that z0_hat stays in a ball around z*
(the latent analogue of DDPM's clipping of x0_hat, made part of the model).

Two ways to put the chain in a Pyro model:

- :func:`chain_model_sites` / :func:`chain_guide_sites`: every step a sample site (full chain);
- :class:`DiffusionPrior`: one site for z^0 whose ``log_prob`` is the random-step estimate of
  the chain's bound on log p_theta(z^0) (docs/maths.md eq. 9). Its ``sample`` is Algorithm 2.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import TorchDistribution
from torch import nn
from torch.distributions import constraints

from .ou_bridge import OUSchedule

_NO_SHAPE = torch.Size()

__all__ = [
    "DiffusionPrior",
    "BallProjectedDenoiser",
    "reverse_step",
    "chain_model_sites",
    "chain_guide_sites",
    "ancestral_sample",
    "importance_proposal",
]

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class BallProjectedDenoiser(nn.Module):
    """eps_theta with its implied z0_hat projected onto the ball of radius R around z*.

    Per latent cell (the norm runs over the channel dimension 1)::

        z0_hat = predict_z0(z^t, eps_theta(z^t, t), t)
        Pi(z0_hat) = z* + (z0_hat - z*) min(1, R / ||z0_hat - z*||)
        eps'(z^t, t) = (z^t - z* - sqrt(abar_t) (Pi(z0_hat) - z*)) / sqrt(sigma2 (1 - abar_t))

    so the reverse kernel built from eps' has mean mu~_t(z^t, Pi(z0_hat)). Where the codes
    lie in the ball, the projection only removes guesses no data z^0 can have; it stops the
    backward chain drifting away from the codes by an accumulation of small biases (docs/images.md).
    Used in training and in sampling alike, so the ELBO bounds the sampler that is run.

    Args:
        schedule: the OU bridge.  denoiser: eps_theta.  radius: R, a float or a 0-d tensor.
    """

    def __init__(
        self, schedule: OUSchedule, denoiser: Denoiser, radius: float | torch.Tensor
    ) -> None:
        super().__init__()
        if float(radius) <= 0:
            raise ValueError(f"radius must be > 0, got {float(radius)}")
        self.schedule, self.denoiser, self.radius = schedule, denoiser, radius

    def forward(self, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s = self.schedule
        abar = s.abar_at(t, z_t)  # t may be fractional (the continuous samplers)
        noise_sd = (s.sigma2 * (1.0 - abar)).sqrt()
        z0_hat = (z_t - s.z_star - noise_sd * self.denoiser(z_t, t)) / abar.sqrt()
        norm = z0_hat.norm(dim=1, keepdim=True).clamp_min(torch.finfo(z0_hat.dtype).tiny)
        projected = z0_hat * (self.radius / norm).clamp(max=1.0)
        return (z_t - s.z_star - abar.sqrt() * projected) / noise_sd


def _steps(t: int, like: torch.Tensor) -> torch.Tensor:
    return torch.full((like.shape[0],), t, dtype=torch.long, device=like.device)


def reverse_step(
    schedule: OUSchedule,
    denoiser: Denoiser,
    z_t: torch.Tensor,
    t: torch.Tensor,
    model_variance: str = "beta_tilde",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of p_theta(z^{t-1} | z^t) for ``z_t: (B, d, *cells)``, ``t: (B,)``."""
    z0_hat = schedule.predict_z0(z_t, denoiser(z_t, t), t)
    mean, _ = schedule.posterior(z_t, z0_hat, t)
    var = schedule.sigma2 * schedule.at(schedule.model_variance_table(model_variance), t, z_t)
    return mean, var


def chain_model_sites(
    schedule: OUSchedule,
    denoiser: Denoiser,
    event_shape: torch.Size,
    batch_size: int,
    model_variance: str = "beta_tilde",
    like: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sample sites ``z_e_T .. z_e_0`` of the backward chain; returns z^0 ``(B, *event_shape)``.

    Call inside the data plate. ``like`` fixes dtype and device.
    """
    like = torch.zeros(()) if like is None else like
    sd = math.sqrt(schedule.sigma2)
    loc = like.new_full((batch_size, *event_shape), schedule.z_star)
    n = len(event_shape)
    z = pyro.sample(f"z_e_{schedule.num_steps}", dist.Normal(loc, sd).to_event(n))
    for t in pyro.markov(range(schedule.num_steps, 0, -1)):
        mean, var = reverse_step(schedule, denoiser, z, _steps(t, z), model_variance)
        z = pyro.sample(f"z_e_{t - 1}", dist.Normal(mean, var.sqrt()).to_event(n))
    return z


def chain_guide_sites(schedule: OUSchedule, z0: torch.Tensor) -> torch.Tensor:
    """Sample sites ``z_e_1 .. z_e_T`` of the forward OU chain from z^0; returns z^T."""
    z = z0
    n = z0.dim() - 1
    for t in pyro.markov(range(1, schedule.num_steps + 1)):
        mean, var = schedule.transition(z, _steps(t, z))
        z = pyro.sample(f"z_e_{t}", dist.Normal(mean, var.sqrt()).to_event(n))
    return z


@torch.no_grad()
def ancestral_sample(
    schedule: OUSchedule,
    denoiser: Denoiser,
    z_T: torch.Tensor,
    model_variance: str = "beta_tilde",
    keep: tuple[int, ...] = (),
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Algorithm 2: z^T -> z^{T-1} -> ... -> z^0, the denoiser called with the true t each step.

    Args:
        z_T: ``(B, d, *cells)`` start of the backward chain.
        keep: time indices whose states are returned as well (for plots).
    Returns:
        z^0 and ``{t: z^t}`` for the requested times.
    """
    if z_T.dim() < 2 or not torch.is_floating_point(z_T):
        raise ValueError(
            f"z_T must be a floating tensor of shape (B, d, *cells), got {tuple(z_T.shape)} "
            f"of dtype {z_T.dtype}"
        )
    if not torch.isfinite(z_T).all():
        raise ValueError("z_T contains NaN or inf values")
    kept = {schedule.num_steps: z_T} if schedule.num_steps in keep else {}
    z = z_T
    for t in range(schedule.num_steps, 0, -1):
        mean, var = reverse_step(schedule, denoiser, z, _steps(t, z), model_variance)
        z = mean + var.sqrt() * torch.randn_like(z)
        if t - 1 in keep:
            kept[t - 1] = z
    return z, kept


def importance_proposal(
    schedule: OUSchedule, model_variance: str, mix: float = 0.5
) -> torch.Tensor:
    """q(t) = mix * w_t / sum_s w_s + (1 - mix) / T over t = 1..T, shape ``(T,)`` (float64)."""
    steps = torch.arange(1, schedule.num_steps + 1)
    w = schedule.epsilon_weight(steps, model_variance)
    return mix * w / w.sum() + (1.0 - mix) / schedule.num_steps


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by a per-item factor ``(B,)``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(factor)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (factor,) = ctx.saved_tensors
        return grad * factor.reshape(factor.shape + (1,) * (grad.dim() - 1)), None


def _scale_grad(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _ScaleGrad.apply(x, factor)


class DiffusionPrior(TorchDistribution):
    """p_theta(z^0) of the bridge, with a random-step estimate of its bound as ``log_prob``.

    ``log_prob(z0)`` returns, per item, an unbiased estimate of
    ``-L_T - sum_{t=2}^T L_{t-1} + log p_theta(z^0 | z^1)`` (a lower bound on log p_theta(z^0)):
    one step ``t ~ q(t)`` per item, the Gaussian KL of that step in closed form
    (``w_t ||eps - eps_theta||^2 + c_t``) weighted by ``1 / q(t)``, and L_T in closed form.
    With ``steps_per_item = S > 1``, S steps per item, one in each of S equal strata of 1..T,
    each weighted by T / S (lower variance, S times the cost; for evaluation).

    Args:
        schedule: the OU bridge.
        denoiser: eps_theta (an ``nn.Module``).
        event_shape: ``(d, *cells)``.  batch_size: B.
        model_variance: ``"beta"`` or ``"beta_tilde"``
            (see :meth:`OUSchedule.model_variance_table`).
        proposal: q(t) over t = 1..T, shape ``(T,)``; ``None`` for uniform.
        steps_per_item: S, see above (must divide T).
        denoiser_loss: ``"elbo"`` (every gradient from the bound) or ``"simple"``: the value is
            still the bound and the gradient reaching z^0 is the bound's, but the denoiser's own
            parameters get the gradient of ``mean_t(w_t) ||eps - eps_theta||^2 / q(t)``
            (L_simple, not the ELBO), in the same single denoiser pass.
        draw: ``z_T -> z^0`` used by ``sample`` (e.g. a few-step sampler of
            :mod:`pbridge.samplers`); ``None``: the T-step ancestral chain (Algorithm 2).
    """

    arg_constraints: dict = {}
    support = constraints.real
    has_rsample = False

    def __init__(
        self,
        schedule: OUSchedule,
        denoiser: nn.Module,
        event_shape: tuple[int, ...],
        batch_size: int,
        model_variance: str = "beta_tilde",
        proposal: torch.Tensor | None = None,
        denoiser_loss: str = "elbo",
        steps_per_item: int = 1,
        draw: Callable[[torch.Tensor], torch.Tensor] | None = None,
        validate_args: bool | None = None,
    ) -> None:
        if denoiser_loss not in ("elbo", "simple"):
            raise ValueError(f"denoiser_loss must be 'elbo' or 'simple', got {denoiser_loss!r}")
        if steps_per_item < 1 or schedule.num_steps % steps_per_item:
            raise ValueError(
                f"steps_per_item must be >= 1 and divide T = {schedule.num_steps}, "
                f"got {steps_per_item}"
            )
        if steps_per_item > 1 and proposal is not None:
            raise ValueError("stratified steps (steps_per_item > 1) need the uniform proposal")
        if proposal is not None and proposal.shape != (schedule.num_steps,):
            raise ValueError(
                f"proposal must have shape ({schedule.num_steps},), got {tuple(proposal.shape)}"
            )
        self.schedule, self.denoiser = schedule, denoiser
        steps = torch.arange(1, schedule.num_steps + 1)
        self._mean_weight = float(schedule.epsilon_weight(steps, model_variance).mean())
        self.model_variance, self.proposal, self.denoiser_loss = (
            model_variance,
            proposal,
            denoiser_loss,
        )
        self.steps_per_item, self.draw = steps_per_item, draw
        super().__init__(torch.Size([batch_size]), torch.Size(event_shape), validate_args)

    def expand(self, batch_shape, _instance=None):
        if tuple(batch_shape) != tuple(self.batch_shape):
            raise NotImplementedError("DiffusionPrior cannot be expanded to a new batch shape")
        return self

    def _draw_steps(self, z0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """t ``(B, S)`` and the weight 1/(S q(t)) ``(B, S)``, S = ``steps_per_item``.

        S > 1: one uniform t in each of S equal strata of 1..T (stratified sampling).
        """
        T, S = self.schedule.num_steps, self.steps_per_item
        if S > 1:
            offset = torch.rand(z0.shape[0], S, device=z0.device)
            strata = torch.arange(S, device=z0.device)
            t = ((strata + offset) * (T // S)).long().clamp_max(T - 1) + 1
            return t, torch.full(t.shape, float(T // S), dtype=z0.dtype, device=z0.device)
        if self.proposal is None:
            t = torch.randint(1, T + 1, (z0.shape[0], 1), device=z0.device)
            return t, torch.full(t.shape, float(T), dtype=z0.dtype, device=z0.device)
        q = self.proposal.to(z0.device)
        t = torch.multinomial(q, z0.shape[0], replacement=True)[:, None] + 1
        return t, (1.0 / q[t - 1]).to(z0.dtype)

    def step_terms(
        self, z0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The chain term of step t per item, ``(B,)``, at z^t = z* + sqrt(abar_t)(z^0 - z*)
        + sqrt(sigma2 (1 - abar_t)) eps (``eps`` drawn when not given).

        L_{t-1} for t >= 2 and -log p_theta(z^0 | z^1) for t = 1.
        """
        s = self.schedule
        eps = torch.randn_like(z0) if eps is None else eps
        mean, var = s.marginal(z0, t)
        z_t = mean + var.sqrt() * eps
        w = s.epsilon_weight(t.cpu(), self.model_variance).to(z0)
        if self.denoiser_loss == "simple":
            c = self._mean_weight
            eps_hat = self.denoiser(_scale_grad(z_t, w / c), t)
            sq_err = (eps - eps_hat).pow(2).flatten(1).sum(-1)
            w_sq = w * sq_err.detach() + c * (sq_err - sq_err.detach())
        else:
            eps_hat = self.denoiser(z_t, t)
            w_sq = w * (eps - eps_hat).pow(2).flatten(1).sum(-1)
        return w_sq + z0[0].numel() * s.step_constant(t.cpu(), self.model_variance).to(z0)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        t, weight = self._draw_steps(value)
        S = t.shape[1]
        terms = self.step_terms(value.repeat_interleave(S, dim=0), t.flatten()).view(-1, S)
        return -self.schedule.prior_kl(value) - (weight * terms).sum(-1)

    def sample(self, sample_shape: torch.Size = _NO_SHAPE) -> torch.Tensor:
        if sample_shape != _NO_SHAPE:
            raise NotImplementedError("DiffusionPrior draws one batch per call")
        shape = self.batch_shape + self.event_shape
        param = next(self.denoiser.parameters())
        z_T = self.schedule.z_star + math.sqrt(self.schedule.sigma2) * torch.randn(
            shape, dtype=param.dtype, device=param.device
        )
        if self.draw is not None:
            return self.draw(z_T)
        return ancestral_sample(self.schedule, self.denoiser, z_T, self.model_variance)[0]
