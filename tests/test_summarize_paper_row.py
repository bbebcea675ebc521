"""Rows compared with another paper row (config ``paper_row``) and renamed baseline rows (``baseline_row``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gradsift.summarize import load_runs, load_table, summarize, to_markdown
from tests.test_summarize import TABLE1, _md_rows, _result, _write_job

SC = "Self-Confidence"
SC_AUTHORS = "Self-Confidence [authors: predicted labels, 10%]"
BASE, BASE_AUTHORS = "Multilayer Perceptron", "Multilayer Perceptron [authors' MLP]"


def _authors(method: str, seed: int, paper_row: str, **metrics: float) -> dict:
    r = _result(method, seed, **metrics)
    r["config"] = {"paper_row": paper_row, "baseline_row": BASE_AUTHORS, "model": {"hidden": [2, 2]}}
    return r


@pytest.fixture()
def sweeps(tmp_path: Path) -> list[Path]:
    ours, authors = tmp_path / "ours", tmp_path / "authors"
    for s in range(2):
        r = _result(SC, s, detection_acc=0.96, test_acc=0.95, base_test_acc=0.93)
        r["config"] = {"paper_row": None, "baseline_row": None, "model": {"hidden": [32, 32]}}
        _write_job(ours, s, r)
        _write_job(authors, s, _authors(SC_AUTHORS, s, SC, detection_acc=[0.82, 0.84][s], test_acc=0.85,
                                        base_test_acc=[0.80, 0.90][s]))
    return [ours, authors]


def test_a_paper_row_run_sits_under_that_row_with_its_paper_numbers(sweeps: list[Path]) -> None:
    s = summarize(load_runs(sweeps), load_table(TABLE1))
    cells = s.cells[""]
    c = cells[SC_AUTHORS]["detection_acc"]
    assert (c.n, c.mean, c.paper_mean, c.delta) == (2, pytest.approx(83.0), 82.0, pytest.approx(1.0))
    assert cells[SC]["detection_acc"].mean == pytest.approx(96.0)
    rows = list(cells)
    assert rows.index(SC_AUTHORS) == rows.index(SC) + 1
    # the renamed baseline row: the authors' untrimmed models beside the paper's baseline, ours apart
    b, ours = cells[BASE_AUTHORS]["retrained_test_acc"], cells[BASE]["retrained_test_acc"]
    assert (b.n, b.mean, b.paper_mean) == (2, pytest.approx(85.0), 90.0)
    assert (ours.n, ours.mean) == (2, pytest.approx(93.0))
    assert rows.index(BASE_AUTHORS) == rows.index(BASE) + 1
    assert not s.split  # different models, but never in one cell, so nothing splits


def test_paper_row_notes_only_when_such_rows_are_shown(sweeps: list[Path], tmp_path: Path) -> None:
    table = load_table(TABLE1)
    assert table.paper_row_notes
    md = to_markdown(summarize(load_runs(sweeps), table))
    assert table.paper_row_notes in md
    assert _md_rows(md)[SC_AUTHORS][:3] == ["82.00", "83.00 ± 1.41", "+1.00"]
    ours_only = to_markdown(summarize(load_runs(sweeps[:1]), table))
    assert table.paper_row_notes not in ours_only and SC_AUTHORS not in ours_only
