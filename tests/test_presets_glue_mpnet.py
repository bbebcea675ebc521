"""The GLUE presets with model=mpnet_base_lora end to end on CPU: a tiny random MPNet folder (tests/tiny_mpnet.py)
and small samples of the staged GLUE files (../shared/data/glue), then the paper-table summaries."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from gradsift import pipeline
from gradsift.attribution.gradient_set import GradientSet
from gradsift.summarize import load_runs, load_table, summarize
from tests.test_config import CONF
from tests.tiny_mpnet import write_tiny_mpnet


@pytest.fixture(scope="module")
def mpnet(tmp_path_factory) -> Path:
    return write_tiny_mpnet(tmp_path_factory.mktemp("mpnet") / "tiny-mpnet")


def _compose(experiment: str, mpnet: Path, data_dir: Path, tmp_path: Path, *extra: str):
    overrides = [f"experiment={experiment}", "model=mpnet_base_lora", f"model.model={mpnet}",
                 f"paths.data_dir={data_dir}", f"paths.cache_dir={tmp_path / 'cache'}", "data.source=local",
                 "data.train_size=40", "data.test_size=16", "data.val_size=10", "data.max_length=32",
                 "data.batch_size=16", "model.optimizer.lr=0.01", "trainer.max_epochs=1", "trainer.precision=32",
                 "trainer.accelerator=cpu", "trainer.benchmark=false", "torch_threads=1", *extra]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=overrides)


def test_detection_preset_with_mpnet_on_glue_files(mpnet, shared_data, tmp_path):
    out = tmp_path / "multirun"
    jobs = [("orig", "glue_sst2"), ("datainf", "glue_sst2"), ("dropout_influence", "glue_sst2"),
            ("iforest", "glue_sst2"), ("tracin", "glue_mrpc"), ("l2", "glue_rte")]
    for i, (scorer, data) in enumerate(jobs):
        cfg = _compose("dropout_table1_glue_detection", mpnet, shared_data, tmp_path, f"scorer={scorer}",
                       f"data={data}")
        assert cfg.model.model == str(mpnet) and cfg.data.tokenizer == str(mpnet) and cfg.model.lora_rank == 2
        res = pipeline.run(cfg, out / str(i), choices={"scorer": scorer})
        m = res["metrics"]
        assert res["status"] == "ok", (scorer, data, res.get("error"))
        assert 0.0 <= m["detection_auc"] <= 1.0 and m["n_noisy"] == 8  # 20% of 40 training rows
    # LoRA on MPNet's value matrices only: 2 layers x (A[2, 16] + B[16, 2])
    grads = sorted((tmp_path / "cache").rglob("grads_train.npz"))
    gs = GradientSet.load(str(grads[0]))
    assert all(".attention.attn.v.lora_" in b.name for b in gs.blocks) and gs.dim == 2 * 2 * (2 * 16)
    table = summarize(load_runs([out]), load_table("dropout.table1_mislabel_auc_glue"))
    cells = table.cells["rank2"]
    assert cells["Orig."]["SST2"].n == 1 and cells["Dropout"]["SST2"].n == 1
    assert cells["Hessian-Free"]["MRPC"].n == 1 and cells["Outlier Gradient (L2)"]["RTE"].n == 1


def test_figure3_selection_preset_with_mpnet_on_glue_files(mpnet, shared_data, tmp_path):
    out = tmp_path / "multirun"
    for i, (scorer, data) in enumerate([("random", "glue_mrpc"), ("datainf", "glue_mrpc"), ("iforest", "glue_sst2")]):
        cfg = _compose("figure3_glue_selection", mpnet, shared_data, tmp_path, f"scorer={scorer}", f"data={data}")
        assert cfg.model.lora_rank == 4 and cfg.trim.budget == 0.3
        res = pipeline.run(cfg, out / str(i), choices={"scorer": scorer})
        m = res["metrics"]
        assert res["status"] == "ok", (scorer, data, res.get("error"))
        assert m["n_trimmed"] == 12 and len(m["test_curve"]) == len(m["base_test_curve"]) == 1  # 30% of 40
    table = summarize(load_runs([out]), load_table("oga.figure3_glue_data_selection"))
    assert table.cells[""]["Random"]["MRPC"].n == 1 and table.cells[""]["DataInf"]["MRPC"].n == 1
