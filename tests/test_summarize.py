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
    s = summarize(load_runs([sweep]), load_table(TABLE1), "python experiments/summarize.py x")
    md = to_markdown(s)
    lines = md.splitlines()
    assert lines[0] == "Regenerate: `python experiments/summarize.py x`"
    # the volatile provenance lines only in a sweep's own copy (they change whenever the sweep is rerun)
    assert not any(line.startswith(("Machine:", "Newest result:")) for line in lines)
    with_provenance = to_markdown(s, provenance=True).splitlines()
    assert "Machine: test-cpu" in with_provenance and "Newest result: 2026-01-03T00:00:00Z" in with_provenance
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


def _sweep_cfg(sweep: Path, table: str | None = TABLE1):
    return OmegaConf.create({
        "paper_table": table,
        "hydra": {"sweep": {"dir": str(sweep)}, "runtime": {"choices": {"experiment": "table1_moons"}},
                  "job": {"name": "run"}},
    })


def test_callback_writes_summary_on_multirun_end(sweep: Path, tmp_path: Path) -> None:
    SummaryCallback(out_dir=str(tmp_path / "summaries")).on_multirun_end(_sweep_cfg(sweep))
    md = (tmp_path / "summaries" / "table1_moons" / "table1_synthetic_mlp_moons.md").read_text()
    assert _md_rows(md)[IFOREST][1] == "97.00 ± 2.00"
    _, again = write_summary([sweep], TABLE1, tmp_path / "summaries" / "table1_moons" / "table1_synthetic_mlp_moons",
                             provenance=True)
    assert again == md


def test_sweep_callback_writes_its_own_folder_and_leaves_multirun_summaries_alone(sweep: Path, tmp_path: Path) -> None:
    """Issue #19 item 1: a killed sweep's callback rewrote the committed multirun_summaries/ with 'failed' cells."""
    committed = tmp_path / "multirun_summaries" / "table1_moons"
    committed.mkdir(parents=True)
    (committed / "table1_synthetic_mlp_moons.md").write_text("the committed summary\n")
    before = {p: p.read_bytes() for p in (tmp_path / "multirun_summaries").rglob("*")  if p.is_file()}
    cb = SummaryCallback()  # the configured default (conf/hydra/default.yaml: out_dir null)
    cb.on_multirun_start(_sweep_cfg(sweep))
    cb.on_multirun_end(_sweep_cfg(sweep))
    after = {p: p.read_bytes() for p in (tmp_path / "multirun_summaries").rglob("*") if p.is_file()}
    assert after == before
    md = (sweep / "summary" / "table1_synthetic_mlp_moons.md").read_text()
    assert _md_rows(md)[IFOREST][1] == "97.00 ± 2.00" and "Machine: test-cpu" in md.splitlines()
    assert {p.suffix for p in (sweep / "summary").iterdir()} == {".md", ".csv", ".tex", ".png"}
    # and the folder it writes is not read back as results by the next summary of the sweep
    assert load_runs([sweep]) == load_runs([p for p in sweep.iterdir() if p.name != "summary"])


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


# ----------------------------------------------------------------------------------------------- publishing
def test_publishing_refuses_a_summary_with_fewer_finished_cells(sweep: Path, tmp_path: Path) -> None:
    """Issue #19 item 1: a sweep with a failed job replaced the published table's cells with '(1 failed)'."""
    from gradsift.cli import summarize as main

    out = tmp_path / "multirun_summaries" / "table1_synthetic"
    main([str(sweep), "--table", TABLE1, "--out", str(out)])
    published = {ext: out.with_suffix(ext).read_bytes() for ext in (".md", ".csv", ".tex", ".png")}
    # the same sweep rerun, killed: seed 2 of iForest never finished, and Gradient Tracing seed 1 failed
    (sweep / "2" / "result.json").write_text(json.dumps(_result(IFOREST, 2, status="failed")))
    (sweep / "4" / "result.json").unlink()
    with pytest.raises(SystemExit, match="has 5 cell") as e:
        main([str(sweep), "--table", TABLE1, "--out", str(out)])
    message = str(e.value)
    assert f"{IFOREST} | detection_acc: n=3 -> n=2" in message
    assert f"{TRACING} | detection_acc: n=2 -> n=1" in message and "--force" in message
    assert {ext: out.with_suffix(ext).read_bytes() for ext in published} == published  # nothing written
    main([str(sweep), "--table", TABLE1, "--out", str(out), "--force"])
    assert _md_rows(out.with_suffix(".md").read_text())[IFOREST][1] == "96.00 ± 1.41 (1 failed)"


def test_publishing_replaces_a_summary_that_the_new_one_matches_or_extends(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "t1"
    write_summary([sweep], TABLE1, out)
    write_summary([sweep], TABLE1, out)  # same cells: fine
    _write_job(sweep, 99, _result(DATAINF, 1, detection_acc=0.9, test_acc=0.9, base_test_acc=0.9))
    s, _ = write_summary([sweep], TABLE1, out)  # one more finished cell: fine
    assert s.cells[""][DATAINF]["detection_acc"].n == 1


def test_rerunning_a_sweep_leaves_the_published_files_byte_identical(tmp_path: Path, monkeypatch) -> None:
    """The published .md has no machine name or wall-clock time: a rerun elsewhere, later, changes nothing."""
    monkeypatch.chdir(tmp_path)
    out = {}
    for machine, day in (("box-a", "2026-01-01"), ("box-b", "2027-06-30")):
        root = tmp_path / "multirun" / "table1_moons"
        for seed in range(2):
            r = _result(IFOREST, seed, detection_acc=0.9 + seed / 100, test_acc=0.9, base_test_acc=0.9)
            r.update(machine=machine, finished_at=f"{day}T00:00:00Z")
            (root / str(seed)).mkdir(parents=True, exist_ok=True)
            (root / str(seed) / "result.json").write_text(json.dumps(r))
        write_summary(["multirun/table1_moons"], TABLE1, "published/t1")
        out[machine] = {ext: Path(f"published/t1{ext}").read_bytes() for ext in (".md", ".csv", ".tex", ".png")}
    assert out["box-a"] == out["box-b"]


# ----------------------------------------------------------------------------------------------- cells
def _configured(method: str, seed: int, detection_acc: float, budget: float, **config) -> dict:
    r = _result(method, seed, detection_acc=detection_acc, test_acc=0.9, base_test_acc=0.9)
    r["selection"] = "budget"
    r["config"] = {"seed": seed, "data": {"name": "moons", "seed": seed, "data_dir": f"/data/{seed}"},
                   "model": {"lr": 0.01}, "trainer": {"max_epochs": 300, "enable_progress_bar": seed == 0},
                   "scorer": {"_target_": method}, "trim": {"budget": budget, "fraction": None},
                   "paths": {"cache_dir": f"/cache/{seed}"}, "torch_threads": seed + 1, **config}
    return r


def test_runs_that_differ_in_more_than_the_seed_never_share_a_cell(tmp_path: Path) -> None:
    """Issue #19 item 2: ``-m scorer=l1 seed=0,1 trim.budget=0.05,0.1`` summarised as Table 1 gave one L1 row,
    each seed's mean over the two budgets."""
    l1 = "Outlier Gradient (L1)"
    accs = {(0, 0.05): 0.96, (1, 0.05): 0.94, (0, 0.1): 0.90, (1, 0.1): 0.86}
    for i, ((seed, budget), acc) in enumerate(accs.items()):
        _write_job(tmp_path / "sweep", i, _configured(l1, seed, acc, budget))
    s = summarize(load_runs([tmp_path / "sweep"]), load_table(TABLE1))
    rows = s.cells[""]
    assert l1 not in rows
    low, high = rows[f"{l1} [trim.budget=0.05]"]["detection_acc"], rows[f"{l1} [trim.budget=0.1]"]["detection_acc"]
    assert (low.n, low.mean, low.std) == (2, pytest.approx(95.0), pytest.approx(2 ** 0.5))
    assert (high.n, high.mean, high.std) == (2, pytest.approx(88.0), pytest.approx(2 * 2 ** 0.5))
    assert low.paper_mean == high.paper_mean == 98.0  # each variant beside the paper's L1 row
    assert s.split == {("", l1): ["trim.budget"]}
    # paths, thread counts, progress bars and data.seed (= the seed) differ too, but never split a row
    md = to_markdown(s)
    assert f"by the config keys that differ among their runs (besides the seed): {l1}: trim.budget" in md
    assert list(rows).index(f"{l1} [trim.budget=0.05]") == list(load_table(TABLE1).paper[""]).index(l1)
    # the baseline row (untrimmed model) compares only data/model/trainer: one row, n=2
    assert rows["Multilayer Perceptron"]["retrained_test_acc"].n == 2


def test_pool_lets_named_keys_share_a_cell_and_says_so(tmp_path: Path) -> None:
    """Seeds run on CPU at fp32 beside GPU bf16 ones (the GLUE summaries) share cells only when asked."""
    for seed, precision in ((0, "bf16-mixed"), (1, "bf16-mixed"), (2, "32-true")):
        r = _configured(IFOREST, seed, 0.9 + seed / 100, 0.05)
        r["config"]["trainer"]["precision"] = precision
        _write_job(tmp_path / "sweep", seed, r)
    runs = load_runs([tmp_path / "sweep"])
    split = summarize(runs, load_table(TABLE1)).cells[""]
    assert split[f"{IFOREST} [trainer.precision=32-true]"]["detection_acc"].n == 1
    pooled = summarize(runs, load_table(TABLE1), pool=["trainer.precision"])
    assert pooled.cells[""][IFOREST]["detection_acc"].n == 3 and not pooled.split
    assert pooled.pooled == {"trainer.precision": ["32-true", "bf16-mixed"]}
    assert "Cells pool runs that differ in (--pool): trainer.precision (32-true, bf16-mixed)" in to_markdown(pooled)


def test_a_key_a_later_config_added_as_null_does_not_split(tmp_path: Path) -> None:
    old, new = _configured(IFOREST, 0, 0.9, 0.05), _configured(IFOREST, 1, 0.92, 0.05)
    del old["config"]["trim"]["fraction"]  # written before trim.fraction existed
    for i, r in enumerate((old, new)):
        _write_job(tmp_path / "sweep", i, r)
    s = summarize(load_runs([tmp_path / "sweep"]), load_table(TABLE1))
    assert s.cells[""][IFOREST]["detection_acc"].n == 2 and not s.split


def test_ours_only_table_for_a_sweep_without_a_paper_table(tmp_path: Path, monkeypatch) -> None:
    """An ad-hoc sweep (no paper_table) used to get no summary: rows = methods and swept keys, columns = metrics."""
    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "multirun" / "adhoc"
    for i, (seed, budget) in enumerate([(0, 0.05), (1, 0.05), (0, 0.1)]):
        _write_job(sweep, i, _configured("Outlier Gradient (L2)", seed, [0.9, 0.8, 0.7][i], budget))
    SummaryCallback().on_multirun_end(_sweep_cfg(sweep, table=None))
    md = (sweep / "summary" / "summary.md").read_text()
    assert {p.name for p in (sweep / "summary").iterdir()} == {"summary.md", "summary.csv"}
    header = next(line for line in md.splitlines() if line.startswith("| Method"))
    assert header == "| Method | base_test_acc | detection_acc | test_acc |"
    rows = _md_rows(md)
    assert rows["Outlier Gradient (L2) [trim.budget=0.05]"][1] == "0.8500 ± 0.0707"
    assert rows["Outlier Gradient (L2) [trim.budget=0.1]"][1] == "0.7000 (n=1)"
    assert "Regenerate: `python experiments/summarize.py multirun/adhoc --out multirun/adhoc/summary/summary`" in md


# ----------------------------------------------------------------------------------------------- output for people
def test_help_lists_the_table_keys(capsys) -> None:
    from gradsift.cli import summarize as main

    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "tables (--table, from conf/paper/*.yaml):" in text
    assert all(key in text for key in (TABLE1, "oga.table2_cifar_n_resnet34", "dropout.table1_mislabel_auc_glue"))
    assert "oga.synthetic_linear_blobs" not in text  # caption-only: nothing to summarize


def test_console_table_is_not_cut_when_output_goes_to_a_file(capsys) -> None:
    from gradsift.report import print_result

    name = "detection_auc_of_a_method_whose_metric_name_is_long_enough_that_rich_cuts_it_at_eighty_columns"
    print_result({"method": "Outlier Gradient (L1) [detector labels]", "dataset": "moons", "seed": 0,
                  "metrics": {name: 0.5, "detection_acc": 0.97}})
    out = capsys.readouterr().out
    assert name in out and "…" not in out


def test_a_table_with_empty_sub_tables_summarizes_the_label_set_that_ran(tmp_path):
    """methods.methods_cifar10n_5k has sub-tables worst and aggregate and no paper numbers; a sweep of `worst` alone
    (methods.sh NOISE=worst) raised KeyError 'aggregate' while writing the markdown."""
    import json as _json

    from gradsift.summarize import write_summary as _write

    rec = {"status": "ok", "method": "Outlier Gradient (L2)", "seed": 0, "budget": {"kind": "fraction", "value": 0.05},
           "config": {"data": {"dataset": "cifar10n_5k", "noise": "worst"}},
           "metrics": {"detection_auc": 0.7, "precision": 0.6, "test_acc": 0.8, "base_test_acc": 0.79},
           "timings": {"attribution_s": 1.0}}
    (tmp_path / "r0").mkdir()
    (tmp_path / "r0" / "result.json").write_text(_json.dumps(rec))
    summary, md = _write([tmp_path], "methods.methods_cifar10n_5k", tmp_path / "out" / "m")
    assert "### worst" in md and "### aggregate" not in md and list(summary.cells) == ["worst"]
    assert (tmp_path / "out" / "m.png").exists()
