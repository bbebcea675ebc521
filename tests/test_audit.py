"""gradsift-audit on a saved checkpoint, and the own-model example (examples/audit_my_model.py)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra.utils import instantiate

from gradsift.audit import compose_config, main, parse_budget
from gradsift import CONFIG_DIR
from gradsift.training import fit_and_test

REPO = Path(__file__).resolve().parents[1]
SMALL = ["data=moons", "model=mlp", "data.n_train=60", "data.n_test=20", "data.flips_per_class=3",
         "trainer.max_epochs=5", "trainer.enable_progress_bar=false", "torch_threads=1", "cache=false"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    cfg = compose_config(str(CONFIG_DIR), "config", SMALL)
    dm = instantiate(cfg.data)
    dm.setup()
    model, _, _ = fit_and_test(cfg, dm)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.mark.parametrize("as_lightning", [False, True])
def test_audit_writes_budget_flagged_csv(checkpoint: Path, tmp_path: Path, as_lightning: bool) -> None:
    ckpt = checkpoint
    if as_lightning:  # the weights wrapped the way a Lightning .ckpt stores them
        ckpt = tmp_path / "model.ckpt"
        torch.save({"state_dict": torch.load(checkpoint, weights_only=True), "epoch": 4}, ckpt)
    out = tmp_path / "flagged.csv"
    assert main(["--config-dir", str(CONFIG_DIR), "--overrides", *SMALL, "--checkpoint", str(ckpt),
                 "--scorer", "iforest", "--budget", "0.05", "--out", str(out)]) == 0
    df = pd.read_csv(out)
    assert list(df.columns) == ["index", "label", "clean_label", "score", "flagged"]
    assert len(df) == 60
    assert sorted(df["index"]) == list(range(60))
    assert df["score"].is_monotonic_decreasing
    assert df["flagged"].sum() == 3  # round(0.05 * 60)
    assert df["flagged"].head(3).all()  # the budget's top scores
    assert (df["label"] != df["clean_label"]).sum() == 6  # 3 flips per class


def test_audit_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="--checkpoint"):
        main(["--config-dir", str(CONFIG_DIR), "--overrides", *SMALL, "--checkpoint", str(tmp_path / "no.pt")])
    assert parse_budget("n_noisy") == "n_noisy" and parse_budget("12") == 12 and parse_budget("0.1") == 0.1
    with pytest.raises(SystemExit):
        main(["--checkpoint", "x.pt", "--budget", "lots"])


def test_audit_my_model_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The documented own-model example runs end to end at small size and flags its budget."""
    out = tmp_path / "flagged.csv"
    monkeypatch.setattr(sys, "argv", ["audit_my_model.py", "--n", "80", "--epochs", "5", "--out", str(out)])
    runpy.run_path(str(REPO / "examples" / "audit_my_model.py"), run_name="__main__")
    df = pd.read_csv(out)
    assert len(df) == 80 and df["score"].is_monotonic_decreasing
    assert df["flagged"].sum() == 4  # 5 % of 80
