"""MPNet (all-mpnet-base-v2's architecture) in the LoRA sequence classifier: target names, head, mean pooling,
per-sample gradients against autograd, model=mpnet_base_lora on a tiny random MPNet folder, the bf16 export carried
in pieces; and the real fetched model when it is there."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from safetensors import safe_open

from gradsift.attribution.gradients import PerSampleGradients, select_parameters
from gradsift.carry import pack
from gradsift.data.glue import GlueDataModule
from gradsift.fetch import MPNET, folder_problem, models_dir
from gradsift.models.pretrained import export_bf16
from gradsift.models.sequence_classifier import SequenceClassifier
from tests.conftest import REPO
from tests.test_config import CONF
from tests.tiny_mpnet import WORDS, tiny_mpnet_config, write_tiny_mpnet

HAS_MPNET = folder_problem(models_dir() / MPNET.folder, MPNET.sha256, verify=False) is None


def tiny(**kw) -> SequenceClassifier:
    return SequenceClassifier(model=None, config=tiny_mpnet_config(), lora_rank=2, **kw)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_tiny_mpnet(tmp_path_factory.mktemp("mpnet") / "tiny-mpnet")


@pytest.fixture(scope="module")
def glue(folder, tmp_path_factory) -> GlueDataModule:
    """24 SST-2-format training rows tokenized by the tiny MPNet tokenizer (no token_type_ids, <pad> = 1)."""
    root = tmp_path_factory.mktemp("glue")
    rng = np.random.default_rng(0)
    rows = [f"{' '.join(rng.choice(WORDS, int(rng.integers(2, 10))))}\t{int(rng.integers(0, 2))}" for _ in range(34)]
    (root / "SST-2").mkdir()
    (root / "SST-2" / "train.tsv").write_text("sentence\tlabel\n" + "\n".join(rows[:24]) + "\n")
    (root / "SST-2" / "dev.tsv").write_text("sentence\tlabel\n" + "\n".join(rows[24:]) + "\n")
    dm = GlueDataModule("sst2", data_dir=str(root), tokenizer=str(folder), cache_dir=str(root / "cache"),
                        source="local", batch_size=8, max_length=32)
    dm.setup()
    assert dm.pad_token_id == 1 and "token_type_ids" not in dm.train_set.columns
    return dm


def _randomize_lora_b(model: SequenceClassifier) -> None:
    with torch.no_grad():  # B starts at zero, which would make every lora_A gradient zero
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)


def test_lora_targets_map_bert_names_to_mpnet_attention():
    value = select_parameters(tiny(), "lora")
    assert len(value) == 4 and all(".attention.attn.v.lora_" in n for n in value)  # 2 layers x (A, B)
    qv = select_parameters(tiny(target_modules=["query", "value"]), "lora")
    assert sorted({n.split(".lora_")[0].rsplit(".", 1)[1] for n in qv}) == ["q", "v"] and len(qv) == 8
    assert set(select_parameters(tiny(target_modules=["v"]), "lora")) == set(value)  # raw names work too
    with pytest.raises(ValueError, match=r"model.target_modules \['value_proj'\].*'q', 'v'"):
        tiny(target_modules=["value_proj"])
    model = tiny()
    assert type(model.net.base_model.model).__name__ == "MPNetForSequenceClassification"
    extra = [n for n, p in model.named_parameters() if "lora_" not in n and p.requires_grad]
    assert extra and all(".classifier.modules_to_save." in n for n in extra)  # dense + out_proj of the head
    frozen = tiny(train_head=False)
    assert [n for n, p in frozen.named_parameters() if p.requires_grad] == list(select_parameters(frozen, "lora"))


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_per_sample_gradients_match_autograd(pooling, glue):
    torch.manual_seed(1)
    model = tiny(pooling=pooling)
    _randomize_lora_b(model)
    gs = PerSampleGradients(parameters="lora", progress=False).gather(model, glue.attribution_dataloader("train"))
    assert gs.grads.shape == (24, 2 * (2 * 16 + 16 * 2))  # layers x (A: r x h + B: h x r)
    model.eval()
    params = select_parameters(model, "lora")
    for i in (0, 7, 19):
        batch = glue.collate([glue.train_set[i]])  # the sample alone, unpadded
        grads = torch.autograd.grad(model.per_sample_loss(batch).sum(), list(params.values()))
        ref = torch.cat([g.reshape(-1) for g in grads]).numpy()
        assert np.abs(ref).max() > 0
        np.testing.assert_allclose(gs.grads[i], ref, rtol=1e-4, atol=1e-7)


def test_mean_pooling_reads_the_masked_mean_through_the_mpnet_head(glue):
    mean, cls = tiny(pooling="mean", seed=3).eval(), tiny(pooling="cls", seed=3).eval()
    batch = glue.collate([glue.train_set[i] for i in range(6)])
    assert (batch["attention_mask"] == 0).any()
    with torch.no_grad():
        logits, cls_logits = mean.logits(batch), cls.logits(batch)
        assert logits.shape == (6, 2) and not torch.allclose(logits, cls_logits)
        task = mean.net.base_model.model  # same seed: the same weights as cls's
        head = task.classifier.modules_to_save["default"]  # MPNetClassificationHead: dense, tanh, out_proj
        for i in range(6):
            n = int(batch["attention_mask"][i].sum())
            hidden = task.base_model(input_ids=batch["input_ids"][i:i + 1, :n]).last_hidden_state  # row alone
            for pooled, out in ((hidden.mean(1), logits), (hidden[:, 0], cls_logits)):  # cls reads <s>
                torch.testing.assert_close(out[i], head.out_proj(torch.tanh(head.dense(pooled)))[0],
                                           rtol=1e-4, atol=1e-5)


def test_trains_with_lightning(glue):
    model = tiny()
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    trainer = pl.Trainer(fast_dev_run=True, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(model, datamodule=glue)
    after = dict(model.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before)


def test_model_config_loads_a_tiny_mpnet_folder_and_its_carried_bf16_export(folder, tmp_path):
    """model=mpnet_base_lora with model.model=<folder>: the recipe's values, LoRA on attn.v, the tokenizer follows;
    then the bf16 export packed into pieces, assembled by the device script, reloads to the same bf16 weights."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["model=mpnet_base_lora", "data=glue_sst2", f"model.model={folder}",
                                           f"paths.cache_dir={tmp_path}"])
    assert cfg.model.target_modules == ["value"] and cfg.model.optimizer.lr == 3e-4 and cfg.model.lora_dropout == 0.05
    assert cfg.data.tokenizer == str(folder)
    model = instantiate(cfg.model)
    assert len(select_parameters(model, "lora")) == 4
    enc = {"input_ids": torch.tensor([[0, 10, 11, 2, 1]]), "attention_mask": torch.tensor([[1, 1, 1, 1, 0]]),
           "label": torch.tensor([1])}
    assert model.logits(enc).shape == (1, 2)

    out = export_bf16(str(folder), tmp_path / "tiny_bf16")
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
        assert not any(k.startswith("pooler.") for k in f.keys())  # the classifier never reads the pooler
    manifest = pack(out, tmp_path / "carry", "tiny_bf16", piece_bytes=4096)
    assert len(manifest["pieces"]) > 2
    store = tmp_path / "device"
    script = [sys.executable, str(REPO / "scripts" / "gpu" / "assemble_model.py"), str(tmp_path / "carry"),
              str(store)]
    done = subprocess.run(script, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    reloaded = SequenceClassifier(model=str(store / "model"), lora_rank=2)
    orig = dict(model.net.base_model.model.mpnet.named_parameters())
    for name, p in reloaded.net.base_model.model.mpnet.named_parameters():
        if "lora_" not in name:
            torch.testing.assert_close(p, orig[name].detach().bfloat16().float(), rtol=0, atol=0)


@pytest.mark.skipif(not HAS_MPNET, reason=f"all-mpnet-base-v2 not fetched into {models_dir()} (make fetch-mpnet)")
def test_fetched_mpnet_loads_through_the_model_config(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["model=mpnet_base_lora", "model.target_modules=[query,value]"])
    model = instantiate(cfg.model)
    assert sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n and "modules_to_save" not in n) \
        == 109_488_002  # the encoder and the original head (the trained head is PEFT's copy of it)
    lora = select_parameters(model, "lora")
    assert len(lora) == 48 and sum(p.numel() for p in lora.values()) == 12 * 2 * 2 * (4 * 768)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(models_dir() / MPNET.folder))
    enc = tok(["a charming journey"], ["it is"], return_tensors="pt")
    assert "token_type_ids" not in enc and tok.pad_token_id == 1
    assert model.logits({**enc, "label": torch.tensor([0])}).shape == (1, 2)
