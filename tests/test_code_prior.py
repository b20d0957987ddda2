"""The bridge prior fitted to codes you bring (docs/codes.md): through Pyro SVI
(``pbridge.train`` on :class:`~pbridge.models.code_prior.BridgeCodeModel`), on Markov walks of
known entropy."""

import math
import re
from pathlib import Path

import pytest
import torch
from torch import nn

import pbridge
from pbridge.code_head import check_chain_network
from pbridge.models.builders import build_chain_network
from pbridge.models.code_prior import BridgeCodeModel
from pbridge.ou_bridge import image_schedule

K, CELLS = 8, 5
"""The walks of the ``markov_walks`` fixture (tests/conftest.py): 8 codes, 5 cells."""
ENTROPY_RATE = (3 + 4 * 1) / CELLS
"""Bits per cell of a walk: a uniform first code (3 bits), then +-1 mod 8 (1 bit per step)."""
UNIGRAM = 3.0
"""Bits per cell of the codes drawn independently from their marginal (uniform on 8)."""


def circle_codes() -> torch.Tensor:
    """K codes evenly spaced on the unit circle, ``(K, 2)``."""
    angles = torch.arange(K) * 2 * math.pi / K
    return torch.stack([angles.cos(), angles.sin()], 1)


def _model() -> BridgeCodeModel:
    net = build_chain_network(2, K, (CELLS,), width=16, blocks=1)
    return BridgeCodeModel(circle_codes(), net, image_schedule(100, 1e-3, 0.18), (CELLS,))


@pytest.mark.slow
def test_bound_on_markov_codes_lies_between_the_entropy_rate_and_the_unigram_entropy(
    markov_code_model, markov_walks
):
    """On 500 fresh walks (exact entropy 1.4 bits per cell, unigram 3): the bound (100
    strata) lies above the exact entropy (it is a bound: within 3 standard errors) and at least
    1 bit per cell below the unigram entropy."""
    walks = markov_walks(500, torch.Generator().manual_seed(1))
    per_item = markov_code_model.bound_bits_per_cell(walks, strata=99)
    bits, stderr = float(per_item.mean()), float(per_item.std()) / math.sqrt(500)
    assert bits > ENTROPY_RATE - 3 * stderr, (bits, stderr)
    assert bits < UNIGRAM - 1.0, bits


@pytest.mark.slow
def test_prior_draws_keep_the_allowed_transitions(markov_code_model):
    """Of the 4 x 500 transitions of 500 prior draws (the T-step ancestral chain), at least 90%
    are +-1 mod 8 (codes drawn independently: 25%)."""
    torch.manual_seed(2)
    drawn = markov_code_model.sample_codes(500)
    assert drawn.shape == (500, CELLS) and drawn.dtype == torch.long
    step = (drawn[:, 1:] - drawn[:, :-1]) % K
    allowed = float(((step == 1) | (step == K - 1)).float().mean())
    assert allowed >= 0.9, allowed


def test_a_prior_draw_stops_the_chain_at_z1_and_reads_out_there():
    """``sample_codes`` with the ancestral chain evaluates the head at t = T, ..., 2 (the steps
    z^T -> z^1) and then once at t = 1, the read-out of z^1 (self-conditioned: two network
    calls per evaluation, the first with a zero estimate of z^0); a chain run on to z^0 would
    evaluate it at t = 1 twice (the step z^1 -> z^0, then the read-out of z^0, which the head
    never learned)."""
    model = _model().eval()
    seen: list[int] = []
    model.network.register_forward_hook(lambda _m, args, _out: seen.append(int(args[1][0])))
    torch.manual_seed(0)
    drawn = model.sample_codes(3)
    assert drawn.shape == (3, CELLS)
    assert seen == [t for t in range(100, 0, -1) for _ in range(2)], seen[-6:]


def test_the_codebook_is_fixed_and_only_the_network_trains():
    """A few SVI steps move the network and leave the codes as given (a buffer: no parameter
    of the codebook, no warning from ``pyro.module``, which the suite turns into errors)."""
    model = _model()
    before = {n: p.clone() for n, p in model.network.named_parameters()}
    walks = torch.randint(0, K, (64, CELLS), generator=torch.Generator().manual_seed(0))
    pbridge.train(model, walks, pbridge.TrainSettings(steps=3, batch_size=16))
    assert torch.equal(model.codebook(), circle_codes())
    assert [n for n, _ in model.named_parameters() if not n.startswith("network.")] == []
    assert any(not torch.equal(p, before[n]) for n, p in model.network.named_parameters())


@pytest.mark.parametrize(
    "codes, message",
    [
        (torch.zeros(8, CELLS), "codes must be integer indices"),
        (torch.full((8, CELLS), K), f"code {K} in the data is not one of the codebook's {K}"),
        (torch.full((8, CELLS), -1), "code -1 in the data"),
        (torch.zeros(8, CELLS + 1, dtype=torch.long), r"data items have shape \(6,\)"),
    ],
)
def test_codes_that_do_not_fit_are_refused_before_training(codes, message):
    with pytest.raises((TypeError, ValueError), match=message):
        pbridge.train(_model(), codes, pbridge.TrainSettings(steps=1, batch_size=4))


class _Shifted(nn.Module):
    """A conforming network whose output starts away from zero."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, z_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(z_in, t) + 1.0


@pytest.mark.parametrize(
    "network, message",
    [
        (
            build_chain_network(2, K, (CELLS,), self_condition=False),
            r"must take z_in of shape \(B, 4, 5\)",
        ),
        (build_chain_network(2, K + 1, (CELLS,)), r"must return \(B, K, \*cells\) = \(B, 8, 5\)"),
        (_Shifted(build_chain_network(2, K, (CELLS,))), "must start at zero"),
    ],
)
def test_a_network_that_breaks_the_chain_contract_is_named(network, message):
    with pytest.raises(ValueError, match=message):
        check_chain_network(network, 2, K, (CELLS,), self_condition=True)


@pytest.mark.parametrize("cells", [(CELLS,), (4, 4)])
def test_the_builder_s_networks_keep_the_contract(cells):
    for self_condition in (True, False):
        net = build_chain_network(2, K, cells, self_condition, width=16, blocks=1)
        check_chain_network(net, 2, K, cells, self_condition)


DOC = Path(__file__).resolve().parents[1] / "docs" / "codes.md"


def test_the_documented_example_runs():
    """docs/codes.md's example, as written: it trains, draws codes of the shape it says and
    bounds every item."""
    block = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)[0]
    namespace: dict = {}
    exec(compile(block, str(DOC), "exec"), namespace)
    drawn, bits = namespace["drawn"], namespace["bits"]
    assert drawn.shape == (16, 5) and drawn.dtype == torch.long
    assert bits.shape == (100,) and torch.isfinite(bits).all()
