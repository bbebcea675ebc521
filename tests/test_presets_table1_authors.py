"""experiment=table1_moons_authors: every row of conf/table1_authors is swept, composes, runs end to end on CPU
(a short training), and lands in the summary beside the paper row it reproduces."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from gradsift import CONFIG_DIR, pipeline
from gradsift.summarize import load_runs, load_table, summarize

ROWS = sorted(p.stem for p in (CONFIG_DIR / "table1_authors").glob("*.yaml"))
TABLE = "oga.table1_synthetic_mlp_moons"


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=["experiment=table1_moons_authors", *overrides])


def test_the_sweep_lists_every_row_once() -> None:
    cfg = OmegaConf.load(CONFIG_DIR / "experiment" / "table1_moons_authors.yaml")
    swept = str(cfg.hydra.sweeper.params["+table1_authors"]).split(",")
    assert sorted(swept) == ROWS and len(set(swept)) == len(swept)
    assert str(cfg.hydra.sweeper.params.seed) == "0,1,2,3,4"


def test_the_authors_recipe() -> None:
    cfg = _compose("+table1_authors=self_confidence")
    assert cfg.model._target_ == "gradsift.models.tabular.SigmoidMLP" and list(cfg.model.hidden) == [2, 2]
    assert (cfg.model.optimizer.lr, cfg.model.optimizer.weight_decay, cfg.trainer.max_epochs) == (1e-3, 1e-4, 5000)
    assert cfg.gradients.parameters == "last_layer" and cfg.attribution.reference == "train"
    assert (cfg.trim.fraction, cfg.trim.selection, cfg.scorer.labels) == (0.1, "budget", "predicted")
    forest = _compose("+table1_authors=iforest")
    assert (forest.trim.selection, forest.scorer.contamination) == ("detector", 0.1)
    # the one-switch rows go back to our recipe
    ours = _compose("+table1_authors=ours_self_confidence")
    assert ours.model._target_ == "gradsift.models.tabular.MLP" and ours.trainer.max_epochs == 300
    assert ours.trim.budget == "n_noisy" and ours.trim.fraction is None and ours.baseline_row is None


def test_every_row_runs_and_is_summarized_beside_its_paper_row(tmp_path: Path) -> None:
    table = load_table(TABLE)
    paper_rows = set(table.paper[""])
    for row in ROWS:
        cfg = _compose(f"+table1_authors={row}", "seed=1", "trainer.max_epochs=30",
                       f"paths.cache_dir={tmp_path / 'cache'}")
        assert cfg.paper_row in paper_rows, row
        res = pipeline.run(cfg, tmp_path / "runs" / row, choices={"scorer": row})
        assert res["status"] == "ok", res.get("error")
        assert res["method"] == cfg.method
        m = res["metrics"]
        if row == "iforest":
            assert res["selection"] == "detector"
        elif row.startswith("ours_"):
            assert m["n_trimmed"] == m["n_noisy"] == 20
        else:
            assert m["n_trimmed"] == 25
    s = summarize(load_runs([tmp_path / "runs"]), table)
    cells = s.cells[""]
    for row in ROWS:
        r = json.loads((tmp_path / "runs" / row / "result.json").read_text())
        c = cells[r["method"]]["detection_acc"]
        assert c.n == 1 and c.paper_mean == table.paper[""][r["config"]["paper_row"]][0][0]
    assert cells["Multilayer Perceptron [authors' MLP]"]["retrained_test_acc"].paper_mean == 90.0
    assert s.renamed_rows and not s.split


@pytest.mark.parametrize("row", ["tracin_datainf_sign", "self_lissa_datainf_sign"])
def test_readings_trim_opposite_tails(row: str) -> None:
    other = row.replace("datainf_sign", "flipped_sign")
    a, b = _compose(f"+table1_authors={row}"), _compose(f"+table1_authors={other}")
    assert {a.trim.remove, b.trim.remove} == {"detrimental", "beneficial"}
    assert a.paper_row == b.paper_row and a.method != b.method
