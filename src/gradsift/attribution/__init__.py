"""The per-sample gradient engine: parameter selection, compressors, gradient sets and their on-disk store.

It knows nothing of scorers or Lightning; :class:`gradsift.Attributor` combines it with a scorer and a trim rule.
"""

from gradsift.lazy import lazy_exports

_EXPORTS = {
    "PerSampleGradients": ".gradients",
    "select_parameters": ".gradients",
    "GradientSet": ".gradient_set",
    "Block": ".gradient_set",
    "GradientStore": ".store",
    "Compressor": ".compressors",
    "IdentityCompressor": ".compressors",
    "DropoutCompressor": ".compressors",
    "GaussianCompressor": ".compressors",
    "SparseRandomProjectionCompressor": ".compressors",
    "LoGraCompressor": ".compressors",
    "loss_hessian": ".hessian",
    "KroneckerFactorGatherer": ".kfac",
    "KroneckerFactors": ".kfac",
    "margin_output": ".model_output",
    "gather_distributed": ".distributed",
    "torch_process_group": ".distributed",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
