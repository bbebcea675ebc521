"""Causal-LM corpora chunked to a fixed sequence length (dropout paper Sec. 4.2).

WikiText with 2,000 training / 50 test samples for GPT-2; OpenWebText subsets for Pythia-1.4B and LLaMA-3.2-1B.

A sample is one chunk of ``seq_len`` tokens: each split's lines are tokenized, concatenated and cut into
consecutive blocks (the remainder dropped), as Hugging Face's ``run_clm`` ``group_texts`` does; the first
``n_train`` / ``n_test`` chunks are used. Sources: the hub through ``datasets`` when online (``wikitext`` /
``wikitext-2-raw-v1``; ``Skylion007/openwebtext``, whose only split is divided into train and test documents), or
local text files offline. Offline WikiText-2 (``data_dir`` holding ``wikitext-2/wiki.valid.tokens`` and
``wiki.test.tokens``): the train split is not available there, so **training chunks come from the validation
split** and test chunks from the test split; ``source`` in the result metadata says which was used.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import datasets
import numpy as np
from transformers import PreTrainedTokenizerBase

from gradsift.data.base import DictDataset, MissingInputError, NoisyLabelDataModule
from gradsift.data.llm_benchmarks import collate_causal
from gradsift.data.tokenizers import load_tokenizer, train_bpe_tokenizer

CORPORA = ("wikitext", "openwebtext")
WIKITEXT_LOCAL = {"train": "wikitext-2/wiki.valid.tokens", "test": "wikitext-2/wiki.test.tokens"}


def chunk_token_ids(lines: Sequence[str], tokenizer: PreTrainedTokenizerBase, seq_len: int,
                    max_chunks: int | None = None) -> list[list[int]]:
    """Consecutive ``seq_len``-token blocks of the concatenated tokenized lines (remainder dropped).

    Stops tokenizing once ``max_chunks`` blocks exist. Empty lines are skipped; no separator is inserted
    (WikiText lines carry their own newlines; OpenWebText documents are separated by eos).
    """
    if seq_len < 2:
        raise ValueError(f"data.seq_len must be >= 2 for next-token prediction, got {seq_len}")
    chunks: list[list[int]] = []
    buf: list[int] = []
    step = 256
    for s in range(0, len(lines), step):
        batch = [ln for ln in lines[s:s + step] if ln.strip()]
        for ids in tokenizer(batch, add_special_tokens=False)["input_ids"] if batch else []:
            buf.extend(ids)
        while len(buf) >= seq_len:
            chunks.append(buf[:seq_len])
            buf = buf[seq_len:]
        if max_chunks is not None and len(chunks) >= max_chunks:
            return chunks[:max_chunks]
    return chunks


def read_lines(path: str | Path) -> list[str]:
    """Lines of a UTF-8 text file, newline kept (as the hub's WikiText rows)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text corpus file {path} does not exist")
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


def hub_lines(corpus: str, hub_config: str | None, n_docs: int | None, seed: int) -> dict[str, list[str]]:
    """Train/test lines from the hub (needs internet): WikiText rows, or OpenWebText documents + eos marker."""
    if corpus == "wikitext":
        ds = datasets.load_dataset("wikitext", hub_config or "wikitext-2-raw-v1")
        return {"train": ds["train"]["text"], "test": ds["test"]["text"]}
    stream = datasets.load_dataset("Skylion007/openwebtext", split="train", streaming=True)
    docs = [row["text"] for row, _ in zip(stream.shuffle(seed=seed, buffer_size=10_000), range(n_docs or 20_000))]
    cut = int(0.9 * len(docs))
    return {"train": docs[:cut], "test": docs[cut:]}


class TextCorpusDataModule(NoisyLabelDataModule):
    """Fixed-length chunks of WikiText / OpenWebText (or any local text files) for full causal-LM fine-tuning.

    Items: ``input_ids``, ``attention_mask``, ``labels`` (= ids: every token is scored), ``label`` =
    ``clean_label`` = 0 (no classes; bookkeeping only), ``index``. Test metric: perplexity (models/causal_lm.py).
    Source: ``train_file``/``test_file`` if given, else ``data_dir`` with the offline WikiText-2 files (see the
    module docstring), else the hub. ``tokenizer=None`` trains a byte-level BPE on the training text.
    """

    has_label_noise = False

    def __init__(self, corpus: str = "wikitext", seq_len: int = 256, n_train: int = 2000, n_test: int = 50,
                 tokenizer: str | PreTrainedTokenizerBase | None = "gpt2", tokenizer_vocab_size: int = 512,
                 data_dir: str | None = None, train_file: str | None = None, test_file: str | None = None,
                 hub_config: str | None = None, n_docs: int | None = None, batch_size: int = 64,
                 eval_batch_size: int | None = None, num_workers: int = 0, seed: int = 0,
                 keep: Sequence[int] | None = None, drop_last: bool = False):
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers,
                         seed=seed, keep=keep, drop_last=drop_last)
        if corpus not in CORPORA:
            raise ValueError(f"data.corpus={corpus!r} is not one of {CORPORA}")
        if (train_file is None) != (test_file is None):
            raise ValueError("data.train_file and data.test_file must be given together")
        self.corpus, self.seq_len, self.n_train, self.n_test = corpus, seq_len, n_train, n_test
        self.tokenizer_spec, self.tokenizer_vocab_size = tokenizer, tokenizer_vocab_size
        self.data_dir, self.train_file, self.test_file = data_dir, train_file, test_file
        self.hub_config, self.n_docs = hub_config, n_docs
        self.num_classes = 1
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.source: str = ""

    def check(self) -> None:
        """Given files must exist; a WikiText ``data_dir`` must hold the offline files."""
        if self.train_file is not None:
            for key, f in (("data.train_file", self.train_file), ("data.test_file", self.test_file)):
                if f is None or not Path(f).is_file():
                    raise MissingInputError(f"{key}={f}: no such text file")
        elif self.data_dir is not None and self.corpus == "wikitext":
            missing = [rel for rel in WIKITEXT_LOCAL.values() if not (Path(self.data_dir) / rel).is_file()]
            if missing:
                raise MissingInputError(f"data.data_dir={self.data_dir} lacks {', '.join(map(str, missing))} (offline "
                                        "WikiText-2; data.data_dir=null reads the hub)")

    def _lines(self) -> dict[str, list[str]]:
        if self.train_file is not None:
            self.source = f"files: {self.train_file} / {self.test_file}"
            return {"train": read_lines(self.train_file), "test": read_lines(self.test_file)}
        if self.data_dir is not None and self.corpus == "wikitext":
            paths = {s: Path(self.data_dir) / rel for s, rel in WIKITEXT_LOCAL.items()}
            if all(p.is_file() for p in paths.values()):
                self.source = "offline WikiText-2: train chunks from the validation split, test from the test split"
                return {s: read_lines(p) for s, p in paths.items()}
            raise FileNotFoundError(f"data.data_dir={self.data_dir} lacks {list(WIKITEXT_LOCAL.values())}")
        self.source = f"hub: {self.corpus}"
        return hub_lines(self.corpus, self.hub_config, self.n_docs, self.seed)

    def build(self) -> tuple[DictDataset, None, DictDataset]:
        """The corpus chunked into ``seq_len``-token samples, train and test."""
        lines = self._lines()
        if self.tokenizer_spec is None:
            self.tokenizer = train_bpe_tokenizer(lines["train"], vocab_size=self.tokenizer_vocab_size)
        else:
            self.tokenizer = load_tokenizer(self.tokenizer_spec)
        return (self._chunks(lines["train"], self.n_train, "train"), None,
                self._chunks(lines["test"], self.n_test, "test"))

    def _chunks(self, lines: list[str], n: int, split: str) -> DictDataset:
        if self.corpus == "openwebtext" and self.train_file is None:
            lines = [doc + self.tokenizer.eos_token for doc in lines]
        chunks = chunk_token_ids(lines, self.tokenizer, self.seq_len, max_chunks=n)
        if not chunks:
            raise ValueError(f"{split} split of {self.source} is shorter than data.seq_len={self.seq_len} tokens")
        if len(chunks) < n:
            warnings.warn(f"{self.source}: only {len(chunks)} {split} chunks of {self.seq_len} tokens, "
                          f"fewer than the {n} requested; using all of them", stacklevel=2)
        zeros = np.zeros(len(chunks), dtype=np.int64)
        return DictDataset({"input_ids": chunks, "label": zeros, "clean_label": zeros.copy()})

    def collate(self, items: list[dict]) -> dict:
        """Right-padded causal-LM batch (:func:`~gradsift.data.llm_benchmarks.collate_causal`)."""
        return collate_causal(items, self.tokenizer.pad_token_id)
