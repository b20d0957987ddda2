"""pbridge: the Diffusion-bridge VQ-VAE as Pyro model/guide pairs, with torchsde bridges.

The building blocks most users need are re-exported here; variants live in ``pbridge.models``,
training, sampling and analysis in ``pbridge.inference``.
"""

import importlib

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


_EXPORTS = {
    "OUSchedule": ".ou_bridge",
    "OUSDE": ".ou_bridge",
    "toy_schedule": ".ou_bridge",
    "image_schedule": ".ou_bridge",
    "Codebook": ".codebook",
    "CodeUsage": ".codebook",
    "code_logits": ".codebook",
    "categorical_kl": ".codebook",
    "code_usage": ".codebook",
    "CodeVector": ".code_distribution",
    "CodeHead": ".code_head",
    "local_log_likelihood": ".code_head",
    "BridgeCodePrior": ".bridge_prior",
    "StepCostTracker": ".bridge_prior",
    "DiffusionPrior": ".bridge_prior",
    "reverse_step": ".bridge_prior",
    "SamplerSettings": ".samplers",
    "chain_model_sites": ".bridge_prior",
    "chain_guide_sites": ".bridge_prior",
}
"""Each building block of ``__all__`` and the module of this package that defines it."""


def __getattr__(name: str):
    """The names of ``__all__``, each imported from its module when first asked for: ``import
    pbridge`` imports neither torch nor Pyro (``pbridge --version`` stays fast), and
    ``pbridge.to_inferencedata``, ``pbridge.load_run`` and ``pbridge.LoadedRun`` do not import
    arviz or the variants until they are used."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
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


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
