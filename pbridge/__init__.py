"""pbridge: the Diffusion-bridge VQ-VAE as Pyro model/guide pairs, with torchsde bridges.

The names a user calls are exported here, each imported from its module when first used (so
``import pbridge`` imports neither torch nor Pyro, and ``pbridge --version`` stays fast)::

    import pbridge

    variant = pbridge.build_toy_model(pbridge.ToyConfig())
    result = pbridge.train(variant, x, pbridge.TrainSettings(steps=200))
    result.use_ema(variant)
    draws = pbridge.sample_prior(variant, 16)

The variants live in ``pbridge.models``, training, sampling and analysis in
``pbridge.inference``; docs/architecture.md maps the modules.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    # configurations and builders
    "ToyConfig": ".config",
    "ImageConfig": ".config",
    "BridgeSettings": ".config",
    "TrainSettings": ".config",
    "image_preset": ".config",
    "build_toy_model": ".models.builders",
    "build_image_model": ".models.builders",
    "build_image_bridge": ".models.builders",
    "image_variant": ".models.builders",
    "build_chain_network": ".models.builders",
    "sample_walks": ".toy",
    "load_images": ".data",
    # the variants and the priors
    "DiffusionBridgeVQVAE": ".models.bridge_vqvae",
    "VQVAE": ".models.vqvae",
    "PixelCNNVQVAE": ".models.pixelcnn_prior",
    "BridgeCodeModel": ".models.code_prior",
    "BridgeCodePrior": ".bridge_prior",
    "DiffusionPrior": ".bridge_prior",
    # training, sampling, runs, analysis
    "train": ".inference.svi",
    "TrainResult": ".inference.svi",
    "estimate_elbo": ".inference.bound",
    "sample_prior": ".inference.sampling",
    "sample_posterior": ".inference.sampling",
    "SamplerSettings": ".samplers",
    "reverse_sample": ".samplers",
    "load_run": ".inference.load",
    "LoadedRun": ".inference.run_dir",
    "to_inferencedata": ".inference.analysis",
    # building blocks
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
    "StepCostTracker": ".bridge_prior",
    "reverse_step": ".samplers",
    "chain_model_sites": ".bridge_prior",
    "chain_guide_sites": ".bridge_prior",
}
"""Each exported name and the module of this package that defines it."""

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    """The names of ``__all__``, each imported from its module when first asked for."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pbridge' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
