"""The learned backward chain p_theta(z^{0:T}) as Pyro distributions and sites (docs/maths.md).

    z^T ~ N(z*, sigma2 I),   z^{t-1} | z^t ~ N(mu~_t(z^t, z0_hat), sigma2 v_t I).

Two formulations share the chain:

- :class:`BridgeCodePrior` (the default, "tight", s. 6): the chain starts at the code itself and
  z0_hat is the mean of a categorical head over the codes (:class:`~pbridge.code_head.CodeHead`);
  one Pyro site over the code grid z_q^0 whose ``log_prob`` is an unbiased estimate of the bound
  on log p_theta(z_q^0), and whose ``sample`` runs the chain and reads the codes out at t = 1.
- :class:`DiffusionPrior` (the paper's literal formulation, s. 3): one site for a continuous
  z^0 whose ``log_prob`` is the random-step estimate of the chain's bound on log p_theta(z^0);
  z0_hat from a noise guess eps_theta(z^t, t).

:func:`chain_model_sites` / :func:`chain_guide_sites` put every step of the chain in a Pyro
program instead (the full-chain estimator). Drawing the chain is
:func:`pbridge.samplers.reverse_sample`'s job (one engine for every sampler).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import TorchDistribution
from pyro.poutine.messenger import Messenger
from torch import nn
from torch.distributions import constraints

from .code_head import CodeHead, mean_code
from .codebook import code_indices, gather_codes
from .ou_bridge import OUSchedule
from .samplers import ANCESTRAL, OnStep, SamplerSettings, reverse_sample, reverse_step

_NO_SHAPE = torch.Size()

__all__ = [
    "BridgeCodePrior",
    "StepCostTracker",
    "DiffusionPrior",
    "reverse_step",
    "chain_model_sites",
    "chain_guide_sites",
    "importance_proposal",
    "stratified_steps",
    "readout_and_strata",
    "TakesOptions",
    "PriorOptions",
    "prior_options",
]

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _steps(t: int, like: torch.Tensor) -> torch.Tensor:
    return torch.full((like.shape[0],), t, dtype=torch.long, device=like.device)


def chain_model_sites(
    schedule: OUSchedule,
    denoiser: Denoiser,
    event_shape: torch.Size,
    batch_size: int,
    model_variance: str = "beta_tilde",
    like: torch.Tensor | None = None,
    last: int = 0,
) -> torch.Tensor:
    """Sample sites ``z_e_T .. z_e_{last}`` of the backward chain; returns z^{last}
    ``(B, *event_shape)``. ``last``: 0 (the paper's chain) or 1 (the tight chain, read out at
    t = 1). Call inside the data plate. ``like`` fixes dtype and device.
    """
    like = torch.zeros(()) if like is None else like
    sd = math.sqrt(schedule.sigma2)
    loc = like.new_full((batch_size, *event_shape), schedule.z_star)
    n = len(event_shape)
    z = pyro.sample(f"z_e_{schedule.num_steps}", dist.Normal(loc, sd).to_event(n))
    for t in pyro.markov(range(schedule.num_steps, last, -1)):
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
    With ``strata = S``, S steps per item, one in each of S near-equal strata of 1..T
    (:func:`stratified_steps`), each weighted by its stratum's size (lower variance, S times
    the cost; for evaluation).

    Args:
        schedule: the OU bridge.
        denoiser: eps_theta (an ``nn.Module``).
        event_shape: ``(d, *cells)``.  batch_size: B.
        model_variance: ``"beta"`` or ``"beta_tilde"``
            (see :meth:`OUSchedule.model_variance_table`).
        proposal: q(t) over t = 1..T, shape ``(T,)``; ``None`` for uniform.
        strata: S, see above (at most T used); ``None``: one step per item from ``proposal``.
        denoiser_loss: ``"elbo"`` (every gradient from the bound) or ``"simple"``: the value is
            still the bound and the gradient reaching z^0 is the bound's, but the denoiser's own
            parameters get the gradient of ``mean_t(w_t) ||eps - eps_theta||^2 / q(t)``
            (L_simple, not the ELBO), in the same single denoiser pass.
        sampler: the :class:`~pbridge.samplers.SamplerSettings` of ``sample``, which draws
            z^T ~ N(z*, sigma2 I) and runs the backward chain to z^0 with ``denoiser``
            (:func:`pbridge.samplers.reverse_sample`), telling ``on_step(done, total)`` its
            progress.
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
        strata: int | None = None,
        sampler: SamplerSettings = ANCESTRAL,
        on_step: OnStep | None = None,
        validate_args: bool | None = None,
    ) -> None:
        if denoiser_loss not in ("elbo", "simple"):
            raise ValueError(f"denoiser_loss must be 'elbo' or 'simple', got {denoiser_loss!r}")
        if strata is not None and strata < 1:
            raise ValueError(f"strata must be >= 1, got {strata}")
        if strata is not None and proposal is not None:
            raise ValueError("stratified steps need the uniform proposal")
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
        self.strata, self.sampler, self.on_step = strata, sampler, on_step
        super().__init__(torch.Size([batch_size]), torch.Size(event_shape), validate_args)

    def with_options(
        self,
        sampler: SamplerSettings | None = None,
        strata: int | None = None,
        on_step: OnStep | None = None,
    ) -> DiffusionPrior:
        """This prior drawing with ``sampler`` (its progress told to ``on_step``) and scored
        with ``strata`` stratified steps per item (uniform steps) where given; the others as
        they are."""
        return DiffusionPrior(
            self.schedule,
            self.denoiser,
            tuple(self.event_shape),
            self.batch_shape[0],
            model_variance=self.model_variance,
            proposal=self.proposal if strata is None else None,
            denoiser_loss=self.denoiser_loss,
            strata=self.strata if strata is None else strata,
            sampler=self.sampler if sampler is None else sampler,
            on_step=self.on_step if on_step is None else on_step,
            validate_args=self._validate_args,
        )

    def expand(self, batch_shape, _instance=None):
        if tuple(batch_shape) != tuple(self.batch_shape):
            raise NotImplementedError("DiffusionPrior cannot be expanded to a new batch shape")
        return self

    def _bound_steps(self, z0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """t ``(B, S)`` and the weight of each ``(B, S)``: one step in each of S = ``strata``
        near-equal strata of 1..T (:func:`stratified_steps`), or S = 1 step from q(t) weighted
        by 1 / q(t)."""
        T = self.schedule.num_steps
        if self.strata is not None:
            t, weight = stratified_steps(1, T, self.strata, z0.shape[0], z0.device)
            return t, weight.to(z0.dtype)
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
        t, weight = self._bound_steps(value)
        S = t.shape[1]
        terms = self.step_terms(value.repeat_interleave(S, dim=0), t.flatten()).view(-1, S)
        return -self.schedule.prior_kl(value) - (weight * terms).sum(-1)

    def sample(self, sample_shape: torch.Size = _NO_SHAPE) -> torch.Tensor:
        if sample_shape != _NO_SHAPE:
            raise NotImplementedError("DiffusionPrior draws one batch per call")
        param = next(self.denoiser.parameters())
        z_T = self.schedule.stationary_draw(param.new_empty(self.batch_shape + self.event_shape))
        return reverse_sample(
            self.schedule,
            self.denoiser,
            z_T,
            self.sampler,
            model_variance=self.model_variance,
            on_step=self.on_step,
        )


class StepCostTracker(nn.Module):
    """q(t) proportional to sqrt(E[L_t^2]), tracked during training (Nichol & Dhariwal 2021).

    Buffers (saved in checkpoints, so a resumed run proposes the same steps): ``second_moment``
    ``(T,)``, a moving average of the squared step term at each t (decay ``decay`` per batch
    that contains t), and ``seen`` ``(T,)``. Until every t has been seen, and while every m_t is
    0 (a short chain can read every code exactly), the proposal is uniform; then
    ``q(t) = (1 - floor) sqrt(m_t) / sum_s sqrt(m_s) + floor / T``, so 1/q(t) <= T / floor.
    """

    def __init__(self, num_steps: int, decay: float = 0.99, floor: float = 0.2) -> None:
        super().__init__()
        if not 0.0 < decay < 1.0 or not 0.0 < floor <= 1.0:
            raise ValueError(f"need 0 < decay < 1 and 0 < floor <= 1, got {decay} and {floor}")
        self.decay, self.floor = decay, floor
        self.register_buffer("second_moment", torch.zeros(num_steps, dtype=torch.float64))
        self.register_buffer("seen", torch.zeros(num_steps, dtype=torch.bool))

    def proposal(self) -> torch.Tensor:
        """q(t) over t = 1..T, ``(T,)`` float64."""
        T = self.seen.numel()
        uniform = torch.full_like(self.second_moment, 1.0 / T)
        root = self.second_moment.sqrt()
        total = root.sum()
        if not bool(self.seen.all()) or not total > 0:  # also uniform when every term was 0
            return uniform
        return (1.0 - self.floor) * root / total + self.floor * uniform

    @torch.no_grad()
    def update(self, t: torch.Tensor, terms: torch.Tensor) -> None:
        """Fold in the step terms ``terms: (B,)`` drawn at ``t: (B,)`` in 1..T."""
        index = (t - 1).to(self.seen.device)
        sums = torch.zeros_like(self.second_moment).index_add_(0, index, terms.double().pow(2))
        counts = torch.zeros_like(self.second_moment).index_add_(
            0, index, torch.ones_like(sums[index])
        )
        hit = counts > 0
        mean = sums / counts.clamp_min(1.0)
        fresh = hit & ~self.seen
        moved = self.decay * self.second_moment + (1.0 - self.decay) * mean
        self.second_moment.copy_(
            torch.where(fresh, mean, torch.where(hit, moved, self.second_moment))
        )
        self.seen |= hit


def stratified_steps(
    first: int, last: int, strata: int, batch_size: int, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One uniform t in each of S = min(``strata``, last - first + 1) near-equal strata of
    first..last (S = last - first + 1: every step once): the one stratification scheme of both
    priors (the paper's over 1..T, the tight one's over 2..T beside the read-out step).

    Returns t ``(B, S)`` and the weights ``(B, S)``, each stratum's size, so that
    sum(weight * L_t) is unbiased for sum_{t=first}^{last} L_t.
    """
    if last < first or strata < 1:
        raise ValueError(f"need first <= last and strata >= 1, got {first}..{last}, {strata}")
    strata = min(strata, last - first + 1)
    edges = torch.linspace(first, last + 1, strata + 1, device=device).round().long()
    low, size = edges[:-1], edges[1:] - edges[:-1]
    offset = (torch.rand(batch_size, strata, device=device) * size).long().clamp_max(size - 1)
    return low + offset, size.float().expand(batch_size, -1)


def readout_and_strata(
    num_steps: int, strata: int, batch_size: int, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The tight bound's evaluation steps: t = 1 (the read-out, weight 1), then
    :func:`stratified_steps` over 2..T. Returns t and the weights, ``(B, 1 + S)`` each."""
    if num_steps < 2:
        raise ValueError(f"need T >= 2, got T = {num_steps}")
    t, weight = stratified_steps(2, num_steps, strata, batch_size, device)
    one = torch.ones(batch_size, 1, device=device)
    return torch.cat([one.long(), t], 1), torch.cat([one, weight], 1)


class BridgeCodePrior(TorchDistribution):
    """p_theta(z_q^0) of the tight bridge over code grids (docs/maths.md, s. 6).

    The value is a grid of code vectors ``(B, d, *cells)`` (as :class:`CodeVector`'s); the
    prior reads the index k of every cell and scores it. ``log_prob`` is an unbiased estimate
    of the bound

        log p(k) >= sum_i E[log softmax(l(z^1, 1))_{i, k_i}]                   (read-out)
                    - KL(q(z^T | k) || N(z*, sigma2 I))                          (closed form)
                    - sum_{t=2}^T E[0.5 (SNR_{t-1} - SNR_t) / sigma2 ||e_k - z0_hat(z^t, t)||^2]

    with z^t ~ q(z^t | k) = N(z* + sqrt(abar_t)(e_k - z*), sigma2 (1 - abar_t) I):

    - training (``strata=None``): one t in 1..T per item drawn from ``proposal`` (uniform when
      ``None``), its term weighted by 1 / q(t);
    - evaluation (``strata=S``): the read-out term at one z^1 draw (weight 1) and one t in each
      of S strata of 2..T (:func:`readout_and_strata`).

    The gradient of the cross-entropy of the head on the true code at the drawn t, times
    ``aux_weight``, is added to the gradient (never to the value): the reported bound is exact.

    Args:
        head: the categorical head (its codebook, schedule and network).
        batch_size: B.  event_shape: ``(d, *cells)``.
        proposal / tracker / strata / aux_weight: see above; ``tracker`` (a
            :class:`StepCostTracker`) is updated with the drawn terms in training.
        sampler: the :class:`~pbridge.samplers.SamplerSettings` of ``sample``, which draws
            z^T ~ N(z*, sigma2 I), runs the backward chain with ``head`` to t = 1
            (:func:`pbridge.samplers.reverse_sample`, telling ``on_step(done, total)`` its
            progress) and draws the codes from the read-out there.
    """

    arg_constraints: dict = {}
    support = constraints.real
    has_rsample = False

    def __init__(
        self,
        head: CodeHead,
        batch_size: int,
        event_shape: tuple[int, ...],
        proposal: torch.Tensor | None = None,
        tracker: StepCostTracker | None = None,
        strata: int | None = None,
        aux_weight: float = 0.0,
        sampler: SamplerSettings = ANCESTRAL,
        on_step: OnStep | None = None,
        validate_args: bool | None = None,
    ) -> None:
        T = head.schedule.num_steps
        if proposal is not None and proposal.shape != (T,):
            raise ValueError(f"proposal must have shape ({T},), got {tuple(proposal.shape)}")
        if aux_weight < 0:
            raise ValueError(f"aux_weight must be >= 0, got {aux_weight}")
        self.head, self.proposal, self.tracker = head, proposal, tracker
        self.strata, self.aux_weight = strata, aux_weight
        self.sampler, self.on_step = sampler, on_step
        self._readout_logits: torch.Tensor | None = None
        super().__init__(torch.Size([batch_size]), torch.Size(event_shape), validate_args)

    @property
    def conditional_logits(self) -> torch.Tensor | None:
        """The read-out's logits ``(B, *cells, K)`` at the z^1 of this prior's last draw,
        p_theta(z_q^0 | z^1) (:class:`~pbridge.variant.CodeDistribution`); ``None`` before a
        draw."""
        return self._readout_logits

    def with_options(
        self,
        sampler: SamplerSettings | None = None,
        strata: int | None = None,
        on_step: OnStep | None = None,
    ) -> BridgeCodePrior:
        """This prior drawing with ``sampler`` (its progress told to ``on_step``) and scored
        with the read-out and ``strata`` stratified steps per item (no proposal, no tracking)
        where given."""
        stratified = strata is not None
        return BridgeCodePrior(
            self.head,
            self.batch_shape[0],
            tuple(self.event_shape),
            proposal=None if stratified else self.proposal,
            tracker=None if stratified else self.tracker,
            strata=strata if stratified else self.strata,
            aux_weight=self.aux_weight,
            sampler=self.sampler if sampler is None else sampler,
            on_step=self.on_step if on_step is None else on_step,
            validate_args=self._validate_args,
        )

    def expand(self, batch_shape, _instance=None):
        if tuple(batch_shape) != tuple(self.batch_shape):
            raise NotImplementedError("BridgeCodePrior cannot be expanded to a new batch shape")
        return self

    def indices(self, value: torch.Tensor) -> torch.Tensor:
        """The code index ``(B, *cells)`` of every cell of a value ``(B, d, *cells)``."""
        return code_indices(value, self.head.codebook())

    def cell_terms(
        self, k: torch.Tensor, t: torch.Tensor, eps: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The bound's term of step t at every cell and the head's cross-entropy there,
        ``(B, *cells)`` each.

        ``k: (B, *cells)`` codes, ``t: (B,)`` in 1..T, z^t = mean of q(z^t | k) +
        sqrt(sigma2 (1 - abar_t)) ``eps`` (drawn when not given), the whole grid at once. t = 1:
        the negative read-out log-probability of the cell's code; t >= 2: 0.5 (SNR_{t-1} -
        SNR_t) / sigma2 ||e_k - z0_hat(z^t, t)||^2 of the cell (docs/maths.md (12)).
        """
        schedule, codes = self.head.schedule, self.head.codebook()
        e_k = gather_codes(k, codes)
        mean, var = schedule.marginal(e_k, t)
        eps = torch.randn_like(e_k) if eps is None else eps
        logits = self.head.logits(mean + var.sqrt() * eps, t)
        cross_entropy = -logits.log_softmax(-1).gather(-1, k.unsqueeze(-1)).squeeze(-1)
        sq_err = (e_k - mean_code(logits, codes)).pow(2).sum(1)
        weight = schedule.code_step_weight(t.clamp_min(2).cpu()).to(sq_err)
        cells = (-1,) + (1,) * (k.dim() - 1)
        first = (t == 1).view(cells)
        return torch.where(first, cross_entropy, weight.view(cells) * sq_err), cross_entropy

    def step_terms(
        self, value: torch.Tensor, t: torch.Tensor, eps: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The bound's term of step t per item, ``(B,)``, for a value ``(B, d, *cells)`` (its
        codes read as in :meth:`log_prob`): :meth:`cell_terms` summed over the cells, as
        :class:`DiffusionPrior`'s ``step_terms`` of z^0."""
        return self.cell_terms(self.indices(value), t, eps)[0].flatten(1).sum(-1)

    def _bound_steps(self, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        T = self.head.schedule.num_steps
        if self.strata is not None:
            return readout_and_strata(T, self.strata, batch, device)
        q = (
            torch.full((T,), 1.0 / T, dtype=torch.float64)
            if self.proposal is None
            else self.proposal
        )
        q = q.to(device)
        t = torch.multinomial(q, batch, replacement=True)[:, None] + 1
        return t, 1.0 / q[t - 1]

    def _estimate(self, k: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Every cell's share of the bound, ``(B, *cells)``, from the steps ``t: (B, n)`` of
        :meth:`_bound_steps` (returned with the terms ``(B, n, *cells)`` and the cross-entropies
        of the head there, ``(B, n, *cells)``)."""
        t, weight = self._bound_steps(k.shape[0], k.device)
        n = t.shape[1]
        terms, cross_entropy = self.cell_terms(k.repeat_interleave(n, 0), t.flatten())
        terms = terms.view(k.shape[0], n, *k.shape[1:])
        cross_entropy = cross_entropy.view_as(terms)
        weight = weight.to(terms).view(*t.shape, *(1,) * (k.dim() - 1))
        e_k = gather_codes(k, self.head.codebook())
        cells = -self.head.schedule.prior_kl(e_k, per_cell=True) - (weight * terms).sum(1)
        return cells, t, terms, cross_entropy

    def cell_log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """Every cell's share of :meth:`log_prob`'s estimate, ``(B, *cells)`` (its sum over the
        cells is ``log_prob``'s value): the cell's read-out, L_T and step terms, all at the
        whole grid's z^t ~ q(z^t | k). Summed over a set M of cells, an unbiased estimate of a
        lower bound on log p(k_M | k_O) of the inpainting model that holds the other cells O
        (docs/maths.md s. 7)."""
        if self._validate_args:
            self._validate_sample(value)
        return self._estimate(self.indices(value))[0]

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        cells, t, terms, cross_entropy = self._estimate(self.indices(value))
        bound = cells.flatten(1).sum(-1)
        if torch.is_grad_enabled() and self.tracker is not None and self.strata is None:
            self.tracker.update(t.flatten(), terms.detach().flatten(2).sum(-1).flatten())
        if torch.is_grad_enabled() and self.aux_weight > 0:
            aux = self.aux_weight * cross_entropy.flatten(1).sum(-1)
            bound = bound - (aux - aux.detach())
        return bound

    def sample(self, sample_shape: torch.Size = _NO_SHAPE) -> torch.Tensor:
        """Codes drawn by the backward chain to z^1 and the categorical read-out there; the read-out
        logits are kept, :attr:`conditional_logits` ``(B, *cells, K)`` (the most probable
        codes)."""
        if sample_shape != _NO_SHAPE:
            raise NotImplementedError("BridgeCodePrior draws one batch per call")
        codes = self.head.codebook().detach()
        schedule = self.head.schedule
        z_T = schedule.stationary_draw(codes.new_empty(self.batch_shape + self.event_shape))
        z = reverse_sample(schedule, self.head, z_T, self.sampler, to_time=1, on_step=self.on_step)
        t = torch.ones(z.shape[0], dtype=torch.long, device=z.device)
        self._readout_logits = self.head.logits(z, t)
        k = torch.distributions.Categorical(logits=self._readout_logits).sample()
        return gather_codes(k, codes)


@runtime_checkable
class TakesOptions(Protocol):
    """A prior site's distribution that draws and scores with options:
    :class:`BridgeCodePrior`, :class:`DiffusionPrior` and the PixelCNN's prior
    (:class:`~pbridge.pixelcnn.PixelCNNPrior`, which counts its cells and takes no sampler or
    strata)."""

    def with_options(
        self,
        sampler: SamplerSettings | None = None,
        strata: int | None = None,
        on_step: OnStep | None = None,
    ) -> TorchDistribution:
        """This distribution drawing with ``sampler`` (its progress told to
        ``on_step(done, total)``) and scoring with ``strata`` stratified steps per item, where
        given."""
        ...


class PriorOptions(Messenger):
    """A Pyro handler: the prior site (a :class:`TakesOptions`: the bridge's
    :class:`BridgeCodePrior` or :class:`DiffusionPrior`, the PixelCNN's prior) draws with
    ``sampler``, telling ``on_step(done, total)`` its progress, and scores with ``strata``
    stratified steps per item, where given (:meth:`BridgeCodePrior.with_options`); every other
    site is left as it is.

    This is how the options of one evaluation or one batch of draws reach the prior site
    without entering the model's signature: ``model(x, *more)`` stays the program Pyro's
    ``Trace_ELBO``, ``Predictive`` and the guide share, and the options are arguments of the
    function that wraps it (:func:`prior_options`), as ``poutine.condition`` wraps a model
    with its data. A model without such a site (the VQ-VAE, the full-chain estimator) runs
    unchanged.
    """

    def __init__(
        self,
        sampler: SamplerSettings | None = None,
        strata: int | None = None,
        on_step: OnStep | None = None,
    ) -> None:
        super().__init__()
        self.sampler, self.strata, self.on_step = sampler, strata, on_step

    def _pyro_sample(self, msg: dict) -> None:
        if isinstance(msg["fn"], TakesOptions):
            msg["fn"] = msg["fn"].with_options(self.sampler, self.strata, self.on_step)


def prior_options(
    fn: Callable,
    sampler: SamplerSettings | None = None,
    strata: int | None = None,
    on_step: OnStep | None = None,
) -> Callable:
    """``fn`` (a model) with its prior site drawing by ``sampler`` (its progress told to
    ``on_step(done, total)``) and scoring with ``strata`` stratified steps per item
    (:class:`PriorOptions`); ``fn`` itself if none is given."""
    if sampler is None and strata is None and on_step is None:
        return fn
    return PriorOptions(sampler, strata, on_step)(fn)
