"""A tiny MPNet folder (random weights, 2 layers x 16, a WordPiece vocabulary of a few words and the letters) in
the layout of all-mpnet-base-v2, written without any download; the MPNet tests load it as ``model.model``."""

from __future__ import annotations

import string
from pathlib import Path

import torch
from transformers import MPNetConfig, MPNetModel, MPNetTokenizer

SPECIAL = ["<s>", "<pad>", "</s>", "<unk>", "[UNK]"]  # MPNet's ids: <s> 0, <pad> 1, </s> 2; [UNK] is its unk
WORDS = ("the a an of and to in is it that for on with as was film movie good bad not very fun dull plot cast "
         "great story what who he she they said year new one two").split()
# relative_attention_num_buckets keeps its default 32: MPNetEncoder.compute_position_bias hard-codes 32 buckets
CONFIG = {"model_type": "mpnet", "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
          "intermediate_size": 32, "max_position_embeddings": 80}


def tiny_vocab() -> dict[str, int]:
    """Token -> id: MPNet's special tokens first, then words, letters and ``##`` letters, ``<mask>`` last."""
    letters = list(string.ascii_lowercase + string.digits + string.punctuation)
    tokens = [*SPECIAL, *WORDS, *letters, *(f"##{c}" for c in letters), "<mask>"]
    return {t: i for i, t in enumerate(dict.fromkeys(tokens))}


def tiny_mpnet_config() -> dict:
    """``model.config`` of a randomly initialised tiny MPNet whose vocabulary matches :func:`tiny_vocab`."""
    return {**CONFIG, "vocab_size": len(tiny_vocab())}


def write_tiny_mpnet(folder: Path, seed: int = 0) -> Path:
    """Save the tiny MPNet encoder (MPNetModel, as the sentence-transformers folder holds it) and its tokenizer."""
    MPNetTokenizer(vocab=tiny_vocab()).save_pretrained(str(folder))
    cfg = {k: v for k, v in tiny_mpnet_config().items() if k != "model_type"}
    torch.manual_seed(seed)
    MPNetModel(MPNetConfig(**cfg)).save_pretrained(str(folder))
    return folder
