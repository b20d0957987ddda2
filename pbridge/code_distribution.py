"""z_q as a Pyro distribution over the codebook's vectors, with straight-through gradients.

The discrete state z_q of every latent cell takes one of the K code vectors. Writing the site's
value as the vector e_k (not the index k) lets the decoder read it directly and lets the guide
choose how a gradient passes through the discrete choice:

- ``"straight_through"`` (VQ-VAE style): value ``e_k + z - stop_grad(z)`` for a given continuous
  ``z``, so d(value)/dz = I and d(value)/de_k = I;
- ``"gumbel"``: value ``onehot_st @ codes`` with ``onehot_st`` drawn from Pyro's
  ``RelaxedOneHotCategoricalStraightThrough`` (hard one-hot forward, relaxed gradient).

Both are biased gradient estimators of a discrete expectation (the score-function term is
dropped), which is why the distribution reports ``has_rsample = True``.
"""

from __future__ import annotations

import torch
from pyro.distributions import RelaxedOneHotCategoricalStraightThrough, TorchDistribution
from torch.distributions import constraints, register_kl

from .codebook import categorical_kl, code_indices, gather_codes

_NO_SHAPE = torch.Size()

__all__ = ["CodeVector"]


class CodeVector(TorchDistribution):
    """Independent categoricals over code vectors, one per latent cell.

    Args:
        logits: ``(B, *cells, K)`` logits of the code of every cell (``-inf`` allowed).
        codes: ``(K, d)`` codebook.
        straight_through: ``(B, d, *cells)``, the continuous vector that receives the decoder's
            gradient under ``gradient="straight_through"``; ``None`` for no gradient path.
        gradient: ``"straight_through"`` or ``"gumbel"``.
        temperature: relaxation temperature of the ``"gumbel"`` path.
        conditional: whether ``logits`` are a distribution given an earlier draw of the program
            (the paper's kernel p(z_q^0 | z_e^0), the guide's q(z_q^0 | z_e^0), the full
            chain's read-out at z^1): :attr:`conditional_logits` then returns them. ``False``
            (the default) for a fixed prior (uniform, a learned table) or a point mass.

    ``batch_shape = (B,)``; ``event_shape = (d, *cells)``; values are code vectors, channel-first.
    """

    arg_constraints = {"logits": constraints.real}
    support = constraints.real
    has_rsample = True

    def __init__(
        self,
        logits: torch.Tensor,
        codes: torch.Tensor,
        straight_through: torch.Tensor | None = None,
        gradient: str = "straight_through",
        temperature: float = 0.5,
        conditional: bool = False,
        validate_args: bool | None = None,
    ) -> None:
        if gradient not in ("straight_through", "gumbel"):
            raise ValueError(f"gradient must be 'straight_through' or 'gumbel', got {gradient!r}")
        if logits.shape[-1] != codes.shape[0]:
            raise ValueError(
                f"logits have {logits.shape[-1]} codes but the codebook has {codes.shape[0]}"
            )
        self.logits, self.codes = logits, codes
        self.straight_through, self.gradient, self.temperature = (
            straight_through,
            gradient,
            temperature,
        )
        self.conditional = conditional
        cells = tuple(logits.shape[1:-1])
        super().__init__(logits.shape[:1], (codes.shape[1],) + cells, validate_args=validate_args)

    @property
    def conditional_logits(self) -> torch.Tensor | None:
        """``logits`` ``(B, *cells, K)`` when they are given an earlier draw of the program
        (``conditional``), else ``None`` (:class:`~pbridge.variant.CodeDistribution`)."""
        return self.logits if self.conditional else None

    def expand(self, batch_shape, _instance=None):
        if tuple(batch_shape) != tuple(self.batch_shape):
            raise NotImplementedError("CodeVector cannot be expanded to a new batch shape")
        return self

    def indices(self, value: torch.Tensor) -> torch.Tensor:
        """The code index ``(B, *cells)`` of each cell of a value ``(B, d, *cells)``."""
        return code_indices(value, self.codes)

    def sample(self, sample_shape: torch.Size = _NO_SHAPE) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def rsample(self, sample_shape: torch.Size = _NO_SHAPE) -> torch.Tensor:
        if sample_shape != _NO_SHAPE:
            raise NotImplementedError("CodeVector draws one value per call")
        if self.gradient == "gumbel":
            onehot = RelaxedOneHotCategoricalStraightThrough(
                torch.tensor(self.temperature, dtype=self.logits.dtype, device=self.logits.device),
                logits=self.logits,
            ).rsample()
            return (onehot @ self.codes).movedim(-1, 1)
        index = torch.distributions.Categorical(logits=self.logits).sample()
        value = gather_codes(index, self.codes)
        if self.straight_through is not None:
            value = value + self.straight_through - self.straight_through.detach()
        return value

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        log_p = self.logits.log_softmax(-1)
        index = self.indices(value)
        return log_p.gather(-1, index.unsqueeze(-1)).squeeze(-1).flatten(1).sum(-1)


@register_kl(CodeVector, CodeVector)
def _kl_code_vector(q: CodeVector, p: CodeVector) -> torch.Tensor:
    """Exact KL summed over cells, ``(B,)``; both must share one codebook."""
    return categorical_kl(q.logits, p.logits).flatten(1).sum(-1)
