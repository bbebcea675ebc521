import pytest
import torch

from gradsift.data.text_corpus import TextCorpusDataModule, chunk_token_ids, read_lines
from gradsift.data.tokenizers import train_bpe_tokenizer

LINES = [f" = Section {i} = \n" if i % 7 == 0 else f" line {i} of the corpus , with words {i * 3} .\n"
         for i in range(120)] + ["\n"]


@pytest.fixture(scope="module")
def tok():
    return train_bpe_tokenizer(LINES, vocab_size=300)


def test_chunks_are_consecutive_blocks_of_the_concatenation(tok):
    flat = [t for ln in LINES if ln.strip() for t in tok(ln)["input_ids"]]
    chunks = chunk_token_ids(LINES, tok, seq_len=16)
    assert len(chunks) == len(flat) // 16
    assert [t for c in chunks for t in c] == flat[: 16 * len(chunks)]
    assert chunk_token_ids(LINES, tok, seq_len=16, max_chunks=3) == chunks[:3]
    with pytest.raises(ValueError, match="seq_len"):
        chunk_token_ids(LINES, tok, seq_len=1)


def test_local_files_datamodule(tmp_path, tok):
    (tmp_path / "train.txt").write_text("".join(LINES[:100]))
    (tmp_path / "test.txt").write_text("".join(LINES[100:]))
    dm = TextCorpusDataModule(tokenizer=tok, train_file=str(tmp_path / "train.txt"),
                              test_file=str(tmp_path / "test.txt"), seq_len=16, n_train=10, n_test=2, batch_size=4)
    dm.setup()
    assert len(dm.train_set) == 10 and len(dm.test_set) == 2
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == (4, 16)
    assert torch.equal(batch["labels"], batch["input_ids"]) and batch["attention_mask"].all()
    assert (batch["label"] == 0).all() and (batch["clean_label"] == 0).all()
    assert dm.train_set[0]["input_ids"] == chunk_token_ids(read_lines(tmp_path / "train.txt"), tok, 16)[0]


def test_too_few_chunks_warns(tmp_path, tok):
    (tmp_path / "a.txt").write_text("".join(LINES[:20]))
    dm = TextCorpusDataModule(tokenizer=tok, train_file=str(tmp_path / "a.txt"), test_file=str(tmp_path / "a.txt"),
                              seq_len=16, n_train=10_000, n_test=1)
    with pytest.warns(UserWarning, match="fewer than"):
        dm.setup()


def test_offline_wikitext2_uses_valid_for_train(shared_data):
    lines = read_lines(shared_data / "wikitext-2" / "wiki.valid.tokens")
    tok = train_bpe_tokenizer(lines[:200], vocab_size=300)
    dm = TextCorpusDataModule(tokenizer=tok, data_dir=str(shared_data), seq_len=64, n_train=20, n_test=5)
    dm.setup()
    assert "validation split" in dm.source
    assert dm.train_set[0]["input_ids"] == chunk_token_ids(lines, tok, 64, max_chunks=1)[0]
    test_lines = read_lines(shared_data / "wikitext-2" / "wiki.test.tokens")
    assert dm.test_set[4]["input_ids"] == chunk_token_ids(test_lines, tok, 64, max_chunks=5)[4]


def test_bad_config():
    with pytest.raises(ValueError, match="data.corpus"):
        TextCorpusDataModule(corpus="c4")
    with pytest.raises(ValueError, match="together"):
        TextCorpusDataModule(train_file="x.txt")
    with pytest.raises(FileNotFoundError, match="lacks"):
        TextCorpusDataModule(tokenizer=None, data_dir="/nonexistent").setup()
