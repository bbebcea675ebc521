"""LightningModules with ``per_sample_loss(batch) -> Tensor[B]``, the one method attribution needs.

Subclass :class:`GradsiftModule` (or give any LightningModule ``per_sample_loss``) for your own model.
"""

from gradsift.lazy import lazy_exports

_EXPORTS = {
    "Attributable": ".base",
    "GradsiftModule": ".base",
    "LogisticRegression": ".tabular",
    "MLP": ".tabular",
    "SigmoidMLP": ".tabular",
    "ImageClassifier": ".image_classifier",
    "SequenceClassifier": ".sequence_classifier",
    "CausalLM": ".causal_lm",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
