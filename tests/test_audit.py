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


def test_audit_rejects_bad_input(tmp_path: Path, capsys) -> None:
    assert main(["--config-dir", str(CONFIG_DIR), "--overrides", *SMALL, "--checkpoint", str(tmp_path / "no.pt")]) == 1
    assert f"gradsift-audit: --checkpoint {tmp_path / 'no.pt'}: no such file" in capsys.readouterr().err
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


# -- issue #19 item 9: wrong files, cached checkpoints of another seed or config, the user's own config and model --

def _main(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_a_csv_is_not_a_state_dict_and_gets_no_unsafe_advice(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "flagged.csv"
    bad.write_text("index,label,clean_label,score,flagged\n0,1,1,0.5,True\n")
    rc, _, err = _main(capsys, "--overrides", *SMALL, "--checkpoint", str(bad))
    assert rc == 1 and err.count("\n") == 1
    assert err.startswith(f"gradsift-audit: --checkpoint {bad}: not a PyTorch state dict (a text file starting "
                          "'index,label,clean_label,score,flagged'")
    assert "weights_only" not in err


def test_a_truncated_checkpoint_is_named(checkpoint: Path, tmp_path: Path, capsys) -> None:
    cut = tmp_path / "model.pt"
    cut.write_bytes(checkpoint.read_bytes()[:200])
    rc, _, err = _main(capsys, "--overrides", *SMALL, "--checkpoint", str(cut))
    assert rc == 1 and f"--checkpoint {cut}: not a PyTorch state dict (torch.load: " in err


@pytest.fixture(scope="module")
def cached(tmp_path_factory) -> Path:
    """A base model as the pipeline caches it: model.pt with meta.json (seed, config hash, config sections)."""
    from gradsift.artifacts import trained_model

    root = tmp_path_factory.mktemp("cache")
    cfg = compose_config(str(CONFIG_DIR), "config", [*SMALL[:-1], f"paths.cache_dir={root}"])
    dm = instantiate(cfg.data)
    dm.setup()
    path, _, _ = trained_model(cfg, dm)
    return path / "model.pt"


def test_a_cached_checkpoint_of_another_seed_is_refused(cached: Path, tmp_path: Path, capsys) -> None:
    out = ["--out", str(tmp_path / "f.csv")]
    rc, _, err = _main(capsys, "--overrides", *SMALL, "seed=1", "--checkpoint", str(cached), *out)
    assert rc == 1 and "was trained with seed=0 (meta.json) but the config has seed=1: add seed=0" in err
    assert _main(capsys, "--overrides", *SMALL, "--checkpoint", str(cached), *out)[0] == 0  # its own seed
    assert _main(capsys, "--overrides", *SMALL, "seed=1", "--checkpoint", str(cached), "--ignore-meta", *out)[0] == 0


def test_a_cached_checkpoint_of_another_config_names_the_keys(cached: Path, tmp_path: Path, capsys) -> None:
    rc, _, err = _main(capsys, "--overrides", *SMALL, "data.noise=0.3", "trainer.enable_progress_bar=true",
                       "--checkpoint", str(cached), "--out", str(tmp_path / "f.csv"))
    assert rc == 1 and "was trained with another config (meta.json): data.noise=0.3 (checkpoint: 0.2)." in err
    assert "enable_progress_bar" not in err  # keys that do not change a model are not compared


def test_model_hidden_as_an_int_names_the_key(capsys, tmp_path) -> None:
    rc, _, err = _main(capsys, "--overrides", *SMALL, "model.hidden=64", "--checkpoint", str(tmp_path / "x.pt"))
    assert rc == 1 and "model.hidden=64: expected a list of hidden-layer widths, e.g. model.hidden=[64]" in err
    assert "not iterable" not in err


def _sequential_state_dict(tmp_path: Path) -> Path:
    """A plain nn.Sequential of the mlp preset's shape, trained outside gradsift: keys 0.weight ... 4.bias."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32), torch.nn.ReLU(),
                              torch.nn.Linear(32, 2))
    path = tmp_path / "my_model.pt"
    torch.save(net.state_dict(), path)
    return path


def test_a_plain_sequential_state_dict_loads_with_a_key_map(tmp_path: Path, capsys) -> None:
    plain = _sequential_state_dict(tmp_path)
    rc, _, err = _main(capsys, "--overrides", *SMALL, "--checkpoint", str(plain), "--out", str(tmp_path / "f.csv"))
    assert rc == 1 and "its keys (0.weight, 0.bias, 2.weight, ...) vs the model's (net.0.weight" in err
    assert "--key-map '=net.' maps them" in err
    rc, out, _ = _main(capsys, "--overrides", *SMALL, "--checkpoint", str(plain), "--key-map", "=net.",
                       "--out", str(tmp_path / "f.csv"))
    assert rc == 0 and len(pd.read_csv(tmp_path / "f.csv")) == 60


def test_audit_from_a_config_folder_of_ones_own(checkpoint: Path, tmp_path: Path, capsys) -> None:
    """--config-dir with only data/mine.yaml failed with 'no config.yaml': it adds to the packaged search path."""
    (tmp_path / "myconf" / "data").mkdir(parents=True)
    (tmp_path / "myconf" / "data" / "mine.yaml").write_text(
        "defaults: [moons]\nn_train: 60\nn_test: 20\nflips_per_class: 3\n")
    overrides = ["data=mine", *[o for o in SMALL if not o.startswith("data")]]
    rc, out, err = _main(capsys, "--config-dir", str(tmp_path / "myconf"), "--overrides", *overrides,
                         "--checkpoint", str(checkpoint), "--out", str(tmp_path / "f.csv"))
    assert rc == 0, err
    assert len(pd.read_csv(tmp_path / "f.csv")) == 60


def test_audit_retrains_without_the_flagged_samples(checkpoint: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    from gradsift import artifacts

    calls = []
    real = artifacts.retrain
    monkeypatch.setattr(artifacts, "retrain", lambda *a, **k: calls.append(len(a[2])) or real(*a, **k))
    rc, out, err = _main(capsys, "--overrides", *SMALL, "--checkpoint", str(checkpoint), "--budget", "6",
                         "--retrain", "--out", str(tmp_path / "f.csv"))
    assert rc == 0, err
    assert calls == [54]  # the pipeline's retrain path, on the 60 - 6 kept samples
    (line,) = [ln for ln in out.splitlines() if ln.startswith("retrained without the 6 flagged samples: ")]
    assert "test_acc 0." in line and "(the checkpoint: test_loss" in line
