"""Pretrained encoders carried to a GPU machine (names resolve through :func:`gradsift.hub.resolve_model`).

:func:`export_bf16` writes the encoder as bf16 safetensors plus its tokenizer: MiniLM (about 45 MB) fits one
call to a GPU machine that takes at most 64 MiB per call; MPNet (about 218 MB) is packed into pieces for
several calls (:mod:`gradsift.carry`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from gradsift.hub import resolve_model

CARRY_LIMIT_BYTES = 64 * 2**20


def save_bf16(model: torch.nn.Module, tokenizer, out_dir: str | Path,
              max_shard_size: int | None = None) -> list[tuple[str, int]]:
    """Save ``model`` cast to bf16 as safetensors, plus ``tokenizer``, into ``out_dir``.

    Args:
        model: a transformers ``PreTrainedModel``.
        tokenizer: its tokenizer.
        out_dir: the folder to write.
        max_shard_size: bytes per safetensors shard (``from_pretrained`` joins them through the index file);
            ``None``: transformers' default (one file up to 50 GB).

    Returns:
        ``[(file name, bytes)]`` of everything in ``out_dir``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shards = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True, **shards)
    tokenizer.save_pretrained(out)
    return sorted((f.name, f.stat().st_size) for f in out.iterdir() if f.is_file())


def export_bf16(name: str, out_dir: str | Path, limit_bytes: int | None = CARRY_LIMIT_BYTES) -> Path:
    """Save the encoder of model ``name`` (its weights, config and tokenizer) as bf16 safetensors in ``out_dir``.

    The encoder is the one ``AutoModelForSequenceClassification`` uses, so weights that the classifier never reads
    stay behind (MPNet's pretraining pooler; BERT's pooler, which its head uses, is kept). Loading the result with
    ``dtype=torch.float32`` upcasts it again; the classification head is created fresh as it would be from the
    original files.

    Args:
        name: a name for :func:`resolve_model`.
        out_dir: the folder to write.
        limit_bytes: raise when the folder exceeds it (the GPU machine's per-call transfer limit); ``None``: no
            check (pack the folder into pieces with :func:`gradsift.carry.pack` instead).

    Returns:
        ``out_dir``.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    src = resolve_model(name)
    out = Path(out_dir)
    task = AutoModelForSequenceClassification.from_pretrained(src, num_labels=2, dtype=torch.bfloat16)
    files = save_bf16(task.base_model, AutoTokenizer.from_pretrained(src), out)
    size = sum(s for _, s in files)
    if limit_bytes is not None and size > limit_bytes:
        raise ValueError(f"export_bf16({name!r}) wrote {size / 2**20:.1f} MiB to {out}, over the carry limit of "
                         f"{limit_bytes / 2**20:.0f} MiB; pack it into pieces (scripts/export_gpu_model.py) or use "
                         f"a smaller model (e.g. 'minilm')")
    return out
