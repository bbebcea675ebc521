"""GLUE presets (dropout Table 1 detection, OGA Figure 3 selection, dropout Figure 1 CoLA stability) end to end on
CPU: tiny GLUE-format files and a tiny RoBERTa built from a RobertaConfig (no download), then the summaries."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from hydra import compose, initialize_config_dir
from transformers import BertTokenizerFast

from gradsift import pipeline, training
from gradsift.trim import detection_metrics
from gradsift.attribution.gradient_set import GradientSet
from gradsift.summarize import load_runs, load_table, summarize, write_summary
from gradsift.viz.curves import BASELINE, curve_stats, load_curves, write_curves, write_points
from tests.test_config import CONF

WORDS = "the a film is good bad not very fun dull plot cast who what cat dog sat on mat yes no".split()
TINY_ROBERTA = ("{model_type:roberta,vocab_size:40,hidden_size:16,num_hidden_layers:2,num_attention_heads:2,"
                "intermediate_size:32,max_position_embeddings:72,pad_token_id:0,type_vocab_size:2}")


def _sentence(rng: np.random.Generator) -> str:
    return " ".join(rng.choice(WORDS, int(rng.integers(2, 8))))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """A tiny WordPiece tokenizer and SST-2 / MRPC / RTE / CoLA files in their GLUE layouts (labels follow a word)."""
    root = tmp_path_factory.mktemp("tinyglue")
    (root / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    BertTokenizerFast(vocab_file=str(root / "vocab.txt")).save_pretrained(str(root / "tok"))
    rng = np.random.default_rng(0)
    for task, folder, n_train, n_dev in (("sst2", "SST-2", 60, 16), ("mrpc", "MRPC", 60, 16),
                                         ("rte", "RTE", 60, 16), ("cola", "CoLA", 60, 16)):
        (root / "glue" / folder).mkdir(parents=True)
        for split, n in (("train", n_train), ("dev", n_dev)):
            lines = []
            for i in range(n):
                s1, s2 = _sentence(rng), _sentence(rng)
                lab = int("good" in s1 or "fun" in s1)
                lines.append({"sst2": f"{s1}\t{lab}", "mrpc": f"{lab}\t{i}\t{i + 1000}\t{s1}\t{s2}",
                              "rte": f"{i}\t{s1}\t{s2}\t{'entailment' if lab == 0 else 'not_entailment'}",
                              "cola": f"gj04\t{lab}\t\t{s1}"}[task])
            header = {"sst2": ["sentence\tlabel"], "rte": ["index\tsentence1\tsentence2\tlabel"]}.get(task, [])
            name = "train_full.tsv" if (task, split) == ("sst2", "train") else f"{split}.tsv"
            (root / "glue" / folder / name).write_text("\n".join(header + lines) + "\n")
    return {"root": root, "tok": root / "tok"}


def _overrides(tiny: dict[str, Path], tmp_path: Path) -> list[str]:
    return [f"paths.data_dir={tiny['root']}", f"paths.cache_dir={tmp_path / 'cache'}", "data.source=local",
            f"data.tokenizer={tiny['tok']}", "data.max_length=32", "data.val_size=10", "data.batch_size=16",
            "model.model=null", f"+model.config={TINY_ROBERTA}", "model.optimizer.lr=0.01",
            "trainer.max_epochs=2", "trainer.precision=32", "trainer.accelerator=cpu", "trainer.benchmark=false",
            "torch_threads=1"]


def _compose(experiment: str, *extra: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=[f"experiment={experiment}", *extra])


def _sweep(experiment: str) -> dict[str, list[str]]:
    params = yaml.safe_load((CONF / "experiment" / f"{experiment}.yaml").read_text())["hydra"]["sweeper"]["params"]
    return {k: str(v).split(",") for k, v in params.items()}


def test_detection_preset_runs_every_table1_scorer_and_summarizes(tiny, tmp_path, monkeypatch):
    """train -> LoRA gradients -> every Table-1 scorer (+ OGA detectors) -> AUC, base model trained once."""
    sweep = _sweep("dropout_table1_glue_detection")
    assert sweep["model.lora_rank"] == ["2", "8"] and sweep["seed"] == ["0", "1", "2"]
    assert sweep["data"] == ["glue_sst2", "glue_mrpc", "glue_rte"]
    scorers = sweep["scorer"]
    assert {"orig", "datainf", "lissa", "tracin", "gaussian_influence", "dropout_influence", "iforest", "l1",
            "l2"} == set(scorers)
    calls = []
    real = training.fit_and_evaluate
    monkeypatch.setattr(training, "fit_and_evaluate", lambda *a, **k: calls.append(k.get("stage")) or real(*a, **k))
    out = tmp_path / "multirun"
    for i, scorer in enumerate(scorers):
        cfg = _compose("dropout_table1_glue_detection", *_overrides(tiny, tmp_path), f"scorer={scorer}")
        assert cfg.retrain is False and cfg.attribution.reference == "val" and cfg.gradients.parameters == "lora"
        res = pipeline.run(cfg, out / str(i), choices={"scorer": scorer})
        m = res["metrics"]
        assert res["status"] == "ok" and 0.0 <= m["detection_auc"] <= 1.0, (scorer, res.get("error"))
        assert m["n_noisy"] == 10 and "test_acc" not in m  # 20% of 50 training rows; no retrain
    assert calls == ["base"]  # one training serves every scorer (compression happens at scoring time)
    # the stored gradients are the LoRA adapters' only
    (grads,) = list((tmp_path / "cache").rglob("grads_train.npz"))
    gs = GradientSet.load(str(grads))
    assert gs.blocks and all("lora_" in b.name for b in gs.blocks)
    assert gs.dim == 2 * 2 * (2 * 16)  # 2 layers x (A[2,16] + B[16,2])
    # dropout Table 1 summary: Hessian-Free row from tracin, rank sub-table, SST2 column, paper beside ours
    s = summarize(load_runs([out]), load_table("dropout.table1_mislabel_auc_glue"))
    cells = s.cells["rank2"]
    for row in ("Orig.", "DataInf", "LiSSA", "Hessian-Free", "Gaussian", "Dropout", "Outlier Gradient (iForest)"):
        assert cells[row]["SST2"].n == 1, row
    assert cells["Dropout"]["SST2"].paper_mean == pytest.approx(0.930)
    assert "MiniLM" in s.table.notes


def test_detection_rank8_orig_falls_back_to_block_diagonal(tiny, tmp_path):
    cfg = _compose("dropout_table1_glue_detection", *_overrides(tiny, tmp_path), "model.lora_rank=8", "scorer=orig",
                   "scorer.max_dim=300", "data=glue_rte")
    res = pipeline.run(cfg, tmp_path / "r8", choices={"scorer": "orig"})
    assert res["status"] == "ok" and res["dataset"] == "glue_rte" and res["config"]["model"]["lora_rank"] == 8
    assert 0.0 <= res["metrics"]["detection_auc"] <= 1.0  # d = 512 > max_dim: per-layer blocks of 128


def test_figure3_selection_preset_records_curves_and_plots(tiny, tmp_path):
    sweep = _sweep("figure3_glue_selection")
    assert set(sweep["scorer"]) == {"random", "tracin", "datainf", "iforest", "l2"}
    assert sweep["data"] == ["glue_sst2", "glue_mrpc"] and len(sweep["seed"]) == 3
    assert _compose("figure3_glue_selection", f"paths.cache_dir={tmp_path}").trainer.max_epochs == 10
    out = tmp_path / "multirun"
    for i, (scorer, data) in enumerate([("random", "glue_mrpc"), ("iforest", "glue_mrpc"), ("datainf", "glue_sst2")]):
        cfg = _compose("figure3_glue_selection", *_overrides(tiny, tmp_path), f"scorer={scorer}", f"data={data}")
        assert cfg.eval_every_epoch and cfg.trim.budget == 0.3 and cfg.trim.remove == "detrimental"
        res = pipeline.run(cfg, out / str(i), choices={"scorer": scorer})
        m = res["metrics"]
        assert res["status"] == "ok" and m["n_trimmed"] == 15  # 30% of 50
        assert len(m["test_curve"]) == len(m["base_test_curve"]) == 2
    stats = write_curves([out], tmp_path / "fig3" / "figure3_glue_selection", title="tiny")
    assert (tmp_path / "fig3" / "figure3_glue_selection.png").stat().st_size > 0
    assert set(stats.task) == {"MRPC", "SST2"} and BASELINE in set(stats.method)
    assert len(stats[(stats.task == "MRPC") & (stats.method == BASELINE)]) == 2  # once per seed, not per method
    table = summarize(load_runs([out]), load_table("oga.figure3_glue_data_selection"))
    assert table.cells[""]["Random"]["MRPC"].n == 1 and table.cells[""][BASELINE]["MRPC"].n == 1


def test_cola_stability_preset_runs_on_local_files(tiny, tmp_path, monkeypatch):
    sweep = _sweep("dropout_figure1_cola_stability")
    assert sweep["scorer.compressor.r"] == ["1", "2", "3", "4"] and len(sweep["seed"]) == 5
    out = tmp_path / "multirun"
    jobs = [("gaussian_influence", "1"), ("dropout_influence", "1"), ("dropout_influence", "4"), ("orig", None)]
    for i, (scorer, r) in enumerate(jobs):
        extra = [f"scorer={scorer}"] + ([f"scorer.compressor.r={r}"] if r else [])
        cfg = _compose("dropout_figure1_cola_stability", *_overrides(tiny, tmp_path), *extra)
        assert cfg.data.task == "cola" and cfg.model.lora_rank == 2
        res = pipeline.run(cfg, out / str(i), choices={"scorer": scorer})
        assert res["status"] == "ok" and 0 <= res["metrics"]["detection_auc"] <= 1
    monkeypatch.chdir(tmp_path)
    s, md = write_summary([out], "dropout.figure1_cola_stability", tmp_path / "fig1")
    assert s.cells[""]["Dropout"]["1"].n == 1 and s.cells[""]["Dropout"]["4"].n == 1
    assert s.cells[""]["Gaussian"]["1"].n == 1 and s.cells[""]["Orig."]["Orig."].n == 1
    # Figure-1 style plot: AUC vs r with min/max bands, the uncompressed Orig. as a horizontal line
    stats = write_points([out], tmp_path / "fig1" / "dropout_figure1_cola", "config.scorer.compressor.r",
                         "metrics.detection_auc")
    assert (tmp_path / "fig1" / "dropout_figure1_cola.png").is_file()
    assert set(stats.method) == {"Gaussian", "Dropout", "Orig."}
    assert sorted(stats[stats.method == "Dropout"]["r"].tolist()) == [1.0, 4.0]
    assert stats[stats.method == "Orig."]["r"].isna().all()


def test_detection_auc_is_sklearns_on_a_hand_made_case():
    noise = np.array([1, 1, 0, 0, 0], dtype=bool)
    scores = np.array([0.9, 0.3, 0.5, 0.1, 0.2])
    m = detection_metrics(scores > 0.4, scores, noise)
    # positive pairs ranked above negatives: 0.9 beats 3, 0.3 beats 2 of 3 -> 5/6
    assert m["detection_auc"] == pytest.approx(5 / 6)
    assert m["true_positives"] == 1 and m["precision"] == 0.5 and m["recall"] == 0.5
    assert detection_metrics(scores > 0.4, -scores, noise)["detection_auc"] == pytest.approx(1 / 6)


def test_curves_from_fake_result_files(tmp_path):
    def job(i: int, dataset: str, method: str, seed: int, curve: list[float], base: list[float]) -> None:
        d = tmp_path / "runs" / str(i)
        d.mkdir(parents=True)
        (d / "result.json").write_text(json.dumps({
            "status": "ok", "dataset": dataset, "method": method, "seed": seed,
            "metrics": {"test_curve": curve, "base_test_curve": base, "test_acc": curve[-1]}}))

    job(0, "glue_sst2", "Random", 0, [0.5, 0.6, 0.7], [0.5, 0.5, 0.6])
    job(1, "glue_sst2", "Random", 1, [0.7, 0.8, 0.9], [0.6, 0.6, 0.8])
    job(2, "glue_sst2", "Outlier Gradient (L2)", 0, [0.6, 0.7, 0.8], [0.5, 0.5, 0.6])
    job(3, "glue_mrpc", "Random", 0, [0.4, 0.5, 0.6], [0.3, 0.3, 0.3])
    d = tmp_path / "runs" / "4"
    d.mkdir()
    (d / "result.json").write_text(json.dumps({"status": "failed", "dataset": "glue_sst2", "method": "Random"}))
    frame = load_curves([tmp_path / "runs"])
    assert len(frame) == 4 * 3 + 3 * 3  # 4 finished curves + one baseline per (task, seed): SST2 x2, MRPC x1
    stats = curve_stats(frame)
    r = stats[(stats.task == "SST2") & (stats.method == "Random")]
    np.testing.assert_allclose(r["mean"], [0.6, 0.7, 0.8])
    np.testing.assert_allclose(r["std"], [np.std([0.5, 0.7], ddof=1)] * 3)
    assert r["n"].tolist() == [2, 2, 2]
    b = stats[(stats.task == "SST2") & (stats.method == BASELINE)]
    np.testing.assert_allclose(b["mean"], [0.55, 0.55, 0.7])  # one baseline per seed, not per method
    write_curves([tmp_path / "runs"], tmp_path / "out" / "figure3_glue_fake.png", band="minmax")
    assert (tmp_path / "out" / "figure3_glue_fake.png").is_file()
    csv = (tmp_path / "out" / "figure3_glue_fake.csv").read_text().splitlines()
    assert csv[0] == "task,method,epoch,mean,std,min,max,n" and len(csv) == 1 + 5 * 3  # SST2: 2 methods + baseline; MRPC: 1 + baseline
    with pytest.raises(ValueError, match="eval_every_epoch"):
        write_curves([tmp_path / "runs" / "4"], tmp_path / "none")


def test_curves_keep_cifar_n_label_sets_apart(tmp_path):
    """worst and aggregate runs of one dataset are two panels, not one mean; a numeric noise is no label set."""
    for i, (dataset, noise, v) in enumerate([("cifar10n", "worst", 0.6), ("cifar10n", "aggregate", 0.9),
                                             ("moons", 0.2, 0.8)]):
        d = tmp_path / "runs" / str(i)
        d.mkdir(parents=True)
        (d / "result.json").write_text(json.dumps({
            "status": "ok", "dataset": dataset, "method": "iForest", "seed": 0, "config": {"data": {"noise": noise}},
            "metrics": {"test_curve": [v, v], "base_test_curve": [v - 0.1, v - 0.1]}}))
    stats = curve_stats(load_curves([tmp_path / "runs"]))
    assert set(stats.task) == {"cifar10n worst", "cifar10n aggregate", "moons"}
    got = stats[stats.method == "iForest"].set_index("task")["mean"].groupby(level=0).first()
    assert got.to_dict() == pytest.approx({"cifar10n worst": 0.6, "cifar10n aggregate": 0.9, "moons": 0.8})
