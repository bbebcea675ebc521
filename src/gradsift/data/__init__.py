"""Datamodules whose items carry their index, the label trained on, and the clean label where known.

Subclass :class:`NoisyLabelDataModule` (or give ``attribution_dataloader(split)`` yourself) for your own data.
"""

from gradsift.lazy import lazy_exports

_EXPORTS = {
    "NoisyLabelDataModule": ".base",
    "DictDataset": ".base",
    "flip_labels": ".base",
    "MoonsDataModule": ".synthetic",
    "BlobsDataModule": ".synthetic",
    "OGAToyDataModule": ".synthetic",
    "CIFARNDataModule": ".cifar_n",
    "GlueDataModule": ".glue",
    "LLMBenchmarkDataModule": ".llm_benchmarks",
    "TextCorpusDataModule": ".text_corpus",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
