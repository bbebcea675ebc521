"""Binary GLUE tasks with 20% flipped training labels (DataInf setup; OGA Sec. 6 / B.1.3, dropout paper Sec. 4.1).

Splits follow DataInf: the GLUE ``train`` split is the training pool and the GLUE ``validation`` split is the
test set (GLUE test labels are hidden). Tasks larger than ``train_size``/``test_size`` are subsampled with the seed
(OGA B.1.3: QQP and SST2 use 4,500 training and 500 test samples; DataInf's code applies the same rule to every
task whose splits exceed those sizes, so QNLI and CoLA too). Then ``noise_fraction`` of the training labels are
flipped (``flip_labels``) and the clean label is kept beside the given one.

Data come from ``datasets.load_dataset(hub_dataset, task)`` when online, or from the GLUE files under ``data_dir``
(``train.tsv``/``train_full.tsv`` and ``dev.tsv`` in the GLUE layouts, or ``train``/``validation`` as ``.parquet`` /
``.jsonl`` with the Hugging Face column names). When a task has no training file (QNLI offline: only the GLUE dev
set is staged) the validation file is split with the seed into a test part of ``test_size`` rows (10% if unset)
and a training pool of the rest; ``source`` then says so.

Texts are tokenized once with the model's tokenizer and cached on disk (``.npz``, no pickle), keyed by task, data
source, tokenizer, ``max_length``, split sizes and seed.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch.nn.utils.rnn import pad_sequence

from gradsift.data.base import DictDataset, MissingInputError, NoisyLabelDataModule, flip_labels
from gradsift.hub import resolve_model

TOKEN_KEYS = ("input_ids", "attention_mask", "token_type_ids")
STRING_LABELS = {"entailment": 0, "not_entailment": 1}  # the Hugging Face GLUE encoding for RTE and QNLI


@dataclass(frozen=True)
class GlueTask:
    """How one task's texts are named (Hugging Face columns) and laid out in the GLUE ``.tsv`` files."""

    text_keys: tuple[str, ...]
    folder: str
    tsv_header: dict[str, str]  # GLUE header name -> Hugging Face column; its "label" source marks a header row
    tsv_headerless: tuple[str, ...] = ()  # column order of header-less GLUE files (MRPC train/dev, CoLA)


TASKS: dict[str, GlueTask] = {
    "sst2": GlueTask(("sentence",), "SST-2", {"sentence": "sentence", "label": "label"}),
    "cola": GlueTask(("sentence",), "CoLA", {"sentence": "sentence", "label": "label"},
                     ("source", "label", "original_label", "sentence")),
    "mrpc": GlueTask(("sentence1", "sentence2"), "MRPC",
                     {"#1 String": "sentence1", "#2 String": "sentence2", "Quality": "label"},
                     ("label", "id1", "id2", "sentence1", "sentence2")),
    "rte": GlueTask(("sentence1", "sentence2"), "RTE",
                    {"sentence1": "sentence1", "sentence2": "sentence2", "label": "label"}),
    "qnli": GlueTask(("question", "sentence"), "QNLI",
                     {"question": "question", "sentence": "sentence", "label": "label"}),
    "qqp": GlueTask(("question1", "question2"), "QQP",
                    {"question1": "question1", "question2": "question2", "is_duplicate": "label"}),
}

SPLIT_FILES = {
    "train": ("train.tsv", "train_full.tsv", "train.parquet", "train.jsonl", "train-*.parquet"),
    "validation": ("dev.tsv", "validation.tsv", "validation.parquet", "validation.jsonl", "validation-*.parquet"),
}


def task_spec(task: str) -> GlueTask:
    """The binary GLUE task ``task`` (``sst2``, ``mrpc``, ...); a ValueError names the known ones."""
    if task not in TASKS:
        raise ValueError(f"data.task={task!r} is not a binary GLUE task; expected one of {sorted(TASKS)}")
    return TASKS[task]


def _labels(values: pd.Series, path: Path) -> np.ndarray:
    """GLUE labels as int64: digits as given, ``entailment``/``not_entailment`` as 0/1 (the Hugging Face encoding)."""
    text = values.astype(str).str.strip()
    mapped = text.map(lambda v: STRING_LABELS.get(v, int(v) if v.lstrip("-").isdigit() else None))
    bad = text[mapped.isna()]
    if len(bad):
        raise ValueError(f"{path}: label column has values that are neither 0/1 nor entailment/not_entailment, "
                         f"e.g. {bad.iloc[:3].tolist()}")
    labels = mapped.to_numpy(dtype=np.int64)
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"{path}: expected binary labels 0/1, got {sorted(set(labels.tolist()))}")
    return labels


def read_glue_file(task: str, path: str | Path) -> pd.DataFrame:
    """One GLUE split file as a frame with the task's text columns and an int ``label`` column.

    ``.tsv``: the GLUE layouts (a header row, or none for MRPC train/dev and CoLA); ``.parquet``/``.jsonl``:
    the Hugging Face ``glue`` columns.
    """
    spec, path = task_spec(task), Path(path)
    columns = [*spec.text_keys, "label"]
    if path.suffix == ".parquet":
        frame = pd.read_parquet(path)
    elif path.suffix == ".jsonl":
        frame = pd.read_json(path, lines=True, dtype=False)
    elif path.suffix == ".tsv":
        try:
            raw = pd.read_csv(path, sep="\t", header=None, dtype=str, quoting=csv.QUOTE_NONE, keep_default_na=False,
                              encoding="utf-8-sig")
        except pd.errors.ParserError as err:
            raise ValueError(f"{path}: not a tab-separated GLUE {task} file ({err})") from err
        first = [c.strip() for c in raw.iloc[0]] if len(raw) else []
        label_header = next(k for k, v in spec.tsv_header.items() if v == "label")
        if label_header in first:
            missing = [k for k in spec.tsv_header if k not in first]
            if missing:
                raise ValueError(f"{path}: header {first} lacks {missing} (expected GLUE {task} columns)")
            frame = raw.iloc[1:].set_axis(first, axis=1)[list(spec.tsv_header)].rename(columns=spec.tsv_header)
        elif spec.tsv_headerless and raw.shape[1] == len(spec.tsv_headerless):
            frame = raw.set_axis(list(spec.tsv_headerless), axis=1)
        else:
            raise ValueError(f"{path}: not a labeled GLUE {task} file; expected a header with "
                             f"{list(spec.tsv_header)}" + (f" or {len(spec.tsv_headerless)} header-less columns "
                                                          f"{list(spec.tsv_headerless)}" if spec.tsv_headerless else "")
                             + f", got first row {first[:6]}")
    else:
        raise ValueError(f"{path}: unsupported GLUE file type {path.suffix!r}; expected .tsv, .parquet or .jsonl")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}; expected {columns}")
    frame = frame[columns].reset_index(drop=True)
    frame["label"] = _labels(frame["label"], path)
    for key in spec.text_keys:
        frame[key] = frame[key].astype(str)
    return frame


def find_local_files(task: str, data_dir: str | Path) -> dict[str, Path]:
    """The task's split files under ``data_dir`` (the GLUE root with one folder per task, or the task folder)."""
    spec, root = task_spec(task), Path(data_dir).expanduser()
    found: dict[str, Path] = {}
    for folder in (root / spec.folder, root / task, root):
        for split, patterns in SPLIT_FILES.items():
            if split in found:
                continue
            hits = [p for pattern in patterns for p in sorted(folder.glob(pattern)) if p.is_file()]
            if hits:
                found[split] = hits[0]
        if found:
            return found
    return found


class GlueDataModule(NoisyLabelDataModule):
    """Tokenized binary GLUE task: train (noisy labels), val, test; items carry ``input_ids``... and labels.

    ``val_size``: ``None`` makes the validation split the test split (DataInf computes influence against the GLUE
    validation set it also evaluates on); ``0`` means no validation split; ``k > 0`` holds out ``k`` clean training
    samples (drawn before subsampling, disjoint from the training split).
    """

    num_classes = 2

    def __init__(self, task: str, data_dir: str | None = None, tokenizer: str = "minilm", max_length: int = 128,
                 train_size: int | None = None, test_size: int | None = None, val_size: int | None = None,
                 noise_fraction: float = 0.2, source: str = "auto", hub_dataset: str = "nyu-mll/glue",
                 cache_dir: str | None = None, batch_size: int = 32, eval_batch_size: int | None = None,
                 num_workers: int = 0, seed: int = 0, keep: Sequence[int] | None = None, name: str | None = None,
                 drop_last: bool = False):
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers,
                         seed=seed, keep=keep, drop_last=drop_last)
        self.spec = task_spec(task)
        if source not in ("auto", "local", "hub"):
            raise ValueError(f"data.source must be 'auto', 'local' or 'hub', got {source!r}")
        for key, value in (("train_size", train_size), ("test_size", test_size), ("val_size", val_size)):
            if value is not None and value < 0:
                raise ValueError(f"data.{key} must be a non-negative count or null, got {value}")
        self.name = name or f"glue_{task}"
        self.task, self.data_dir, self.tokenizer_name, self.max_length = task, data_dir, tokenizer, max_length
        self.train_size, self.test_size, self.val_size = train_size, test_size, val_size
        self.noise_fraction, self.source, self.hub_dataset = noise_fraction, source, hub_dataset
        root = cache_dir or os.environ.get("GRADSIFT_CACHE", Path.home() / ".cache" / "gradsift")
        self.cache_dir = Path(root) / "glue"
        self.pad_token_id = 0
        self.origin = ""  # where the rows came from, set by build()

    def check(self) -> None:
        """Local files must be there when they are the only source (``source=local``, or offline)."""
        offline = os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
        if self.source == "hub" or (self.source == "auto" and not offline):
            return
        files = find_local_files(self.task, self.data_dir) if self.data_dir else {}
        if "validation" not in files:
            raise MissingInputError(f"data.data_dir={self.data_dir}: no GLUE {self.task} validation file "
                                    f"({', '.join(SPLIT_FILES['validation'])}) there or in its {self.spec.folder}/ "
                                    "folder" + (" (offline, so the hub is not tried)" if offline else ""))

    # -- raw rows ---------------------------------------------------------------------------------
    def raw_splits(self) -> tuple[dict[str, pd.DataFrame], str]:
        """``{"train": pool, "validation": test rows}`` before subsampling, and a description of the source."""
        files = find_local_files(self.task, self.data_dir) if self.data_dir else {}
        if self.source == "local" or (self.source == "auto" and files):
            if "validation" not in files:
                raise FileNotFoundError(f"data.data_dir={self.data_dir!r}: no {self.task} validation file "
                                        f"({', '.join(SPLIT_FILES['validation'])}) under it or its "
                                        f"{self.spec.folder}/ folder")
            test = read_glue_file(self.task, files["validation"])
            if "train" in files:
                return {"train": read_glue_file(self.task, files["train"]), "validation": test}, \
                    f"local:{files['train']},{files['validation']}"
            return self._split_validation(test), f"local:{files['validation']} (no train file: split seeded)"
        offline = os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
        if self.source == "auto" and offline:
            raise FileNotFoundError(f"GLUE {self.task}: offline and data.data_dir={self.data_dir!r} holds no "
                                    f"{self.task} files; set data.data_dir to a folder with the GLUE files")
        from datasets import load_dataset

        ds = load_dataset(self.hub_dataset, self.task)
        cols = [*self.spec.text_keys, "label"]
        return {s: ds[s].select_columns(cols).to_pandas() for s in ("train", "validation")}, \
            f"hub:{self.hub_dataset}/{self.task}"

    def _split_validation(self, frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
        n_test = self.test_size if self.test_size is not None else max(1, len(frame) // 10)
        if n_test >= len(frame):
            raise ValueError(f"data.test_size={n_test} leaves no training rows in the {len(frame)}-row "
                             f"{self.task} validation file")
        warnings.warn(f"GLUE {self.task}: no training file, so the validation file ({len(frame)} rows) is split "
                      f"(seed {self.seed}) into {len(frame) - n_test} training-pool and {n_test} test rows")
        perm = np.random.default_rng([self.seed, 1]).permutation(len(frame))
        return {"train": frame.iloc[np.sort(perm[n_test:])].reset_index(drop=True),
                "validation": frame.iloc[np.sort(perm[:n_test])].reset_index(drop=True)}

    def select_rows(self, n_pool: int, n_test: int) -> dict[str, np.ndarray]:
        """Seeded row choices: ``train`` and (held-out) ``val`` from the pool, ``test`` from the validation rows."""
        rng = np.random.default_rng(self.seed)
        pool = rng.permutation(n_pool)
        n_val = self.val_size or 0
        if n_val >= n_pool:
            raise ValueError(f"data.val_size={n_val} leaves no training rows out of {n_pool}")
        val, rest = pool[:n_val], pool[n_val:]
        train = rest if self.train_size is None or self.train_size >= len(rest) else rest[:self.train_size]
        test = np.arange(n_test)
        if self.test_size is not None and self.test_size < n_test:
            test = rng.choice(n_test, self.test_size, replace=False)
        return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}

    # -- tokenization -----------------------------------------------------------------------------
    def load_tokenizer(self):
        """The tokenizer of ``tokenizer_name`` (a packaged alias, a folder or a hub name)."""
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(resolve_model(self.tokenizer_name))

    def tokenize(self, tokenizer, frame: pd.DataFrame) -> dict[str, list[np.ndarray]]:
        """Unpadded token arrays per row (pairs as the tokenizer joins them), truncated to ``max_length``."""
        if frame.empty:
            return {"input_ids": [], "attention_mask": []}
        texts = [frame[k].tolist() for k in self.spec.text_keys]
        enc = tokenizer(*texts, truncation=True, max_length=self.max_length)
        return {k: [np.asarray(v, dtype=np.int64) for v in enc[k]] for k in TOKEN_KEYS if k in enc}

    def cache_path(self, tokenizer, origin: str) -> Path:
        """The token cache file of this task, tokenizer, origin, sizes and seed."""
        key = {"task": self.task, "origin": origin, "tokenizer": [type(tokenizer).__name__, tokenizer.name_or_path,
                                                                   len(tokenizer)],
               "max_length": self.max_length, "sizes": [self.train_size, self.test_size, self.val_size],
               "seed": self.seed}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
        return self.cache_dir / f"{self.task}-{digest}.npz"

    def tokenized_splits(self) -> dict[str, dict[str, np.ndarray | list[np.ndarray]]]:
        """``{split: {token keys..., "label"}}`` for train/val/test with clean labels, cached on disk."""
        tokenizer = self.load_tokenizer()
        self.pad_token_id = tokenizer.pad_token_id or 0
        raw, self.origin = self.raw_splits()
        path = self.cache_path(tokenizer, self.origin)
        if path.is_file():
            return _load_ragged(path)
        rows = self.select_rows(len(raw["train"]), len(raw["validation"]))
        splits = {}
        for split, frame_name in (("train", "train"), ("val", "train"), ("test", "validation")):
            frame = raw[frame_name].iloc[rows[split]]
            splits[split] = {**self.tokenize(tokenizer, frame), "label": frame["label"].to_numpy(np.int64)}
        _save_ragged(path, splits)
        return splits

    # -- NoisyLabelDataModule ---------------------------------------------------------------------
    def build(self) -> tuple[DictDataset, DictDataset | None, DictDataset]:
        """The GLUE splits, tokenized (cached), with the chosen fraction of training labels flipped."""
        splits = self.tokenized_splits()
        clean = splits["train"]["label"]
        noisy, _ = flip_labels(clean, fraction=self.noise_fraction, num_classes=2, seed=self.seed)

        def dataset(split: str, labels: np.ndarray) -> DictDataset:
            cols = {k: v for k, v in splits[split].items() if k in TOKEN_KEYS}
            return DictDataset({**cols, "label": labels, "clean_label": splits[split]["label"]})

        train = dataset("train", noisy)
        test = dataset("test", splits["test"]["label"])
        if self.val_size is None:
            val = test
        else:
            val = dataset("val", splits["val"]["label"]) if self.val_size > 0 else None
        return train, val, test

    def collate(self, items: list[dict]) -> dict:
        """Pads token keys to the longest item (dynamic padding); stacks labels and indices."""
        batch = {}
        for key in TOKEN_KEYS:
            if key in items[0]:
                pad = self.pad_token_id if key == "input_ids" else 0
                batch[key] = pad_sequence([torch.as_tensor(it[key]) for it in items], batch_first=True,
                                          padding_value=pad)
        rest = [{k: v for k, v in it.items() if k not in TOKEN_KEYS} for it in items]
        return {**batch, **torch.utils.data.default_collate(rest)}


def _save_ragged(path: Path, splits: dict[str, dict]) -> None:
    """Write ragged token arrays as flat values + offsets (plain ``.npz``, readable without pickle), atomically."""
    arrays = {}
    for split, cols in splits.items():
        for key, value in cols.items():
            if isinstance(value, list):
                lengths = np.array([len(v) for v in value], dtype=np.int64)
                arrays[f"{split}/{key}/offsets"] = np.concatenate([[0], np.cumsum(lengths)])
                arrays[f"{split}/{key}/values"] = (np.concatenate(value) if value else np.zeros(0)).astype(np.int32)
            else:
                arrays[f"{split}/{key}"] = np.asarray(value)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _load_ragged(path: Path) -> dict[str, dict]:
    out: dict[str, dict] = {}
    with np.load(path, allow_pickle=False) as data:
        for name in data.files:
            parts = name.split("/")
            cols = out.setdefault(parts[0], {})
            if len(parts) == 2:
                cols[parts[1]] = data[name]
            elif parts[2] == "offsets":
                off, values = data[name], data[f"{parts[0]}/{parts[1]}/values"].astype(np.int64)
                cols[parts[1]] = [values[off[i]:off[i + 1]] for i in range(len(off) - 1)]
    return out
