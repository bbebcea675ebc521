"""Tokenizers for the causal-LM datamodules: a hub/local tokenizer by name, or a small byte-level BPE trained
on the data itself, so that tests and offline runs need no download.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<pad>"


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 512, min_frequency: int = 2,
                        save_dir: str | Path | None = None) -> PreTrainedTokenizerFast:
    """Train a GPT-2-style byte-level BPE on ``texts`` and wrap it as a ``PreTrainedTokenizerFast``.

    Byte-level means every string is encodable (no ``<unk>``). ``eos`` is ``<|endoftext|>`` (as GPT-2),
    ``pad`` a separate ``<pad>`` token. ``len(tokenizer) <= vocab_size``, so a model with ``vocab_size``
    embeddings accepts its ids. Saved with ``save_pretrained`` when ``save_dir`` is given.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=[EOS_TOKEN, PAD_TOKEN],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN,
                                      pad_token=PAD_TOKEN)
    if save_dir is not None:
        wrapped.save_pretrained(str(save_dir))
    return wrapped


def load_tokenizer(spec: str | PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """A tokenizer object, or one loaded by hub name / local folder / packaged alias (``smollm2_135m``); pad
    defaults to eos (GPT-2 and Llama have none)."""
    if isinstance(spec, PreTrainedTokenizerBase):
        tok = spec
    else:
        from gradsift.hub import pretrained_source

        path, extra = pretrained_source(spec)
        tok = AutoTokenizer.from_pretrained(path, **extra)
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ValueError(f"tokenizer {spec!r} has neither a pad nor an eos token; set one before use")
        tok.pad_token = tok.eos_token
    return tok
