"""pbridge: the Diffusion-bridge VQ-VAE as Pyro model/guide pairs, with torchsde bridges.

The building blocks most users need are re-exported here; variants live in ``pbridge.models``,
training, sampling and analysis in ``pbridge.inference``.
"""

from .bridge_prior import (
    BridgeCodePrior,
    DiffusionPrior,
    StepCostTracker,
    chain_guide_sites,
    chain_model_sites,
    reverse_step,
)
from .code_distribution import CodeVector
from .code_head import CodeHead, local_log_likelihood
from .codebook import Codebook, CodeUsage, categorical_kl, code_logits, code_usage
from .ou_bridge import OUSDE, OUSchedule, image_schedule, toy_schedule
from .samplers import SamplerSettings

__version__ = "0.1.0"

__all__ = [
    "OUSchedule",
    "OUSDE",
    "toy_schedule",
    "image_schedule",
    "Codebook",
    "CodeUsage",
    "code_logits",
    "categorical_kl",
    "code_usage",
    "CodeVector",
    "CodeHead",
    "local_log_likelihood",
    "BridgeCodePrior",
    "StepCostTracker",
    "DiffusionPrior",
    "reverse_step",
    "SamplerSettings",
    "chain_model_sites",
    "chain_guide_sites",
    "to_inferencedata",
    "load_run",
    "LoadedRun",
]


def __getattr__(name: str):
    """``pbridge.to_inferencedata``, ``pbridge.load_run`` and ``pbridge.LoadedRun`` without
    importing arviz or the variants at ``import pbridge``."""
    if name == "to_inferencedata":
        from .inference.analysis import to_inferencedata

        return to_inferencedata
    if name == "load_run":
        from .inference.load import load_run

        return load_run
    if name == "LoadedRun":
        from .inference.run_dir import LoadedRun

        return LoadedRun
    raise AttributeError(f"module 'pbridge' has no attribute {name!r}")
