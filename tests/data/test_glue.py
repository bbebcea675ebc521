"""GLUE datamodule: file formats, seeded subsampling and 20% label flips, tokenization cache, dynamic padding."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from transformers import BertTokenizerFast

from gradsift.data.glue import GlueDataModule, find_local_files, read_glue_file

SHARED_GLUE = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "glue"
WORDS = "the a film is good bad what who where why question answer yes no cat dog sat on mat".split()


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> str:
    """A tiny WordPiece tokenizer (BERT format, so it makes token_type_ids), saved like a hub folder."""
    out = tmp_path_factory.mktemp("tok")
    vocab = out / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(str(out))
    return str(out)


def sentence(rng: np.random.Generator, k: int | None = None) -> str:
    return " ".join(rng.choice(WORDS, size=k or int(rng.integers(2, 9))))


def write_task(root: Path, task: str, n_train: int, n_dev: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Files in the GLUE layouts of each task (as staged under shared/data/glue); returns the true labels."""
    rng = np.random.default_rng(seed)
    labels = {"train": rng.integers(0, 2, n_train), "dev": rng.integers(0, 2, n_dev)}
    for split, y in labels.items():
        if task == "qnli" and split == "train":
            continue  # QNLI offline: only dev.tsv
        lines = []
        for i, lab in enumerate(y):
            s1, s2 = sentence(rng), sentence(rng)
            ent = "entailment" if lab == 0 else "not_entailment"
            lines.append({"sst2": f"{s1} \t{lab}",
                          "cola": f"gj04\t{lab}\t\t{s1}",
                          "mrpc": f"{lab}\t{100 + i}\t{200 + i}\t{s1}\t{s2}",
                          "rte": f"{i}\t{s1}\t{s2}\t{ent}",
                          "qnli": f"{i}\t{s1}?\t{s2}\t{ent}",
                          "qqp": f"{i}\t{2 * i}\t{2 * i + 1}\t{s1}?\t{s2}?\t{lab}"}[task])
        header = {"sst2": "sentence\tlabel", "rte": "index\tsentence1\tsentence2\tlabel",
                  "qnli": "index\tquestion\tsentence\tlabel",
                  "qqp": "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate"}.get(task)
        folder = root / {"sst2": "SST-2", "cola": "CoLA", "mrpc": "MRPC", "rte": "RTE", "qnli": "QNLI",
                         "qqp": "QQP"}[task]
        folder.mkdir(parents=True, exist_ok=True)
        name = "train_full.tsv" if (task == "sst2" and split == "train") else f"{split}.tsv"
        (folder / name).write_text("\n".join(([header] if header else []) + lines) + "\n")
    return labels


def make_dm(root: Path, task: str, tokenizer: str, tmp_path: Path, **kw) -> GlueDataModule:
    return GlueDataModule(task, data_dir=str(root), tokenizer=tokenizer, cache_dir=str(tmp_path / "cache"),
                          source="local", batch_size=8, **kw)


@pytest.mark.parametrize("task", ["sst2", "cola", "mrpc", "rte", "qqp"])
def test_local_files_parse_and_tokenize(tmp_path, tokenizer_dir, task):
    labels = write_task(tmp_path / "glue", task, n_train=40, n_dev=15)
    dm = make_dm(tmp_path / "glue", task, tokenizer_dir, tmp_path)
    dm.setup()
    assert (len(dm.train_set), len(dm.test_set)) == (40, 15)
    assert dm.val_set is dm.test_set
    np.testing.assert_array_equal(dm.train_set.columns["clean_label"], labels["train"])
    np.testing.assert_array_equal(dm.test_set.columns["clean_label"], labels["dev"])
    np.testing.assert_array_equal(dm.test_set.columns["label"], labels["dev"])  # test labels are clean
    item = dm.train_set[3]
    assert set(item) == {"input_ids", "attention_mask", "token_type_ids", "label", "clean_label", "index"}
    pair = task in ("mrpc", "rte", "qqp")
    assert (item["token_type_ids"].max() == 1) == pair  # sentence pairs are joined as [CLS] a [SEP] b [SEP]
    assert item["input_ids"][0] == 2 and item["input_ids"][-1] == 3


def test_qnli_dev_only_is_split_with_seed(tmp_path, tokenizer_dir):
    labels = write_task(tmp_path / "glue", "qnli", n_train=0, n_dev=60)
    assert find_local_files("qnli", tmp_path / "glue").keys() == {"validation"}
    with pytest.warns(UserWarning, match="no training file"):
        dm = make_dm(tmp_path / "glue", "qnli", tokenizer_dir, tmp_path, test_size=10)
        dm.setup()
    assert (len(dm.train_set), len(dm.test_set)) == (50, 10)
    assert "split seeded" in dm.origin
    both = np.concatenate([dm.full_train_set.columns["clean_label"], dm.test_set.columns["label"]])
    assert np.bincount(both).tolist() == np.bincount(labels["dev"]).tolist()  # a partition of the dev rows


def test_flip_mask_exactly_20_percent_and_seeded(tmp_path, tokenizer_dir):
    write_task(tmp_path / "glue", "sst2", n_train=100, n_dev=10)
    masks = []
    for seed in (0, 0, 1):
        dm = make_dm(tmp_path / "glue", "sst2", tokenizer_dir, tmp_path, train_size=50, seed=seed)
        dm.setup()
        cols = dm.train_set.columns
        mask = dm.noise_mask
        assert mask.sum() == 10 and len(mask) == 50
        np.testing.assert_array_equal(cols["label"][mask], 1 - cols["clean_label"][mask])
        np.testing.assert_array_equal(cols["label"][~mask], cols["clean_label"][~mask])
        masks.append((mask, [it.tolist() for it in cols["input_ids"]]))
    assert np.array_equal(masks[0][0], masks[1][0]) and masks[0][1] == masks[1][1]
    assert masks[0][1] != masks[2][1]  # another seed draws another subsample


def test_subsample_holdout_and_cache(tmp_path, tokenizer_dir):
    write_task(tmp_path / "glue", "mrpc", n_train=60, n_dev=30)
    full = read_glue_file("mrpc", tmp_path / "glue" / "MRPC" / "train.tsv")
    dm = make_dm(tmp_path / "glue", "mrpc", tokenizer_dir, tmp_path, train_size=20, test_size=12, val_size=8)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (20, 8, 12)
    np.testing.assert_array_equal(dm.val_set.columns["label"], dm.val_set.columns["clean_label"])  # held out clean
    rows = dm.select_rows(60, 30)
    assert not set(rows["train"]) & set(rows["val"])
    np.testing.assert_array_equal(dm.full_train_set.columns["clean_label"], full["label"].to_numpy()[rows["train"]])
    files = list((tmp_path / "cache" / "glue").glob("mrpc-*.npz"))
    assert len(files) == 1
    again = make_dm(tmp_path / "glue", "mrpc", tokenizer_dir, tmp_path, train_size=20, test_size=12, val_size=8)
    again.setup()
    for a, b in zip(again.train_set.columns["input_ids"], dm.train_set.columns["input_ids"]):
        np.testing.assert_array_equal(a, b)
    make_dm(tmp_path / "glue", "mrpc", tokenizer_dir, tmp_path, max_length=8, train_size=20).setup()
    assert len(list((tmp_path / "cache" / "glue").glob("mrpc-*.npz"))) == 2


def test_dynamic_padding(tmp_path, tokenizer_dir):
    write_task(tmp_path / "glue", "rte", n_train=16, n_dev=8)
    dm = make_dm(tmp_path / "glue", "rte", tokenizer_dir, tmp_path, max_length=12)
    dm.setup()
    batch = next(iter(dm.attribution_dataloader("train")))
    lengths = [len(dm.train_set[i]["input_ids"]) for i in range(8)]
    assert batch["input_ids"].shape == (8, max(lengths)) and max(lengths) <= 12
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert (batch["input_ids"][batch["attention_mask"] == 0] == 0).all()
    assert batch["index"].tolist() == list(range(8))


def test_parquet_and_jsonl(tmp_path):
    import pandas as pd

    frame = pd.DataFrame({"question1": ["a?", "b?"], "question2": ["c?", "d?"], "label": [0, 1], "idx": [0, 1]})
    frame.to_parquet(tmp_path / "train.parquet")
    frame.to_json(tmp_path / "validation.jsonl", orient="records", lines=True)
    files = find_local_files("qqp", tmp_path)
    for path in files.values():
        out = read_glue_file("qqp", path)
        assert out.columns.tolist() == ["question1", "question2", "label"] and out["label"].tolist() == [0, 1]


def test_bad_input_names_the_problem(tmp_path):
    with pytest.raises(ValueError, match="data.task='mnli'"):
        GlueDataModule("mnli")
    bad = tmp_path / "dev.tsv"
    bad.write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n")
    with pytest.raises(ValueError, match="dev.tsv: label column"):
        read_glue_file("rte", bad)
    ragged = tmp_path / "train.tsv"
    ragged.write_text("sentence\tlabel\ngood\t1\nbad\t0\textra\n")
    with pytest.raises(ValueError, match="train.tsv: not a tab-separated"):
        read_glue_file("sst2", ragged)
    unlabeled = tmp_path / "test.tsv"
    unlabeled.write_text("index\tsentence\n0\tgood film\n")
    with pytest.raises(ValueError, match="not a labeled GLUE sst2 file"):
        read_glue_file("sst2", unlabeled)


# -- the real staged files ----------------------------------------------------------------------------
REAL = [("sst2", "SST-2/train_full.tsv", 67349), ("sst2", "SST-2/dev.tsv", 872),
        ("sst2", "SST-2/test-labeled.tsv", 1821), ("rte", "RTE/train.tsv", 1244), ("rte", "RTE/dev.tsv", 139),
        ("rte", "RTE/test.tsv", 1384), ("mrpc", "MRPC/train.tsv", 2576), ("mrpc", "MRPC/dev.tsv", 1500),
        ("mrpc", "MRPC/test.tsv", 1725), ("qnli", "QNLI/dev.tsv", 5463)]


@pytest.mark.skipif(not SHARED_GLUE.is_dir(), reason=f"real GLUE files not staged at {SHARED_GLUE}")
@pytest.mark.parametrize("task,name,rows", REAL)
def test_real_files(task, name, rows):
    frame = read_glue_file(task, SHARED_GLUE / name)
    assert len(frame) == rows
    assert set(frame["label"]) == {0, 1} and (frame.iloc[:, 0].str.len() > 0).all()
    if name == "QNLI/dev.tsv":  # published counts: entailment 2,702 / not_entailment 2,761
        assert np.bincount(frame["label"]).tolist() == [2702, 2761]
    if name == "SST-2/train_full.tsv":
        assert np.bincount(frame["label"]).tolist() == [29780, 37569]


@pytest.mark.skipif(not SHARED_GLUE.is_dir(), reason=f"real GLUE files not staged at {SHARED_GLUE}")
def test_real_sst2_datainf_subsample(tmp_path, tokenizer_dir):
    dm = GlueDataModule("sst2", data_dir=str(SHARED_GLUE), tokenizer=tokenizer_dir, cache_dir=str(tmp_path),
                        train_size=4500, test_size=500, source="local")
    dm.setup()
    assert (len(dm.train_set), len(dm.test_set), int(dm.noise_mask.sum())) == (4500, 500, 900)
    assert os.fspath(SHARED_GLUE / "SST-2" / "train_full.tsv") in dm.origin


@pytest.mark.parametrize("task", ["sst2", "mrpc", "rte", "qnli", "qqp", "cola"])
def test_configs_compose(task):
    from hydra import compose, initialize_config_dir
    from hydra.utils import get_class, instantiate

    from gradsift import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        for model in ("minilm_lora", "roberta_large_lora", "roberta_base_lora"):
            cfg = compose("config", overrides=[f"data=glue_{task}", f"model={model}", "seed=3"])
            dm = instantiate(cfg.data)
            assert (dm.task, dm.seed, dm.tokenizer_name, dm.noise_fraction) == (task, 3, cfg.model.model, 0.2)
            assert dm.train_size == (4500 if task in ("sst2", "qqp", "qnli", "cola") else None)
            assert get_class(cfg.model._target_) is not None and cfg.model.optimizer.lr == 3e-4
