"""gradsift.overlap: pairwise overlap of the flagged sets of one sweep's methods, against hand counts."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from gradsift import overlap
from gradsift.handoff import compact_flags


def _run(folder, method: str, flagged: list[int], n: int = 10, precision: float | None = 0.5, status: str = "ok"):
    folder.mkdir(parents=True)
    pd.DataFrame({"index": np.arange(n), "flagged": np.isin(np.arange(n), flagged)}).to_csv(
        folder / "flagged.csv", index=False)
    metrics = {} if precision is None else {"precision": precision}
    (folder / "result.json").write_text(json.dumps({"status": status, "method": method, "metrics": metrics}))


def test_pairs_count_shared_samples_and_jaccard_by_hand(tmp_path):
    sweep = tmp_path / "authors_base_worst_s0"
    _run(sweep / "0_a", "A", [0, 1, 2, 3])
    _run(sweep / "1_b", "B", [2, 3, 4], precision=None)
    _run(sweep / "2_c", "C", [9])
    compact_flags(sweep / "2_c")  # the committed form (flagged.npz) reads the same
    _run(sweep / "3_failed", "D", [0], status="failed")  # not a finished run: left out
    by_sweep = overlap.read_sweeps([sweep])
    df = overlap.overlap_table(by_sweep)
    got = {(r.method_a, r.method_b): (r.n_a, r.n_b, r.shared, r.jaccard) for r in df.itertuples()}
    assert got == {("A", "B"): (4, 3, 2, pytest.approx(2 / 5)), ("A", "C"): (4, 1, 0, 0.0),
                   ("B", "C"): (3, 1, 0, 0.0)}
    md = overlap.to_markdown(df, by_sweep, "cmd")
    assert "| (1) A | 4 | 0.500 | — | 2 (0.40) | 0 (0.00) |" in md and "| (2) B | 3 | — |" in md


def test_main_writes_csv_markdown_and_plot(tmp_path, capsys):
    sweeps = []
    for s in (0, 1):
        sweep = tmp_path / f"sweep_s{s}"
        _run(sweep / "0_a", "A", [0, 1])
        _run(sweep / "1_b", "B", [1, 2 + s])
        sweeps.append(str(sweep))
    out = tmp_path / "out" / "overlap"
    assert overlap.main([*sweeps, "--out", str(out)]) == 0
    csv = pd.read_csv(out.with_suffix(".csv"))
    assert list(csv["sweep"]) == ["sweep_s0", "sweep_s1"] and list(csv["shared"]) == [1, 1]
    assert out.with_suffix(".png").stat().st_size > 0 and "## sweep_s1" in out.with_suffix(".md").read_text()


def test_bad_folders_are_named(tmp_path):
    with pytest.raises(ValueError, match="no finished run"):
        overlap.flagged_sets(tmp_path)
    _run(tmp_path / "0_a", "A", [0])
    _run(tmp_path / "1_a", "A", [1])
    with pytest.raises(ValueError, match="two runs of 'A'"):
        overlap.flagged_sets(tmp_path)
