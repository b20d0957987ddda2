"""The Ornstein-Uhlenbeck bridge: schedule, closed-form kernels, SDE (docs/maths.md, section 1).

Continuous time::

    dZ_s = -theta (Z_s - z_star) ds + eta dW_s,   stationary law N(z_star, sigma2 I),
    sigma2 = eta^2 / (2 theta).

Discretised exactly on steps ``delta_1 .. delta_T``::

    alpha_t = exp(-2 theta delta_t),  beta_t = 1 - alpha_t,  abar_t = prod_{s <= t} alpha_s.

Time indices ``t`` are integers in ``0 .. T`` (``abar_0 = 1``); every function takes a tensor of
indices of shape ``(B,)`` and broadcasts the coefficients over the event dimensions of ``z``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torchsde

__all__ = ["OUSchedule", "OUSDE", "toy_schedule", "image_schedule"]


def _check_steps(t: torch.Tensor, low: int, high: int) -> None:
    if t.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"time indices must be an integer tensor, got dtype {t.dtype}")
    if t.numel() and (int(t.min()) < low or int(t.max()) > high):
        raise ValueError(
            f"time indices must lie in [{low}, {high}], got values in "
            f"[{int(t.min())}, {int(t.max())}]"
        )


@dataclass(frozen=True)
class OUSchedule:
    """An exactly discretised OU process.

    Args:
        theta: mean-reversion rate (> 0).
        eta2: squared diffusion coefficient eta^2 (> 0).
        z_star: the mean the process reverts to (a scalar, broadcast over every coordinate).
        deltas: step lengths ``delta_1 .. delta_T``, shape ``(T,)``, all > 0.
    """

    theta: float
    eta2: float
    z_star: float
    deltas: torch.Tensor

    def __post_init__(self) -> None:
        if not (self.theta > 0 and math.isfinite(self.theta)):
            raise ValueError(f"theta must be a positive finite number, got {self.theta}")
        if not (self.eta2 > 0 and math.isfinite(self.eta2)):
            raise ValueError(f"eta2 must be a positive finite number, got {self.eta2}")
        if not math.isfinite(self.z_star):
            raise ValueError(f"z_star must be finite, got {self.z_star}")
        deltas = torch.as_tensor(self.deltas, dtype=torch.float64)
        if deltas.dim() != 1 or deltas.numel() == 0:
            raise ValueError(
                f"deltas must be a non-empty 1-D tensor, got shape {tuple(deltas.shape)}"
            )
        if not bool((deltas > 0).all() and torch.isfinite(deltas).all()):
            raise ValueError("deltas must all be positive and finite")
        object.__setattr__(self, "deltas", deltas)
        log_alpha = -2.0 * self.theta * deltas
        log_abar = torch.cat([deltas.new_zeros(1), torch.cumsum(log_alpha, 0)])
        # Index 0 of every table is t = 0 (alpha_0 = abar_0 = 1, beta_0 = 0).
        object.__setattr__(self, "_alpha", torch.cat([deltas.new_ones(1), log_alpha.exp()]))
        object.__setattr__(self, "_beta", torch.cat([deltas.new_zeros(1), -torch.expm1(log_alpha)]))
        object.__setattr__(self, "_abar", log_abar.exp())
        object.__setattr__(self, "_one_minus_abar", -torch.expm1(log_abar))

    # ------------------------------------------------------------------ coefficient tables
    @property
    def num_steps(self) -> int:
        """T, the number of discrete steps."""
        return self.deltas.numel()

    @property
    def sigma2(self) -> float:
        """Stationary variance eta^2 / (2 theta)."""
        return self.eta2 / (2.0 * self.theta)

    @property
    def alpha(self) -> torch.Tensor:
        """alpha_t for t = 0..T, shape ``(T+1,)`` (float64)."""
        return self._alpha

    @property
    def beta(self) -> torch.Tensor:
        """beta_t = 1 - alpha_t for t = 0..T."""
        return self._beta

    @property
    def abar(self) -> torch.Tensor:
        """abar_t = prod_{s<=t} alpha_s for t = 0..T."""
        return self._abar

    @property
    def times(self) -> torch.Tensor:
        """Continuous times s_t = delta_1 + ... + delta_t for t = 0..T."""
        return torch.cat([self.deltas.new_zeros(1), torch.cumsum(self.deltas, 0)])

    @property
    def beta_tilde(self) -> torch.Tensor:
        """beta~_t = beta_t (1 - abar_{t-1}) / (1 - abar_t) for t = 1..T, at index t (0 at t=0)."""
        out = torch.zeros_like(self._beta)
        out[1:] = self._beta[1:] * self._one_minus_abar[:-1] / self._one_minus_abar[1:]
        return out

    def at(self, table: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """A coefficient table indexed at ``t: (B,)``, shaped ``(B, 1, ..., 1)`` like ``like``.

        The result takes ``like``'s dtype and device so it broadcasts against ``(B, *event)``.
        """
        if t.dim() != 1 or like.dim() == 0 or t.shape[0] != like.shape[0]:
            raise ValueError(
                f"time indices must have shape (B,) for states of shape (B, ...) = "
                f"{tuple(like.shape)}, got {tuple(t.shape)}"
            )
        values = table.to(device=like.device, dtype=like.dtype)[t]
        return values.reshape(t.shape + (1,) * (like.dim() - t.dim()))

    def abar_at(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """abar at time indices ``t: (B,)``, shaped like :meth:`at`. Integer t: the table.
        Fractional t (the continuous samplers): abar = exp(-2 theta s) with the OU time s
        interpolated linearly between s_floor(t) and s_ceil(t)."""
        if not torch.is_floating_point(t):
            return self.at(self._abar, t, like)
        if t.numel() and (float(t.min()) < 0 or float(t.max()) > self.num_steps):
            raise ValueError(f"time indices must lie in [0, {self.num_steps}], got {t}")
        times = self.times.to(device=t.device, dtype=torch.float64)
        low = t.detach().double().floor().long().clamp_max(self.num_steps - 1)
        s = times[low] + (t.double() - low) * (times[low + 1] - times[low])
        values = torch.exp(-2.0 * self.theta * s).to(like)
        return values.reshape(t.shape + (1,) * (like.dim() - t.dim()))

    # ------------------------------------------------------------------ closed forms
    def marginal(self, z0: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z^t | z^0) = N(z* + sqrt(abar_t)(z^0 - z*), sigma2 (1 - abar_t) I).

        Args:
            z0: ``(B, *event)``.  t: ``(B,)`` integers in ``0..T``.
        Returns:
            mean ``(B, *event)`` and variance broadcastable to it.
        """
        _check_steps(t, 0, self.num_steps)
        mean = self.z_star + self.at(self._abar.sqrt(), t, z0) * (z0 - self.z_star)
        return mean, self.sigma2 * self.at(self._one_minus_abar, t, z0)

    def transition(
        self, z_prev: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z^t | z^{t-1}) = N(z* + sqrt(alpha_t)(z^{t-1} - z*), sigma2 beta_t I), t in 1..T."""
        _check_steps(t, 1, self.num_steps)
        mean = self.z_star + self.at(self._alpha.sqrt(), t, z_prev) * (z_prev - self.z_star)
        return mean, self.sigma2 * self.at(self._beta, t, z_prev)

    def posterior(
        self, z_t: torch.Tensor, z0: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z^{t-1} | z^t, z^0) = N(mu~_t, sigma2 beta~_t I), t in 1..T (docs/maths.md eq. 4).

        mu~_t = z* + sqrt(abar_{t-1}) beta_t / (1 - abar_t) (z^0 - z*)
                   + sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t) (z^t - z*).
        """
        _check_steps(t, 1, self.num_steps)
        c0 = self._abar[:-1].sqrt() * self._beta[1:] / self._one_minus_abar[1:]
        ct = self._alpha[1:].sqrt() * self._one_minus_abar[:-1] / self._one_minus_abar[1:]
        mean = (
            self.z_star
            + self.at(c0, t - 1, z0) * (z0 - self.z_star)
            + self.at(ct, t - 1, z_t) * (z_t - self.z_star)
        )
        return mean, self.sigma2 * self.at(self.beta_tilde, t, z_t)

    def predict_z0(self, z_t: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The z^0 implied by z^t and a noise guess (epsilon parametrisation), t in (0, T].

        z^0_hat = z* + (z^t - z* - sqrt(sigma2 (1 - abar_t)) eps) / sqrt(abar_t)
        (docs/maths.md eq. 5); ``t`` integer or fractional (:meth:`abar_at`).
        """
        abar = self.abar_at(t, z_t)
        noise_sd = (self.sigma2 * (1.0 - abar)).sqrt()
        return self.z_star + (z_t - self.z_star - noise_sd * eps) / abar.sqrt()

    def eps_from_z0(self, z_t: torch.Tensor, z0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`predict_z0`: the eps with z^t = z* + sqrt(abar_t)(z^0 - z*)
        + sqrt(sigma2 (1 - abar_t)) eps, ``t`` integer or fractional, t > 0."""
        abar = self.abar_at(t, z_t)
        noise_sd = (self.sigma2 * (1.0 - abar)).sqrt()
        return (z_t - self.z_star - abar.sqrt() * (z0 - self.z_star)) / noise_sd

    def stationary_draw(
        self, like: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """A draw of z^T ~ N(z*, sigma2 I) with the shape, dtype and device of ``like``: the
        start of every backward chain (prior draws, samplers, inpainting, plots)."""
        eps = torch.randn(like.shape, generator=generator, dtype=like.dtype, device=like.device)
        return self.z_star + math.sqrt(self.sigma2) * eps

    def code_step_weight(self, t: torch.Tensor) -> torch.Tensor:
        """The weight of ||z^0 - z0_hat||^2 in KL(q(z^{t-1}|z^t,z^0) || p_theta(z^{t-1}|z^t))
        with the beta~ variances and p's mean mu~_t(z^t, z0_hat), t in 2..T (docs/maths.md eq. 12):

            0.5 (SNR_{t-1} - SNR_t) / sigma2.

        Returns float64 of shape ``t.shape``.
        """
        _check_steps(t, 2, self.num_steps)
        ratio = self._abar[t - 1] * self._beta[t] / (self._one_minus_abar[t - 1])
        return 0.5 * ratio / self._one_minus_abar[t] / self.sigma2

    def epsilon_weight(self, t: torch.Tensor, model_variance: str = "beta") -> torch.Tensor:
        """w_t in KL(q(z^{t-1}|z^t,z^0) || p_theta(z^{t-1}|z^t)) = w_t ||eps - eps_theta||^2 + c_t.

        The KL is per latent point (summed over coordinates), t in 2..T; at t = 1 the same w_1
        multiplies ||eps - eps_theta||^2 in -log p_theta(z^0 | z^1).

        ``model_variance="beta"`` (variance sigma2 beta_t): w_t = beta_t / (2 alpha_t (1 - abar_t)).
        ``model_variance="beta_tilde"`` (sigma2 beta~_t, beta_1 at t = 1):
        w_t = beta_t / (2 alpha_t (1 - abar_{t-1})) for t >= 2 (docs/maths.md eq. 7).
        Returns a float64 tensor of shape ``t.shape``.
        """
        _check_steps(t, 1, self.num_steps)
        var = self.model_variance_table(model_variance)[t]
        num = self._beta[t] ** 2 / (self._alpha[t] * self._one_minus_abar[t])
        return num / (2.0 * var)

    def step_constant(self, t: torch.Tensor, model_variance: str = "beta") -> torch.Tensor:
        """c_t per latent coordinate, the part of the step-t term that does not involve eps_theta.

        t >= 2: 1/2 (r - 1 - log r) with r = beta~_t / v_t (0 for ``"beta_tilde"``);
        t = 1: 1/2 log(2 pi sigma2 v_1), the normaliser of -log p_theta(z^0 | z^1)
        (docs/maths.md eqs. 7-8). Returns float64 of shape ``t.shape``.
        """
        _check_steps(t, 1, self.num_steps)
        v = self.model_variance_table(model_variance)[t]
        ratio = self.beta_tilde[t] / v
        kl_part = 0.5 * (ratio - 1.0 - ratio.log())
        return torch.where(t == 1, 0.5 * torch.log(2 * math.pi * self.sigma2 * v), kl_part)

    def model_variance_table(self, model_variance: str) -> torch.Tensor:
        """The reverse-step variance factor v_t (variance sigma2 v_t) for t = 0..T.

        ``"beta"``: v_t = beta_t.  ``"beta_tilde"``: v_t = beta~_t for t >= 2 and beta_1 at t = 1
        (beta~_1 = 0 would make p_theta(z^0 | z^1) degenerate).
        """
        if model_variance == "beta":
            return self._beta
        if model_variance == "beta_tilde":
            out = self.beta_tilde.clone()
            out[1] = self._beta[1]
            return out
        raise ValueError(f"model_variance must be 'beta' or 'beta_tilde', got {model_variance!r}")

    def prior_kl(self, z0: torch.Tensor, per_cell: bool = False) -> torch.Tensor:
        """L_T = KL(q(z^T | z^0) || N(z*, sigma2 I)) of ``z0: (B, d, *cells)``, summed over
        the event dims, ``(B,)``, or with ``per_cell`` over the d coordinates of each cell only,
        ``(B, *cells)``.

        Per coordinate: 0.5 (abar_T (z^0 - z*)^2 / sigma2 - abar_T - log(1 - abar_T)).
        """
        abar = float(self._abar[-1])
        per_coord = 0.5 * (abar * (z0 - self.z_star) ** 2 / self.sigma2 - abar - math.log1p(-abar))
        return per_coord.sum(1) if per_cell else per_coord.flatten(1).sum(-1)

    def sde(self) -> OUSDE:
        """The same process as a torchsde SDE object."""
        return OUSDE(self.theta, self.eta2, self.z_star)


class OUSDE(torch.nn.Module):
    """dZ = -theta (Z - z*) ds + eta dW as a torchsde SDE (diagonal, additive noise).

    State ``y: (B, n)``; use with ``torchsde.sdeint(sde, y0, ts)``.
    """

    noise_type = "diagonal"
    sde_type = "ito"

    def __init__(self, theta: float, eta2: float, z_star: float) -> None:
        super().__init__()
        self.theta, self.eta, self.z_star = theta, math.sqrt(eta2), z_star

    def f(self, s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -self.theta * (y - self.z_star)

    def g(self, s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.full_like(y, self.eta)

    def simulate(
        self, y0: torch.Tensor, times: torch.Tensor, dt: float, method: str = "euler"
    ) -> torch.Tensor:
        """Paths from ``y0: (B, n)`` observed at ``times: (S,)``, shape ``(S, B, n)``.

        ``method`` is a torchsde solver for Ito SDEs with diagonal noise (``"euler"``, ``"srk"``,
        ``"milstein"``); ``dt`` its fixed step.
        """
        if y0.dim() != 2:
            raise ValueError(f"y0 must have shape (B, n), got {tuple(y0.shape)}")
        return torchsde.sdeint(self, y0, times.to(y0), method=method, dt=dt)


def toy_schedule(num_steps: int = 100, delta: float = 0.015) -> OUSchedule:
    """The paper's toy preset: theta = 2, eta^2 = 0.01, z* = 0, T = 100, delta_t = 0.015."""
    return OUSchedule(
        theta=2.0,
        eta2=0.01,
        z_star=0.0,
        deltas=torch.full((num_steps,), delta, dtype=torch.float64),
    )


def image_schedule(
    num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
) -> OUSchedule:
    """The image preset, exactly DDPM: theta = 1, eta^2 = 2, z* = 0, beta linear 1e-4 -> 0.02.

    delta_t = -log(1 - beta_t) / (2 theta), so that alpha_t = 1 - beta_t.
    """
    betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
    return OUSchedule(theta=1.0, eta2=2.0, z_star=0.0, deltas=-torch.log1p(-betas) / 2.0)
