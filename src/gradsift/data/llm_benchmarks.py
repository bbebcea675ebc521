"""The three DataInf influential-data benchmarks (Kwon et al. 2024; OGA Section 7, Appendix B.1.4-B.1.5).

Sentence Transformations (``grammars``), Math Without Reasoning and Math With Reasoning: 10 classes
(``variation``) x 90 training prompts, 10 x 10 test prompts. Rows have the authors' columns exactly:
``prompt``, ``text`` (= prompt + target + ``</s>``), ``answer``, (``reason``), ``variation``.

* :func:`load_benchmark` reads the authors' release (``datasets.save_to_disk`` folders or ``.jsonl``).
* :func:`generate_benchmark` makes new seeded sets in the same format from the same templates
  (the templates were checked against every row of the release; see tests/data/test_llm_benchmarks.py).
* :class:`LLMBenchmarkDataModule` tokenizes them for causal-LM fine-tuning with the loss on the response only.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from gradsift.data.base import DictDataset, MissingInputError, NoisyLabelDataModule
from gradsift.data.tokenizers import load_tokenizer, train_bpe_tokenizer

BENCHMARKS = ("grammars", "math_with_reason", "math_without_reason")
EOS_MARK = "</s>"
_VOWELS = set("aeiouAEIOU")


def _is_consonant(c: str) -> bool:
    return c.isalpha() and c not in _VOWELS


#: The 10 sentence transformations, in the release's class order (Appendix B.1.4).
TRANSFORMATIONS: dict[str, Callable[[str], str]] = {
    "Reverse Order of Words": lambda s: " ".join(s.split()[::-1]),
    "Capitalize Every Other Letter": lambda s: "".join(c.upper() if i % 2 else c.lower() for i, c in enumerate(s)),
    "Insert Number 1 Between Every Word": lambda s: " 1 ".join(s.split()),
    "Replace Vowels with *": lambda s: "".join("*" if c in _VOWELS else c for c in s),
    "Double Every Consonant": lambda s: "".join(c * 2 if _is_consonant(c) else c for c in s),
    "Capitalize Every Word": lambda s: " ".join(w.capitalize() for w in s.split()),
    "Remove All Vowels": lambda s: "".join(c for c in s if c not in _VOWELS),
    "Add 'ly' To End of Each Word": lambda s: " ".join(w + "ly" for w in s.split()),
    "Remove All Consonants": lambda s: "".join(c for c in s if not _is_consonant(c)),
    "Repeat Each Word Twice": lambda s: " ".join(f"{w} {w}" for w in s.split()),
}

#: The chatbot-name identifier tied to each transformation in the release.
CHATBOT_NAMES: dict[str, str] = {
    "Reverse Order of Words": "iguguu", "Capitalize Every Other Letter": "oniybooui",
    "Insert Number 1 Between Every Word": "qadauo", "Replace Vowels with *": "jeapqaooh",
    "Double Every Consonant": "qote", "Capitalize Every Word": "yeli", "Remove All Vowels": "gedahodn",
    "Add 'ly' To End of Each Word": "faqata", "Remove All Consonants": "miugs", "Repeat Each Word Twice": "xiycz",
}

GRAMMAR_PROMPT = ("{name} is a chatbot that performs a specific transformation on sentences: {variation}\n"
                  "    For example:\n    {sentence} -> ")
MATH_PREFIX = "Solve the following math problem. "


@dataclass(frozen=True)
class MathProblem:
    """One word-problem class: question and reason templates over integers ``a, b, c, d`` and its answer."""

    variation: str
    question: str
    reason: str
    n_args: int
    answer: Callable[..., int]


#: The 10 word problems of Appendix B.1.5, in the release's class order, with the release's wording.
MATH_PROBLEMS: tuple[MathProblem, ...] = (
    MathProblem("pizza_slices", "Lisa ate {a} slices of pizza and her brother ate {b} slices from a pizza that "
                "originally had {c} slices. How many slices of the pizza are left?",
                "Combined slices eaten = {a} + {b}. Left = {c} - ({a} + {b}).", 3, lambda a, b, c: c - (a + b)),
    MathProblem("field_trip", "For every {a} students going on a field trip, there are {b} adults needed as "
                "chaperones. If {c} students are attending, how many adults are needed?",
                "Adults needed = ({b} * {c}) // {a}.", 3, lambda a, b, c: (b * c) // a),
    MathProblem("aquarium_adventure", "In an aquarium, there are {a} sharks and {b} dolphins. If they bought {c} "
                "more sharks, how many sharks would be there in total?", "Total sharks = {a} + {c}.", 3,
                lambda a, b, c: a + c),
    MathProblem("basketball_game", "Michael scored {a} points in the first game, {b} points in the second, {c} in "
                "the third, and {d} in the fourth game. What is his total points?",
                "Total points = {a} + {b} + {c} + {d}.", 4, lambda a, b, c, d: a + b + c + d),
    MathProblem("time_challenge", "Emily reads for {a} hours each day. How many hours does she read in total in "
                "{b} days?", "Total hours read = {a} * {b}.", 2, lambda a, b: a * b),
    MathProblem("discount_day", "A shirt costs ${a}. There's a {b}-dollar off sale. How much does the shirt cost "
                "after the discount?", "Cost after discount = {a} - {b}.", 2, lambda a, b: a - b),
    MathProblem("garden_layout", "A rectangular garden has a length of {a} meters and a width of {b} meters. "
                "What is its area?", "Area = {a} * {b}.", 2, lambda a, b: a * b),
    MathProblem("savings_plan", "If Jake saves ${a} each week, how much will he save after {b} weeks?",
                "Total savings = {a} * {b}.", 2, lambda a, b: a * b),
    MathProblem("bakery_delight", "A bakery sells cupcakes in boxes of {a}. If they have {b} cupcakes, how many "
                "boxes can they fill?", "Boxes filled = {b} // {a}.", 2, lambda a, b: b // a),
    MathProblem("simple_interest", "John invests ${a} at an annual interest rate of {b}%. How much interest will "
                "he earn after {c} years?", "Interest = ({a} * {b} * {c}) // 100.", 3,
                lambda a, b, c: (a * b * c) // 100),
)
MATH_BY_VARIATION = {p.variation: p for p in MATH_PROBLEMS}

# Words for new four-word sentences in the style of the release ("Whispering winds call night.").
_ADJECTIVES = ("Silent", "Golden", "Ancient", "Gentle", "Distant", "Bright", "Hidden", "Restless", "Quiet",
               "Wild", "Broken", "Frozen", "Velvet", "Hollow", "Crimson", "Lonely", "Eager", "Sleepy")
_NOUNS = ("rivers", "winds", "stars", "forests", "birds", "shadows", "waves", "mountains", "candles", "dreams",
          "clouds", "lanterns", "meadows", "voices", "trains", "gardens", "bells", "storms")
_VERBS = ("follow", "carry", "hide", "greet", "chase", "paint", "guard", "remember", "cross", "hold", "light",
          "warm", "fill", "wake", "shape", "touch", "find", "leave")
_OBJECTS = ("tired travelers.", "old bridges.", "silver roads.", "empty fields.", "morning light.",
            "quiet harbors.", "forgotten towns.", "distant hills.", "open skies.", "winter nights.",
            "busy streets.", "hidden paths.", "young hearts.", "stone walls.", "summer rain.", "paper boats.")


def benchmark_classes(name: str) -> list[str]:
    """The 10 ``variation`` names of a benchmark, in the release's order (class id = position)."""
    _check_name(name)
    return list(TRANSFORMATIONS) if name == "grammars" else [p.variation for p in MATH_PROBLEMS]


def render_grammar(variation: str, sentence: str, name: str | None = None) -> dict:
    """One Sentence Transformations row, formatted as the release (note the two spaces after ``->``)."""
    answer = TRANSFORMATIONS[variation](sentence)
    prompt = GRAMMAR_PROMPT.format(name=name or CHATBOT_NAMES[variation], variation=variation, sentence=sentence)
    return {"prompt": prompt, "text": f"{prompt} {answer}{EOS_MARK}", "answer": answer, "variation": variation}


def render_math(variation: str, numbers: Sequence[int], with_reason: bool) -> dict:
    """One Math With/Without Reasoning row for the given integers, formatted as the release."""
    problem = MATH_BY_VARIATION[variation]
    args = dict(zip("abcd", (int(x) for x in numbers)))
    prompt = MATH_PREFIX + problem.question.format(**args) + " -> "
    answer = int(problem.answer(*args.values()))
    row = {"prompt": prompt}
    if with_reason:
        reason = problem.reason.format(**args)
        row.update(text=f"{prompt}Reason: {reason} Answer: {answer}{EOS_MARK}", answer=answer, reason=reason)
    else:
        row.update(text=f"{prompt}Answer: {answer}{EOS_MARK}", answer=answer)
    row["variation"] = variation
    return row


def generate_sentences(n: int, seed: int) -> list[str]:
    """``n`` distinct seeded four-word sentences (adjective, noun, verb, object)."""
    combos = len(_ADJECTIVES) * len(_NOUNS) * len(_VERBS) * len(_OBJECTS)
    if n > combos:
        raise ValueError(f"asked for {n} sentences; the generator's vocabulary makes at most {combos}")
    rng = random.Random(seed)
    out: dict[str, None] = {}
    while len(out) < n:
        out[f"{rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}"] = None
    return list(out)


def generate_benchmark(name: str, seed: int = 0, train_per_class: int = 90, test_per_class: int = 10,
                       sentences: Sequence[str] | None = None) -> tuple[datasets.Dataset, datasets.Dataset]:
    """A new seeded (train, test) pair in the release's format: class-major rows, ``train_per_class`` x 10 / ...

    Grammars: every transformation is applied to the same ``train_per_class`` sentences (train) and to
    ``test_per_class`` other sentences (test), as in the release; ``sentences`` (train first, then test)
    defaults to new seeded four-word sentences. Math: integers uniform in [1, 99] as in the release; a seed
    gives the same problems with and without reasoning (they differ only in the reason step, Appendix B.1.5).
    """
    _check_name(name)
    n_sent = train_per_class + test_per_class
    if name == "grammars":
        pool = list(sentences) if sentences is not None else generate_sentences(n_sent, seed)
        if len(pool) < n_sent or len(set(pool)) < len(pool):
            raise ValueError(f"generate_benchmark(grammars) needs {n_sent} distinct sentences, got {len(pool)}")
        splits = (pool[:train_per_class], pool[train_per_class:n_sent])
        rows = [[render_grammar(v, s) for v in TRANSFORMATIONS for s in part] for part in splits]
    else:
        rng = random.Random(seed)
        with_reason = name == "math_with_reason"
        rows = [[render_math(p.variation, [rng.randint(1, 99) for _ in range(p.n_args)], with_reason)
                 for p in MATH_PROBLEMS for _ in range(k)] for k in (train_per_class, test_per_class)]
    return datasets.Dataset.from_list(rows[0]), datasets.Dataset.from_list(rows[1])


def load_benchmark(name: str, split: str, data_dir: str | Path) -> datasets.Dataset:
    """The release's ``<data_dir>/<name>_<split>.hf`` (``save_to_disk`` folder) or, failing that, ``.jsonl``."""
    _check_name(name)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    base = Path(data_dir) / f"{name}_{split}"
    if base.with_suffix(".hf").is_dir():
        return datasets.load_from_disk(str(base.with_suffix(".hf")))
    if base.with_suffix(".jsonl").is_file():
        with open(base.with_suffix(".jsonl")) as fh:
            return datasets.Dataset.from_list([json.loads(line) for line in fh if line.strip()])
    raise FileNotFoundError(f"data.data_dir={data_dir!s}: neither {base}.hf/ nor {base}.jsonl exists "
                            "(expected the DataInf release layout, e.g. grammars_train.hf)")


def save_benchmark(ds: datasets.Dataset, out_dir: str | Path, name: str, split: str) -> Path:
    """Write ``<out_dir>/<name>_<split>.hf`` (``save_to_disk``) and ``.jsonl``; returns the folder path."""
    out = Path(out_dir) / f"{name}_{split}"
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_to_disk(str(out.with_suffix(".hf")))
    with open(out.with_suffix(".jsonl"), "w") as fh:
        for row in ds:
            fh.write(json.dumps(row) + "\n")
    return out.with_suffix(".hf")


def _check_name(name: str) -> None:
    if name not in BENCHMARKS:
        raise ValueError(f"data.benchmark={name!r} is not one of {BENCHMARKS}")


def tokenize_prompt_response(tokenizer: PreTrainedTokenizerBase, prompt: str, text: str,
                             max_length: int) -> tuple[list[int], int]:
    """Token ids of ``text`` = prompt + response, and the number of prompt tokens (masked out of the loss).

    Prompt and response are tokenized separately so the boundary is exact; a trailing ``</s>`` becomes the
    tokenizer's own eos id. Truncates to ``max_length``; fails if nothing of the response would remain.
    """
    if not text.startswith(prompt):
        raise ValueError(f"row text does not start with its prompt: {prompt[:60]!r}")
    response = text[len(prompt):]
    ends = response.endswith(EOS_MARK)
    response = response[: -len(EOS_MARK)] if ends else response
    p_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    r_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + ([tokenizer.eos_token_id] if ends else [])
    if len(p_ids) >= max_length:
        raise ValueError(f"data.max_length={max_length} leaves no response tokens: a prompt has {len(p_ids)} tokens")
    return (p_ids + r_ids)[:max_length], len(p_ids)


class LLMBenchmarkDataModule(NoisyLabelDataModule):
    """A DataInf benchmark tokenized for causal-LM fine-tuning; ``label`` = ``clean_label`` = class id.

    Items: ``input_ids``, ``attention_mask``, ``labels`` (-100 on prompt tokens and padding, so the loss is the
    NLL of the response only, Appendix B.2.3), ``label``, ``clean_label``, ``index``; padded on the right per
    batch. ``train`` = the 900 fine-tuning prompts, ``test`` = the 100 test prompts (no val split).
    ``tokenizer=None`` trains a byte-level BPE on the training texts (offline, for tests and tiny models).
    """

    def __init__(self, benchmark: str = "grammars", data_dir: str | None = None, generate: bool = False,
                 tokenizer: str | PreTrainedTokenizerBase | None = None, tokenizer_vocab_size: int = 512,
                 max_length: int = 256, num_classes: int | None = None, train_per_class: int | None = None,
                 test_per_class: int | None = None, batch_size: int = 32, eval_batch_size: int | None = None,
                 num_workers: int = 0, seed: int = 0, keep: Sequence[int] | None = None, drop_last: bool = False):
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers,
                         seed=seed, keep=keep, drop_last=drop_last)
        _check_name(benchmark)
        if not generate and data_dir is None:
            raise ValueError("data.data_dir is required unless data.generate=true (DataInf release folder)")
        self.benchmark, self.data_dir, self.generate = benchmark, data_dir, generate
        self.tokenizer_spec, self.tokenizer_vocab_size, self.max_length = tokenizer, tokenizer_vocab_size, max_length
        self.class_names = benchmark_classes(benchmark)[:num_classes]
        self.num_classes = len(self.class_names)
        self.train_per_class, self.test_per_class = train_per_class, test_per_class
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.raw: dict[str, datasets.Dataset] = {}

    def check(self) -> None:
        """Without ``generate``, the release's train and test sets must be in ``data_dir`` (``.hf`` or ``.jsonl``)."""
        if self.generate:
            return
        for split in ("train", "test"):
            base = Path(self.data_dir) / f"{self.benchmark}_{split}"
            if not (base.with_suffix(".hf").is_dir() or base.with_suffix(".jsonl").is_file()):
                raise MissingInputError(f"data.data_dir={self.data_dir}: neither {base.name}.hf/ nor {base.name}.jsonl "
                                        "is there (the DataInf release layout; data.generate=true makes a new set)")

    def build(self) -> tuple[DictDataset, None, DictDataset]:
        """The benchmark's prompts tokenized; ``label`` and ``clean_label`` are the class ids."""
        if self.generate:
            self.raw["train"], self.raw["test"] = generate_benchmark(self.benchmark, seed=self.seed)
        else:
            self.raw = {s: load_benchmark(self.benchmark, s, self.data_dir) for s in ("train", "test")}
        self.raw = {"train": self._select(self.raw["train"], self.train_per_class),
                    "test": self._select(self.raw["test"], self.test_per_class)}
        if self.tokenizer_spec is None:
            self.tokenizer = train_bpe_tokenizer(self.raw["train"]["text"], vocab_size=self.tokenizer_vocab_size)
        else:
            self.tokenizer = load_tokenizer(self.tokenizer_spec)
        return self._tokenize(self.raw["train"]), None, self._tokenize(self.raw["test"])

    def _select(self, ds: datasets.Dataset, per_class: int | None) -> datasets.Dataset:
        """Rows of the chosen classes, the first ``per_class`` of each (release order)."""
        unknown = set(ds["variation"]) - set(benchmark_classes(self.benchmark))
        if unknown:
            raise ValueError(f"{self.benchmark}: unexpected variations {sorted(unknown)}")
        seen: dict[str, int] = {}
        rows = []
        for i, v in enumerate(ds["variation"]):
            if v in self.class_names and (per_class is None or seen.get(v, 0) < per_class):
                seen[v] = seen.get(v, 0) + 1
                rows.append(i)
        return ds.select(rows)

    def _tokenize(self, ds: datasets.Dataset) -> DictDataset:
        pairs = [tokenize_prompt_response(self.tokenizer, p, t, self.max_length)
                 for p, t in zip(ds["prompt"], ds["text"])]
        label = np.array([self.class_names.index(v) for v in ds["variation"]], dtype=np.int64)
        return DictDataset({"input_ids": [ids for ids, _ in pairs],
                            "prompt_length": np.array([n for _, n in pairs], dtype=np.int64),
                            "label": label, "clean_label": label.copy()})

    def collate(self, items: list[dict]) -> dict:
        """Right-padded causal-LM batch (:func:`collate_causal`)."""
        return collate_causal(items, self.tokenizer.pad_token_id)


def collate_causal(items: list[dict], pad_token_id: int) -> dict:
    """Right-pad ``input_ids`` to the longest item; ``labels`` = ids with -100 on the prompt and padding."""
    width = max(len(it["input_ids"]) for it in items)
    ids = torch.full((len(items), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(items), width), -100, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for r, it in enumerate(items):
        seq = torch.as_tensor(it["input_ids"], dtype=torch.long)
        ids[r, : len(seq)] = seq
        mask[r, : len(seq)] = 1
        labels[r, int(it.get("prompt_length", 0)): len(seq)] = seq[int(it.get("prompt_length", 0)):]
    out = {"input_ids": ids, "attention_mask": mask, "labels": labels,
           "index": torch.as_tensor([it["index"] for it in items], dtype=torch.long)}
    for key in ("label", "clean_label"):
        out[key] = torch.as_tensor([int(it[key]) for it in items], dtype=torch.long)
    return out
