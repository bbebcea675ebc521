"""Paper-table summaries from result.json files the test writes itself (fake Table 1 and Table 2 sweeps)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from gradsift.hydra_callbacks import SummaryCallback
from gradsift.summarize import PAPER_DIR, load_runs, load_table, summarize, to_markdown, write_summary

TABLE1 = "oga.table1_synthetic_mlp_moons"
IFOREST, TRACING, DATAINF = "Outlier Gradient (iForest)", "Gradient Tracing", "DataInf"


def _result(method: str, seed: int, status: str = "ok", **metrics: float) -> dict:
    return {
        "experiment": "table1_moons", "method": method, "scorer": method, "compressor": "identity",
        "dataset": "moons", "seed": seed, "budget": {"kind": "fraction", "value": 0.08},
        "selection": "detector" if method == IFOREST else "budget", "status": status,
        "error": None if status == "ok" else "RuntimeError: boom", "metrics": metrics,
        "machine": "test-cpu", "finished_at": f"2026-01-0{seed + 1}T00:00:00Z",
    }


def _write_job(root: Path, job: int, result: dict | None, overrides: list[str] | None = None) -> None:
    d = root / str(job)
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides or [f"job={job}"]))
    if result is not None:
        (d / "result.json").write_text(json.dumps(result))


@pytest.fixture()
def sweep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """2 methods x 3 seeds (one Gradient Tracing seed failed), a failed DataInf run and a killed job (no result)."""
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "multirun" / "table1_moons"
    base = [0.89, 0.90, 0.91]
    jobs = [_result(IFOREST, s, detection_acc=[0.95, 0.97, 0.99][s], test_acc=[0.95, 0.96, 0.97][s],
                    base_test_acc=base[s]) for s in range(3)]
    jobs += [_result(TRACING, s, detection_acc=[0.80, 0.84][s], test_acc=0.91, base_test_acc=base[s]) for s in range(2)]
    jobs += [_result(TRACING, 2, status="failed"), _result(DATAINF, 0, status="failed")]
    for i, r in enumerate(jobs):
        _write_job(root, i, r)
    _write_job(root, len(jobs), None, ["scorer=lissa", "seed=0"])
    return root


def _md_rows(md: str) -> dict[str, list[str]]:
    rows = [line.strip("|").split(" | ") for line in md.splitlines() if line.startswith("| ") and "---" not in line]
    return {r[0].strip(): [c.strip() for c in r[1:]] for r in rows[1:]}


def test_table1_cells(sweep: Path) -> None:
    s = summarize(load_runs([sweep]), load_table(TABLE1))
    cells = s.cells[""]
    c = cells[IFOREST]["detection_acc"]
    assert (c.n, c.mean, c.std, c.delta) == (3, pytest.approx(97.0), pytest.approx(2.0), pytest.approx(1.0))
    assert cells[IFOREST]["retrained_test_acc"].delta == pytest.approx(96.0 - 96.0)
    t = cells[TRACING]["detection_acc"]
    assert (t.n, t.n_failed, t.mean, t.std) == (2, 1, pytest.approx(82.0), pytest.approx(2.0 * 2**0.5))
    # Baseline row: base_test_acc, one value per seed over every finished run -> mean 90, std 1.
    b = cells["Multilayer Perceptron"]["retrained_test_acc"]
    assert (b.n, b.mean, b.std) == (3, pytest.approx(90.0), pytest.approx(1.0))
    assert cells[DATAINF]["detection_acc"].status == "failed"
    assert cells["LiSSA"]["detection_acc"].status == "not run"
    assert s.selection == {"budget": [TRACING], "detector": [IFOREST]}
    assert [src for src, _ in s.unplaced_failures] == ["multirun/table1_moons/7"]


def test_markdown_text(sweep: Path) -> None:
    md = to_markdown(summarize(load_runs([sweep]), load_table(TABLE1), "python experiments/summarize.py x"))
    lines = md.splitlines()
    assert lines[0] == "Regenerate: `python experiments/summarize.py x`"
    assert "Machine: test-cpu" in lines and "Newest result: 2026-01-03T00:00:00Z" in lines
    assert any(line.startswith("Selection rule per row: budget") and "detector" in line for line in lines)
    rows = _md_rows(md)
    assert rows[IFOREST][:6] == ["96.00", "97.00 ± 2.00", "+1.00", "96.00", "96.00 ± 1.00", "0.00"]
    assert rows[TRACING][1] == "82.00 ± 2.83 (n=2, 1 failed)"
    assert rows[DATAINF][1] == "failed" and rows["LiSSA"][1] == "not run"
    assert rows["Multilayer Perceptron"][3:6] == ["90.00", "90.00 ± 1.00", "0.00"]
    assert "`multirun/table1_moons/7`: no result.json" in md and "overrides: scorer=lissa seed=0" in md
    assert "†" not in "".join(sum(rows.values(), []))  # Table 1 gives no std: nothing to mark


def test_cli_outputs_are_byte_identical_and_csv_matches(sweep: Path) -> None:
    from gradsift.cli import summarize as main

    out = Path("multirun_summaries/table1_synthetic")
    argv = ["multirun/table1_moons", "--table", TABLE1, "--out", str(out)]
    main(argv)
    first = {ext: out.with_suffix(ext).read_bytes() for ext in (".md", ".csv", ".tex", ".png")}
    main(argv)
    assert {ext: out.with_suffix(ext).read_bytes() for ext in first} == first
    md = first[".md"].decode()
    assert md.startswith(f"Regenerate: `python experiments/summarize.py multirun/table1_moons --table {TABLE1} "
                         f"--out multirun_summaries/table1_synthetic`")
    records = list(csv.DictReader(out.with_suffix(".csv").read_text().splitlines()))
    rows = _md_rows(md)
    cols = list(dict.fromkeys(r["column"] for r in records))  # the paper's columns, then ours-only ones (AUC)
    assert cols[: len(load_table(TABLE1).columns)] == load_table(TABLE1).columns
    assert len(records) == len(rows) * len(cols)
    for rec in records:
        paper, ours, delta = rows[rec["row"]][3 * cols.index(rec["column"]):][:3]
        assert paper == (rec["paper_mean"] or "—")
        assert delta == (rec["delta"] or "—")
        empty = {"n/a": "—"}.get(rec["status"], rec["status"])
        std = f" ± {rec['ours_std']}" if rec["ours_std"] else ""
        assert ours.startswith(f"{rec['ours_mean']}{std}" if rec["n_seeds"] != "0" else empty)
    assert r"97.00 $\pm$ 2.00" in first[".tex"].decode()


def test_dagger_marks_outside_two_std_and_where_filter(tmp_path: Path) -> None:
    """Table 2 (columns = dataset, paper std given): iForest aggregate 91.36 ± 0.09, random 90.20 ± 0.07."""
    def cifar(seed: int, noise: str, acc: float, budget: float = 0.05) -> dict:
        r = _result(IFOREST, seed, test_acc=acc, base_test_acc=0.9087)
        r.update(dataset="cifar10n", budget={"kind": "fraction", "value": budget},
                 config={"data": {"noise": noise}, "model": {"backbone": {"_target_": "gradsift.models.resnet.resnet34"}}})
        return r

    runs = [cifar(s, noise, acc) for s, (agg, rnd) in enumerate([(0.9300, 0.9020), (0.9320, 0.9022)])
            for noise, acc in (("aggregate", agg), ("random1", rnd))]
    off_budget = cifar(0, "aggregate", 0.10, budget=0.10)
    for i, r in enumerate(runs + [off_budget]):
        (tmp_path / f"{i}.json").write_text(json.dumps(r))
    files = sorted(tmp_path.glob("*.json"))
    s = summarize(load_runs(files), load_table("oga.table2_cifar_n_resnet34"))
    agg, rnd = s.cells[""][IFOREST]["c10n_aggregate"], s.cells[""][IFOREST]["c10n_random"]
    assert agg.mean == pytest.approx(93.10) and agg.outside  # |93.10 - 91.36| > 2 * 0.09
    assert rnd.mean == pytest.approx(90.21) and not rnd.outside  # |90.21 - 90.20| < 2 * 0.07
    assert s.cells[""]["Cross Entropy"]["c10n_aggregate"].mean == pytest.approx(90.87)
    assert s.ignored == 1
    row = _md_rows(to_markdown(s))[IFOREST]
    assert row[:3] == ["91.36 ± 0.09", "93.10 ± 0.14†", "+1.74"] and "†" not in row[4]


def test_every_mapped_table_loads() -> None:
    """Each table with an `ours:` block parses and its paper values line up with its columns."""
    for paper in ("oga", "dropout"):
        for name, body in yaml.safe_load((PAPER_DIR / f"{paper}.yaml").read_text()).items():
            if "ours" in body:
                t = load_table(f"{paper}.{name}")
                assert t.paper and all(len(m) == len(t.columns) for sub in t.paper.values() for m, _ in sub.values())


def test_bad_table_key_names_the_file() -> None:
    with pytest.raises(ValueError, match="no table 'nope'"):
        load_table("oga.nope")
    with pytest.raises(ValueError, match="caption-only"):
        load_table("oga.synthetic_linear_blobs")


def test_callback_writes_summary_on_multirun_end(sweep: Path, tmp_path: Path) -> None:
    cfg = OmegaConf.create({
        "paper_table": TABLE1,
        "hydra": {"sweep": {"dir": str(sweep)}, "runtime": {"choices": {"experiment": "table1_moons"}},
                  "job": {"name": "run"}},
    })
    SummaryCallback(out_dir=str(tmp_path / "summaries")).on_multirun_end(cfg)
    md = (tmp_path / "summaries" / "table1_moons" / "table1_synthetic_mlp_moons.md").read_text()
    assert _md_rows(md)[IFOREST][1] == "97.00 ± 2.00"
    _, again = write_summary([sweep], TABLE1, tmp_path / "summaries" / "table1_moons" / "table1_synthetic_mlp_moons")
    assert again == md


def test_output_stem_keeps_dots_in_names() -> None:
    from gradsift.summarize import output_stem

    assert output_stem("out/oga.table2") == Path("out/oga.table2")
    assert output_stem("out/table1.md") == Path("out/table1")


def test_detection_only_runs_are_labelled_as_such(tmp_path: Path) -> None:
    root = tmp_path / "det"
    r = _result(TRACING, 0, detection_acc=0.8, base_test_acc=0.9)
    r["config"] = {"retrain": False}
    _write_job(root, 0, r)
    s = summarize(load_runs([root]), load_table(TABLE1))
    assert s.selection == {"detection": [TRACING]}
    assert "detection (no retraining; scores ranked against the noise mask where the labels have one)" in to_markdown(s)
