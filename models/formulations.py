"""The bridge's formulations by name (``BridgeSettings.formulation``), each its own model/guide
class: the one place a formulation picks code."""

from __future__ import annotations

from pbridge.config import BridgeSettings

from .bridge_vqvae import DiffusionBridgeVQVAE
from .paper_bridge import PaperBridgeVQVAE

__all__ = ["FORMULATIONS", "bridge_class"]

FORMULATIONS: dict[str, type[DiffusionBridgeVQVAE]] = {
    "tight": DiffusionBridgeVQVAE,
    "paper": PaperBridgeVQVAE,
}
"""``tight``: the chain started at the code, a categorical head (docs/maths.md s. 6; the
default); ``paper``: the chain on the encoding, an eps head (s. 3-5)."""


def bridge_class(settings: BridgeSettings) -> type[DiffusionBridgeVQVAE]:
    """The model/guide class of ``settings.formulation``."""
    return FORMULATIONS[settings.formulation]
