"""Inputs are checked at the start: a missing data folder or file is one line naming the config key (issue #19 item
8: it failed after 42 s with two chained tracebacks)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gradsift.data.base import MissingInputError
from gradsift.data.cifar_n import CIFARNDataModule
from gradsift.data.generic import ArrayDataModule
from gradsift.data.llm_benchmarks import LLMBenchmarkDataModule
from gradsift.data.synthetic import OGAToyDataModule
from gradsift.data.text_corpus import TextCorpusDataModule

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("make,match", [
    (lambda d: CIFARNDataModule(data_dir=str(d), download=False), r"data.data_dir=.*: no cifar10 images there for "
                                                                   r"data.source=auto \(looked for cifar-10-batches-py/ "
                                                                   r"and cifar10-jpeg/cifar10_jpeg.npz; data.download is false\)"),
    (lambda d: CIFARNDataModule(dataset="cifar10n_5k", data_dir=str(d)), r"needs cifar10-partial/cifar10_partial.npz"),
    (lambda d: OGAToyDataModule(data_dir=str(d)), r"data.data_dir=.*: expected train.csv, "),
    (lambda d: LLMBenchmarkDataModule(data_dir=str(d)), r"data.data_dir=.*: neither grammars_train.hf/ nor "),
    (lambda d: TextCorpusDataModule(data_dir=str(d)), r"data.data_dir=.* lacks wikitext-2/wiki.valid.tokens"),
    (lambda d: ArrayDataModule(train=str(d / "my.csv")), r"data.train=.*my.csv: no such file or folder"),
])
def test_a_missing_input_fails_in_setup_before_reading(tmp_path, monkeypatch, make, match) -> None:
    dm = make(tmp_path / "nowhere")
    monkeypatch.setattr(dm, "build", lambda: pytest.fail("build ran despite a missing input"))
    with pytest.raises(MissingInputError, match=match):
        dm.setup()


def test_cifar_without_torchvision_says_so_instead_of_a_chained_import_error(tmp_path, monkeypatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchvision" else real(name, *a))
    with pytest.raises(MissingInputError, match=r"torchvision, which data.download=true needs to download them, "
                                                 r"is not installed"):
        CIFARNDataModule(data_dir=str(tmp_path)).setup()


def test_gradsift_run_prints_one_line_for_a_missing_data_folder(tmp_path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    env.pop("HYDRA_FULL_ERROR", None)
    code = "import sys; from gradsift.cli import run; sys.argv[0] = 'gradsift-run'; run()"
    proc = subprocess.run([sys.executable, "-c", code, "data=oga_toy", f"data.data_dir={tmp_path / 'nope'}",
                           f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 1
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    assert lines == [f"gradsift-run: data.data_dir={tmp_path / 'nope'}: expected train.csv, "
                     "train_unflipped_infdatasel.csv, test.csv of the OGA toy set there (see "
                     "../shared/data/SOURCES.md, folder oga-toy/)"], lines
    assert "MissingInputError" in (tmp_path / "run" / "result.json").read_text()  # the record keeps the traceback
