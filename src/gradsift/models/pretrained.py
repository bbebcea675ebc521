"""Pretrained encoders carried to a GPU machine (names resolve through :func:`gradsift.hub.resolve_model`).

:func:`export_bf16` writes a model as bf16 safetensors plus its tokenizer, small enough
(MiniLM: about 45 MB) to carry to a GPU machine that takes at most 64 MiB per call.
"""

from __future__ import annotations

from pathlib import Path

import torch

from gradsift.hub import resolve_model

CARRY_LIMIT_BYTES = 64 * 2**20


def export_bf16(name: str, out_dir: str | Path, limit_bytes: int | None = CARRY_LIMIT_BYTES) -> Path:
    """Save model ``name`` (its encoder weights, config and tokenizer) as bf16 safetensors in ``out_dir``.

    Loading the result with ``dtype=torch.float32`` upcasts it again; the classification head is created fresh
    by ``AutoModelForSequenceClassification`` as it would be from the original files. Raises when the folder
    exceeds ``limit_bytes`` (the GPU machine's per-call transfer limit; ``None`` disables the check).
    """
    from transformers import AutoModel, AutoTokenizer

    src = resolve_model(name)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = AutoModel.from_pretrained(src, dtype=torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    if limit_bytes is not None and size > limit_bytes:
        raise ValueError(f"export_bf16({name!r}) wrote {size / 2**20:.1f} MiB to {out}, over the carry limit of "
                         f"{limit_bytes / 2**20:.0f} MiB; use a smaller model (e.g. 'minilm') or download on the host")
    return out
