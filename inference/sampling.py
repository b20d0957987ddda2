"""Prior and posterior draws from a variant, through Pyro's effect handlers.

- Prior (Algorithm 2): the model run with its observation uncondition-ed, so every site is drawn
  from the generative program: z^T -> ... -> z^1 -> z_q^0 -> x (tight; the paper's chain runs
  to z_e^0 and draws z_q^0 | z_e^0).
- Posterior: the guide's draw of z_e^0 and z_q^0 for given data, and the decoder's mean on that
  z_q^0 (a reconstruction).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
from pyro import poutine
from torch import nn

from pbridge.bridge_prior import BridgeCodePrior
from pbridge.samplers import SAMPLERS

__all__ = ["Draws", "sample_prior", "sample_posterior", "bridge_sampler"]


def bridge_sampler(
    variant: nn.Module, sampler: str = "ancestral", steps: int | None = None, **options
) -> AbstractContextManager:
    """A context in which the variant's prior draws and inpainting use ``sampler`` with
    ``steps`` (:func:`pbridge.samplers.reverse_sample`; ``options``: ``eta``, ``method``).
    Variants without a diffusion chain (VQ-VAE, PixelCNN) accept only the default."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; expected one of {', '.join(SAMPLERS)}")
    sampling = getattr(variant, "sampling", None)
    if sampling is None:
        if sampler != "ancestral" or steps is not None or options:
            raise ValueError(
                f"a {type(variant).__name__} has no diffusion chain: the sampler "
                f"{sampler!r} with steps={steps} does not apply"
            )
        return nullcontext()
    return sampling(sampler, steps, **options)


@dataclass(frozen=True)
class Draws:
    """One draw per item.

    Attributes:
        z_e: ``(N, d, *cells)`` continuous latent z_e^0 (``None`` for variants without one: the
            VQ-VAE and the PixelCNN baseline).
        codes: ``(N, *cells)`` code indices of z_q^0 as drawn by the program.
        mode_codes: ``(N, *cells)`` the most probable code of every cell given the chain's end
            (tight: the read-out at z^1; paper: the kernel at z_e^0); ``codes`` for the
            priors without a chain (VQ-VAE, PixelCNN) and for posterior draws.
        x_mean: decoder mean on z_q^0 ``(N, ...)``.
        x: the program's draw of x (prior) or the data (posterior).
    """

    z_e: torch.Tensor | None
    codes: torch.Tensor
    mode_codes: torch.Tensor
    x_mean: torch.Tensor
    x: torch.Tensor


def _draws(variant: nn.Module, trace: poutine.Trace, x: torch.Tensor) -> Draws:
    z_e = trace.nodes["z_e_0"]["value"] if "z_e_0" in trace.nodes else None
    z_q_site = trace.nodes["z_q_0"]
    fn = z_q_site["fn"]
    codes = fn.indices(z_q_site["value"])
    if isinstance(fn, BridgeCodePrior) and fn.readout_logits is not None:
        mode_codes = fn.readout_logits.argmax(-1)  # the tight bridge's read-out at z^1
    elif any(name in trace.nodes for name in ("z_e_0", "z_e_1")):
        mode_codes = fn.logits.argmax(-1)  # p(z_q^0 | the chain's end)
    else:
        mode_codes = codes
    return Draws(
        z_e=z_e,
        codes=codes,
        mode_codes=mode_codes,
        x_mean=variant.decoder(z_q_site["value"]).mean,
        x=x,
    )


@torch.no_grad()
def sample_prior(variant: nn.Module, num: int) -> Draws:
    """``num`` draws from the generative model (every site sampled, x included)."""
    if num <= 0:
        raise ValueError(f"num must be a positive integer, got {num}")
    param = next(variant.parameters())
    shape_x = variant.data_shape
    placeholder = torch.zeros((num, *shape_x), dtype=param.dtype, device=param.device)
    trace = poutine.trace(poutine.uncondition(variant.model)).get_trace(placeholder)
    return _draws(variant, trace, trace.nodes["x"]["value"])


@torch.no_grad()
def sample_posterior(variant: nn.Module, x: torch.Tensor) -> Draws:
    """The guide's draw of z_e^0, z_q^0 for data ``x`` and the decoder mean (reconstruction)."""
    trace = poutine.trace(variant.guide).get_trace(x)
    return _draws(variant, trace, x)
