"""Few-step samplers of the backward chain (docs/maths.md, "Few-step samplers").

Every sampler maps ``z_T: (B, d, *cells)`` to a draw of z^0 with the same denoiser
``eps_theta(z_t: (B, d, *cells), t: (B,)) -> (B, d, *cells)``:

- ``"ancestral"``: the discrete chain, T steps (Algorithm 2, :func:`reverse_step`),
  the one ancestral loop of the project (prior draws, inpainting, plots);
- ``"respaced"``: S <= T DDIM-style steps on a subsequence of the time indices (eq. S1);
- ``"sde"``: the reverse-time SDE, solved by ``torchsde.sdeint`` (eq. S3);
- ``"ode"``: the probability-flow ODE, solved by ``torchsde.sdeint`` with zero noise (eq. S4).

The continuous samplers call the denoiser with a *fractional* time index (the OU time mapped
linearly onto ``schedule.times``), so the denoiser must accept a float ``t`` (the sinusoidal
embedding of :mod:`pbridge.networks` does, and so does :class:`~pbridge.code_head.CodeHead`).
:func:`encode_ode` runs the ODE
forward (z^0 -> z^T). Wrap a denoiser in :class:`CountingDenoiser` to count network evaluations:
per solver step 1 (``"euler"``; ``"reversible_heun"`` after one at the start), 2 (``"heun"``,
``"midpoint"``) or 4 (``"srk"``), plus 1 for the final z0_hat.
"""

from __future__ import annotations

import bisect
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torchsde
from torch import nn

from .ou_bridge import OUSchedule

__all__ = [
    "SamplerSettings",
    "ANCESTRAL",
    "OnStep",
    "reverse_step",
    "SAMPLERS",
    "SDE_METHODS",
    "ODE_METHODS",
    "CountingDenoiser",
    "respaced_times",
    "reverse_sample",
    "encode_ode",
    "ADAPTIVE_PROGRESS_PARTS",
]

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Known = tuple[torch.Tensor, torch.Tensor]
Record = Callable[[int, torch.Tensor], None]
OnStep = Callable[[int, int], None]

SAMPLERS = ("ancestral", "respaced", "sde", "ode")
SDE_METHODS = ("euler", "srk", "reversible_heun")
ODE_METHODS = ("euler", "midpoint", "heun")
_STRATONOVICH = ("reversible_heun", "midpoint", "heun")
# Adaptive stepping (``steps=None``): torchsde's step-doubling error control with these
# tolerances (atol in units of the stationary standard deviation sqrt(sigma2)).
_ADAPTIVE_RTOL = 1e-4
_ADAPTIVE_ATOL = 1e-4
_ADAPTIVE_FIRST_STEPS = 32
# A fixed step is lengthened by this factor so that rounding never adds a last tiny step.
_STEP_SLACK = 1.0 + 1e-9
ADAPTIVE_PROGRESS_PARTS = 100
"""Parts of the solver's time span that ``on_step`` counts for the adaptive ``"sde"``/``"ode"``
samplers, whose number of steps is not known in advance."""
# Drifts kept by _FlowSDE: the 4 stages of torchsde's diagonal-noise SRK.
_CACHE_SIZE = 4


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


@dataclass(frozen=True)
class SamplerSettings:
    """Which sampler draws the backward chain, with its options: the one place they are checked.

    Built by the command line from ``--sampler``, ``--sample-steps``, ``--ddim-eta`` and
    ``--method`` before any model is loaded, and passed as an argument to whatever draws
    (:func:`reverse_sample`, prior draws, inpainting, evaluation, analysis). Every error names
    the option as the command line spells it.

    Attributes:
        name: one of :data:`SAMPLERS` (see :func:`reverse_sample`).
        sample_steps: ``"respaced"``: S <= T steps (``None``: T); ``"sde"``/``"ode"``: equal
            solver steps (``None``: adaptive); must be ``None`` for ``"ancestral"`` (T steps).
        ddim_eta: ``"respaced"`` only: the DDIM noise fraction in [0, 1] (``None``: 1, the
            ancestral chain on the subsequence; 0: deterministic).
        method: ``"sde"``/``"ode"`` only: the torchsde solver, one of :data:`SDE_METHODS` /
            :data:`ODE_METHODS` (``None``: ``"euler"``).
    """

    name: str = "ancestral"
    sample_steps: int | None = None
    ddim_eta: float | None = None
    method: str | None = None

    def __post_init__(self) -> None:
        if self.name not in SAMPLERS:
            raise ValueError(f"--sampler {self.name!r} is not one of {', '.join(SAMPLERS)}")
        steps = self.sample_steps
        if steps is not None:
            if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
                raise ValueError(f"--sample-steps must be a positive integer, got {steps!r}")
            if self.name == "ancestral":
                raise ValueError(
                    f"--sample-steps {steps}: the ancestral sampler runs all T steps; use "
                    "--sampler respaced (or sde/ode) for fewer"
                )
        if self.ddim_eta is not None:
            if self.name != "respaced":
                raise ValueError(f"--ddim-eta applies to the respaced sampler, not {self.name!r}")
            if not 0.0 <= self.ddim_eta <= 1.0:
                raise ValueError(f"--ddim-eta must lie in [0, 1], got {self.ddim_eta}")
        if self.method is not None:
            allowed = {"sde": SDE_METHODS, "ode": ODE_METHODS}.get(self.name)
            if allowed is None:
                raise ValueError(f"--method applies to the sde and ode samplers, not {self.name!r}")
            if self.method not in allowed:
                raise ValueError(
                    f"--method {self.method!r} is not a method of the {self.name} sampler; "
                    f"expected one of {', '.join(allowed)}"
                )

    def check_chain(self, num_steps: int) -> None:
        """Refuse ``--sample-steps`` beyond the chain's T = ``num_steps`` for ``"respaced"``
        (the one check that needs the chain; the command line runs it with the run's
        config.json before loading the model)."""
        if self.name == "respaced" and self.sample_steps is not None:
            if self.sample_steps > num_steps:
                raise ValueError(
                    f"--sample-steps {self.sample_steps} exceeds the chain's T = {num_steps} steps"
                )

    @property
    def solver(self) -> str:
        """The torchsde method in use (``method``, default ``"euler"``)."""
        return "euler" if self.method is None else self.method


ANCESTRAL = SamplerSettings()
"""The default sampler: the T-step ancestral chain (Algorithm 2)."""


class CountingDenoiser(nn.Module):
    """``denoiser`` unchanged, counting its calls in ``calls`` (network evaluations, NFE)."""

    def __init__(self, denoiser: Denoiser) -> None:
        super().__init__()
        self.denoiser, self.calls = denoiser, 0

    def forward(self, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.denoiser(z_t, t)


def respaced_times(num_steps: int, steps: int) -> list[int]:
    """tau_1 < ... < tau_S: S evenly spaced integers in 1..T, tau_S = T (and tau_1 = 1 if S > 1).

    tau_i = round(1 + (i - 1)(T - 1) / (S - 1)); distinct because the spacing is >= 1 for S <= T.
    ``steps = T`` gives 1..T; ``steps = 1`` gives [T].
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= num_steps:
        raise ValueError(f"steps must be an integer in 1..T = 1..{num_steps}, got {steps!r}")
    if steps == 1:
        return [num_steps]
    return [round(1 + i * (num_steps - 1) / (steps - 1)) for i in range(steps)]


def _randn(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(like.shape, generator=generator, dtype=like.dtype, device=like.device)


def _indices(t: int, like: torch.Tensor) -> torch.Tensor:
    return torch.full((like.shape[0],), t, dtype=torch.long, device=like.device)


def _impose_known(
    schedule: OUSchedule,
    z: torch.Tensor,
    known: Known | None,
    abar: float,
    generator: torch.Generator | None,
    eps: torch.Tensor | None = None,
) -> torch.Tensor:
    """``z: (B, d, *cells)`` with the known cells replaced by a draw of q(z | z0_known) (eq. 3).

    The draw is z* + sqrt(abar)(z0_known - z*) + sqrt(sigma2 (1 - abar)) eps, ``eps`` fresh
    from ``generator`` unless given; at abar = 1 (time 0) the known cells become z0_known exactly.
    """
    if known is None:
        return z
    z0, mask = known
    if abar >= 1.0:
        return torch.where(mask, z0, z)
    eps = _randn(z, generator) if eps is None else eps
    zs = schedule.z_star
    draw = zs + math.sqrt(abar) * (z0 - zs) + math.sqrt(schedule.sigma2 * (1 - abar)) * eps
    return torch.where(mask, draw, z)


def _ancestral(
    schedule: OUSchedule,
    denoiser: Denoiser,
    z: torch.Tensor,
    model_variance: str,
    known: Known | None,
    generator: torch.Generator | None,
    to_time: int,
    record: Record | None,
    on_step: OnStep | None,
) -> torch.Tensor:
    abar, total = schedule.abar.tolist(), schedule.num_steps - to_time
    for t in range(schedule.num_steps, to_time, -1):
        mean, var = reverse_step(schedule, denoiser, z, _indices(t, z), model_variance)
        z = mean + var.sqrt() * _randn(z, generator)
        z = _impose_known(schedule, z, known, abar[t - 1], generator)
        if record is not None:
            record(t - 1, z)
        if on_step is not None:
            on_step(schedule.num_steps - t + 1, total)
    return z


def _respaced(
    schedule: OUSchedule,
    denoiser: Denoiser,
    z: torch.Tensor,
    steps: int,
    ddim_eta: float,
    known: Known | None,
    generator: torch.Generator | None,
    to_time: int,
    on_step: OnStep | None,
) -> torch.Tensor:
    """DDIM-style steps tau_i -> tau_{i-1} (eq. S1) down to ``to_time``; a last step
    tau_1 -> 0 is eq. S2 (with ``to_time = 1`` and tau_1 = 1 there is none)."""
    abar, s2, zs = schedule.abar.tolist(), schedule.sigma2, schedule.z_star
    times = respaced_times(schedule.num_steps, steps)
    pairs = zip(reversed(times), reversed([to_time] + times[:-1]), strict=True)
    pairs = [(c, p) for c, p in pairs if c > p]
    for done, (cur, prev) in enumerate(pairs, 1):
        t = _indices(cur, z)
        eps_hat = denoiser(z, t)
        z0_hat = schedule.predict_z0(z, eps_hat, t)
        if prev == 0:
            mean, var = z0_hat, ddim_eta**2 * s2 * float(schedule.beta[1])
        else:
            a_cur, a_prev = abar[cur], abar[prev]
            var = ddim_eta**2 * s2 * (1 - a_prev) / (1 - a_cur) * (1 - a_cur / a_prev)
            direction = math.sqrt(max(s2 * (1 - a_prev) - var, 0.0))
            mean = zs + math.sqrt(a_prev) * (z0_hat - zs) + direction * eps_hat
        z = mean + math.sqrt(var) * _randn(z, generator)
        z = _impose_known(schedule, z, known, abar[prev], generator)
        if on_step is not None:
            on_step(done, len(pairs))
    return z


class _FlowSDE(nn.Module):
    """The reverse-time SDE (eq. S3) or probability-flow ODE (eq. S4) for ``torchsde.sdeint``.

    The solver's time is u, with OU time s = origin + sign u: sign = -1, origin = s_T integrates
    backwards in s with increasing u; sign = +1, origin = s_1 is the forward ODE of
    :func:`encode_ode`. Drift in u: sign (-theta (z - z*) - w eta^2 score(z, s)) with
    score(z, s) = -eps_theta(z, t(s)) / sqrt(sigma2 (1 - abar(s))), w = 1 (SDE) or 1/2 (ODE);
    diffusion ``diffusion`` (eta or 0), diagonal. State ``y: (B, n)``, the flattened
    ``(B, d, *cells)``.

    The drifts at the last few (u, y) are cached (by the identity of ``y``): the contract check
    that ``sdeint`` runs at its start time then costs no network evaluation (the first solver
    step reuses it), nor do the repeated stage evaluations of ``"srk"`` (4 per step, not 10).
    ``on_time(u)``, if given, is told the solver time of every drift evaluation (progress).
    """

    noise_type = "diagonal"

    def __init__(
        self,
        schedule: OUSchedule,
        denoiser: Denoiser,
        shape: torch.Size,
        origin: float,
        sign: float,
        score_weight: float,
        diffusion: float,
        sde_type: str,
        on_time: Callable[[float], None] | None = None,
    ) -> None:
        super().__init__()
        self.schedule, self.denoiser, self.shape = schedule, denoiser, shape
        self.origin, self.sign, self.score_weight = origin, sign, score_weight
        self.diffusion, self.sde_type, self.on_time = diffusion, sde_type, on_time
        self.times = schedule.times.tolist()
        self._cache: list[tuple[float, torch.Tensor, torch.Tensor]] = []

    def time_index(self, s: float) -> float:
        """The fractional index t(s): s interpolated linearly on ``schedule.times`` (t(s_k) = k)."""
        k = min(max(bisect.bisect_right(self.times, s), 1), len(self.times) - 1)
        lo, hi = self.times[k - 1], self.times[k]
        return k - 1 + (s - lo) / (hi - lo)

    def f(self, u: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        u = float(u)
        for u_seen, y_seen, out in self._cache:
            if u_seen == u and y_seen is y:
                return out
        if self.on_time is not None:
            self.on_time(u)
        sch = self.schedule
        s = self.origin + self.sign * u
        z = y.reshape(self.shape)
        t = torch.full((y.shape[0],), self.time_index(s), dtype=y.dtype, device=y.device)
        noise_sd = math.sqrt(sch.sigma2 * -math.expm1(-2.0 * sch.theta * s))
        eps = self.denoiser(z, t)
        drift = -sch.theta * (z - sch.z_star) + self.score_weight * sch.eta2 / noise_sd * eps
        out = self.sign * drift.flatten(1)
        self._cache = [(u, y, out)] + self._cache[: _CACHE_SIZE - 1]
        return out

    def g(self, u: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.full_like(y, self.diffusion)


def _solve(
    sde: _FlowSDE,
    z: torch.Tensor,
    span: float,
    steps: int | None,
    method: str,
    entropy: int,
    after_step: Callable[[torch.Tensor, float], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Integrates ``sde`` over u in [0, span] from ``z: (B, d, *cells)``; returns the end state.

    ``steps``: that many equal steps (``None``: adaptive). ``after_step(z, u)``, if given, is
    applied after every step (then one ``sdeint`` call per step).
    """
    y = z.flatten(1)
    span = float(torch.tensor(span, dtype=y.dtype))  # the end of ``ts`` in the state's dtype
    bm = torchsde.BrownianInterval(
        t0=0.0,
        t1=span,
        size=y.shape,
        dtype=y.dtype,
        device=y.device,
        entropy=entropy,
        levy_area_approximation="space-time" if method == "srk" else "none",
    )
    if steps is None:
        ts = torch.tensor([0.0, span], dtype=y.dtype, device=y.device)
        with warnings.catch_warnings():
            # torchsde warns that adaptive Euler may not converge for non-additive noise;
            # the diffusion here is a constant (additive) and declared diagonal only for speed.
            warnings.filterwarnings("ignore", message="Numerical solution is not guaranteed")
            ys = torchsde.sdeint(
                sde,
                y,
                ts,
                bm=bm,
                method=method,
                dt=span / _ADAPTIVE_FIRST_STEPS,
                adaptive=True,
                rtol=_ADAPTIVE_RTOL,
                atol=_ADAPTIVE_ATOL * math.sqrt(sde.schedule.sigma2),
            )
        return ys[-1].reshape(z.shape)
    if after_step is None:
        ts = torch.tensor([0.0, span], dtype=y.dtype, device=y.device)
        ys = torchsde.sdeint(sde, y, ts, bm=bm, method=method, dt=span / steps * _STEP_SLACK)
        return ys[-1].reshape(z.shape)
    grid = torch.linspace(0.0, span, steps + 1, dtype=y.dtype, device=y.device)
    for k in range(steps):
        ts = grid[k : k + 2]
        # dt twice the interval: exactly one solver step, ending exactly at ts[1].
        y = torchsde.sdeint(sde, y, ts, bm=bm, method=method, dt=2 * float(ts[1] - ts[0]))[-1]
        y = after_step(y.reshape(z.shape), float(ts[1])).flatten(1)
    return y.reshape(z.shape)


def _check_state(name: str, z: torch.Tensor) -> None:
    if z.dim() < 2 or not torch.is_floating_point(z):
        raise ValueError(
            f"{name} must be a floating tensor of shape (B, d, *cells), got {tuple(z.shape)} "
            f"of dtype {z.dtype}"
        )
    if not torch.isfinite(z).all():
        raise ValueError(f"{name} contains NaN or inf values")


def _check_known(known: Known | None, z_T: torch.Tensor) -> Known | None:
    if known is None:
        return None
    if not isinstance(known, tuple) or len(known) != 2:
        raise ValueError(f"known must be a tuple (z0_known, mask), got {type(known).__name__}")
    z0, mask = known
    if z0.shape != z_T.shape:
        raise ValueError(
            f"z0_known must have the shape of z_T {tuple(z_T.shape)}, got {tuple(z0.shape)}"
        )
    expected = (z_T.shape[0], 1, *z_T.shape[2:])
    if mask.dtype != torch.bool or tuple(mask.shape) != expected:
        raise ValueError(
            f"mask must be a bool tensor of shape (B, 1, *cells) = {expected}, got "
            f"{tuple(mask.shape)} of dtype {mask.dtype}"
        )
    return z0.to(z_T), mask.to(z_T.device)


def _entropy(generator: torch.Generator | None) -> int:
    device = generator.device if generator is not None else "cpu"
    return int(torch.randint(0, 2**62, (), generator=generator, device=device))


def _check_call(
    schedule: OUSchedule,
    z_T: torch.Tensor,
    sampler: SamplerSettings,
    model_variance: str,
    known: Known | None,
    to_time: int,
    record: Record | None,
) -> Known | None:
    """Refuses the arguments of :func:`reverse_sample` that do not go together; returns
    ``known`` on the device and dtype of ``z_T``."""
    _check_state("z_T", z_T)
    if not isinstance(sampler, SamplerSettings):
        raise TypeError(f"sampler must be a SamplerSettings, got {type(sampler).__name__}")
    sampler.check_chain(schedule.num_steps)
    if to_time not in (0, 1):
        raise ValueError(f"to_time must be 0 or 1, got {to_time!r}")
    if record is not None and sampler.name != "ancestral":
        raise ValueError(f"record applies to the 'ancestral' sampler, got {sampler.name!r}")
    schedule.model_variance_table(model_variance)
    known = _check_known(known, z_T)
    if sampler.name in ("sde", "ode") and known is not None and sampler.sample_steps is None:
        raise ValueError(
            "inpainting with the 'sde' or 'ode' sampler needs a fixed number of steps "
            "(--sample-steps)"
        )
    return known


def _solver_progress(on_step: OnStep | None, span: float, steps: int | None):
    """``on_time(u)`` for :class:`_FlowSDE`: reports ``on_step(done, total)`` once the solver
    time u in [0, ``span``] has passed one more of ``total`` equal parts (``steps``, or
    :data:`ADAPTIVE_PROGRESS_PARTS` for adaptive steps), each count once; ``None`` without
    ``on_step``."""
    if on_step is None:
        return None
    total, shown = steps or ADAPTIVE_PROGRESS_PARTS, [0]

    def on_time(u: float) -> None:
        done = min(total, int(u / span * total * _STEP_SLACK))
        if done > shown[0]:
            shown[0] = done
            on_step(done, total)

    return on_time


def _flow(
    schedule: OUSchedule,
    denoiser: Denoiser,
    z: torch.Tensor,
    sampler: SamplerSettings,
    known: Known | None,
    generator: torch.Generator | None,
    eps_known: torch.Tensor | None,
    entropy: int,
    to_time: int,
    on_step: OnStep | None,
) -> torch.Tensor:
    """The ``"sde"`` / ``"ode"`` sampler of :func:`reverse_sample` from ``z: (B, d, *cells)``
    (the known cells already imposed at s_T)."""
    T, steps, method = schedule.num_steps, sampler.sample_steps, sampler.solver
    s_T, s_1 = float(schedule.times[T]), float(schedule.times[1])
    is_sde = sampler.name == "sde"
    sde = _FlowSDE(
        schedule,
        denoiser,
        z.shape,
        origin=s_T,
        sign=-1.0,
        score_weight=1.0 if is_sde else 0.5,
        diffusion=math.sqrt(schedule.eta2) if is_sde else 0.0,
        sde_type="stratonovich" if method in _STRATONOVICH else "ito",
        on_time=_solver_progress(on_step, s_T - s_1, steps),
    )

    def after_step(z_new: torch.Tensor, u: float) -> torch.Tensor:
        abar = math.exp(-2.0 * schedule.theta * (s_T - u))
        return _impose_known(schedule, z_new, known, abar, generator, eps_known)

    z = _solve(sde, z, s_T - s_1, steps, method, entropy, None if known is None else after_step)
    if sde.on_time is not None:
        sde.on_time(s_T - s_1)  # the end of the last step
    if to_time == 1:
        return z
    t = _indices(1, z)
    z0 = schedule.predict_z0(z, denoiser(z, t), t)
    return _impose_known(schedule, z0, known, 1.0, generator)


@torch.no_grad()
def reverse_sample(
    schedule: OUSchedule,
    denoiser: Denoiser,
    z_T: torch.Tensor,
    sampler: SamplerSettings = ANCESTRAL,
    *,
    model_variance: str = "beta_tilde",
    known: Known | None = None,
    generator: torch.Generator | None = None,
    to_time: int = 0,
    record: Record | None = None,
    on_step: OnStep | None = None,
) -> torch.Tensor:
    """z^0 (or z^1) ``(B, d, *cells)`` from ``z_T: (B, d, *cells)`` by the sampler ``sampler``.

    Args:
        schedule: the OU bridge.  denoiser: eps_theta (see the module docstring).
        z_T: start of the backward chain, e.g. a draw of N(z*, sigma2 I).
        sampler: a :class:`SamplerSettings` (default: the T-step ancestral chain). By name:
            ``"ancestral"``: the T-step chain p_theta (Algorithm 2) with variance
            ``model_variance``.
            ``"respaced"``: S = ``sample_steps`` (default T) DDIM steps on
            :func:`respaced_times`, noise fraction ``ddim_eta`` in [0, 1] (eq. S1; 0:
            deterministic). The last step, tau_1 -> 0, has mean z0_hat and variance
            ddim_eta^2 sigma2 beta_1 (eq. S2), so S = T, ddim_eta = 1 is the ancestral chain with
            ``model_variance="beta_tilde"`` draw for draw.
            ``"sde"`` / ``"ode"``: the reverse-time SDE (eq. S3) / probability-flow ODE (eq. S4)
            from s_T to s_1 = ``schedule.times[1]``, then z^0 = z0_hat at t = 1 (one more
            network evaluation), solved by ``method`` (:data:`SDE_METHODS` / :data:`ODE_METHODS`,
            default ``"euler"``) in ``sample_steps`` equal steps of (s_T - s_1) / steps;
            ``None``: adaptive steps with rtol = 1e-4, atol = 1e-4 sqrt(sigma2) (torchsde's
            step-doubling control; with ``"euler"`` it stays first order and coarse, prefer
            ``"midpoint"``). The noise is additive, so Ito and Stratonovich solvers solve the
            same SDE. ``"reversible_heun"`` amplifies errors where the drift is stiff (data
            variance << sigma2 near s_1): use it with many steps.
        model_variance: ``"beta_tilde"`` or ``"beta"``, for ``"ancestral"`` only.
        known: ``(z0_known: (B, d, *cells), mask: (B, 1, *cells) bool)``, True on known cells:
            inpainting by replacement. At the start and after every step, at time s, the known
            cells are set to a draw of q(z^s | z0_known) (eq. 3; for ``"ode"`` with one fixed
            noise draw, so the ODE stays deterministic); at the end they equal z0_known.
            For ``"sde"``/``"ode"`` this needs fixed ``sample_steps``.
        generator: the source of every random draw (for ``"sde"``, of the Brownian path's seed).
        to_time: 0 (z^0, the paper's chain) or 1 (z^1, where the tight chain reads its codes
            out): the ancestral chain stops after step 2, the respaced one at tau_1 = 1 (or
            steps straight from T to 1 when S = 1), the SDE/ODE at s_1 without the final z0_hat.
        record: ``record(t, z^t)`` after every step of the ``"ancestral"`` sampler (plots).
        on_step: ``on_step(done, total)`` as the sampler progresses (progress bars): after
            each of its ``total`` steps; for ``"sde"``/``"ode"`` as the solver's time passes
            each of ``sample_steps`` equal parts (:data:`ADAPTIVE_PROGRESS_PARTS` parts when
            adaptive). It draws nothing: the result is the same with or without it.
    Returns:
        z^{to_time}, shape and dtype of ``z_T``.
    """
    known = _check_call(schedule, z_T, sampler, model_variance, known, to_time, record)
    name, T = sampler.name, schedule.num_steps
    # The Brownian path's seed is drawn first, so that inpainting leaves the path unchanged.
    entropy = _entropy(generator) if name == "sde" else 0
    eps_known = _randn(z_T, generator) if known is not None and name == "ode" else None
    z = _impose_known(schedule, z_T, known, float(schedule.abar[T]), generator, eps_known)
    if name == "ancestral":
        return _ancestral(
            schedule, denoiser, z, model_variance, known, generator, to_time, record, on_step
        )
    if name == "respaced":
        ddim_eta = 1.0 if sampler.ddim_eta is None else sampler.ddim_eta
        steps = T if sampler.sample_steps is None else sampler.sample_steps
        return _respaced(schedule, denoiser, z, steps, ddim_eta, known, generator, to_time, on_step)
    return _flow(
        schedule, denoiser, z, sampler, known, generator, eps_known, entropy, to_time, on_step
    )


@torch.no_grad()
def encode_ode(
    schedule: OUSchedule,
    denoiser: Denoiser,
    z0: torch.Tensor,
    sampler: SamplerSettings,
) -> torch.Tensor:
    """z^T ``(B, d, *cells)``: the probability-flow ODE (eq. S4) run forward from z^0.

    Starts at s_1 from the mean z* + sqrt(abar_1)(z^0 - z*) of q(z^1 | z^0) (its noise,
    of variance sigma2 beta_1, is left out) and integrates to s_T with the ``"ode"`` sampler
    ``sampler`` (its ``sample_steps`` equal steps of its ``method``; ``None`` steps:
    adaptive). ``reverse_sample(..., sampler)`` of the result gives z^0 back up to the solvers'
    errors (eq. S5).
    """
    _check_state("z0", z0)
    if not isinstance(sampler, SamplerSettings) or sampler.name != "ode":
        raise ValueError(f"encode_ode runs the 'ode' sampler, got {sampler!r}")
    method = sampler.solver
    T = schedule.num_steps
    s_T, s_1 = float(schedule.times[T]), float(schedule.times[1])
    zs = schedule.z_star
    z1 = zs + math.sqrt(float(schedule.abar[1])) * (z0 - zs)
    sde = _FlowSDE(
        schedule,
        denoiser,
        z0.shape,
        origin=s_1,
        sign=1.0,
        score_weight=0.5,
        diffusion=0.0,
        sde_type="stratonovich" if method in _STRATONOVICH else "ito",
    )
    return _solve(sde, z1, s_T - s_1, sampler.sample_steps, method, entropy=0)
