"""Turn result.json files into a paper table: paper and ours side by side (markdown, CSV, LaTeX, PNG).

A table is data: ``conf/paper/<paper>.yaml`` holds the paper's numbers and an ``ours:`` block saying which
result.json field fills which row / column / sub-table (see the header of those files). Without a paper table,
:func:`ours_table` gives a plain one (rows = methods, columns = metrics). Output is a pure function of the result
files (sorted, no wall-clock time, no machine names unless ``provenance``), so regenerating from the same files, or
rerunning the same sweep, is byte-identical.

A cell never mixes runs that differ in anything but the seed (see :func:`summarize`), and a published summary is
never replaced by one with fewer finished cells unless forced (see :func:`write_summary`).

A run may name the paper row it is compared with (config key ``paper_row``): its row, e.g. "Self-Confidence [authors:
predicted labels, 10%]", then carries the paper's Self-Confidence numbers and follows that row. ``baseline_row``
renames the baseline rows it fills (the untrimmed model), e.g. "Multilayer Perceptron [authors' MLP]", beside the
paper's baseline numbers. The table's ``ours.paper_row_notes`` are printed under its notes when such rows are shown.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shlex
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import yaml

from gradsift import CONFIG_DIR
from gradsift.viz import save_figure

PAPER_DIR = CONFIG_DIR / "paper"
FAILED_STATUSES = frozenset({"failed", "running", "killed"})
DAGGER = "†"
_MISSING = object()


# ----------------------------------------------------------------------------------------------- mapping spec
@dataclass(frozen=True)
class FieldSpec:
    """How to read one value out of a result dict: dotted path(s), scale, renaming, formatting."""

    paths: tuple[str, ...] = ()
    scale: float | None = None
    values: Mapping[str, str] | None = None
    format: str | None = None
    constant: str | None = None
    join: tuple[str, ...] = ()

    @classmethod
    def parse(cls, spec: Any, where: str) -> "FieldSpec":
        if isinstance(spec, str):
            return cls(paths=(spec,))
        if not isinstance(spec, Mapping) or not (_SPEC_KINDS & set(spec)):
            raise ValueError(f"{where}: expected a dotted result.json path or a mapping with one of "
                             f"{sorted(_SPEC_KINDS)}, got {spec!r}")
        unknown = set(spec) - _SPEC_KINDS - {"scale", "values", "format"}
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
        paths = spec.get("field", ())
        paths = (paths,) if isinstance(paths, str) else tuple(paths)
        values = {str(k): str(v) for k, v in (spec.get("values") or {}).items()}
        return cls(paths, spec.get("scale"), values or None, spec.get("format"), spec.get("constant"),
                   tuple(spec.get("join", ())))

    def raw(self, result: Mapping[str, Any]) -> Any:
        """First path that resolves, or the ``join`` paths' values joined by "_" (None when nothing resolves)."""
        if self.join:
            parts = [lookup(result, path) for path in self.join]
            parts = [str(v) for v in parts if v is not _MISSING and v is not None]
            return "_".join(parts) if parts else None
        for path in self.paths:
            value = lookup(result, path)
            if value is not _MISSING and value is not None:
                return value
        return None

    def number(self, result: Mapping[str, Any]) -> float | None:
        value = self.raw(result)
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        return float(value) * (self.scale if self.scale is not None else 1.0)

    def label(self, result: Mapping[str, Any]) -> str | None:
        if self.constant is not None:
            return self.constant
        value = self.raw(result)
        if value is None:
            return None
        if self.scale is not None and isinstance(value, (int, float)):
            value = round(float(value) * self.scale, 10)
        if self.format:
            if "{:d}" in self.format and isinstance(value, float) and value.is_integer():
                value = int(value)
            value = self.format.format(value)
        value = str(value)
        return self.values.get(value, value) if self.values else value


_SPEC_KINDS = {"field", "constant", "join"}


def lookup(d: Mapping[str, Any], dotted: str) -> Any:
    """``lookup(r, "metrics.test_acc")``; returns the _MISSING sentinel when a key is absent."""
    cur: Any = d
    for part in dotted.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            return _MISSING
        cur = cur[part]
    return cur


@dataclass
class PaperTable:
    """One paper table: reference numbers (per sub-table) plus the result.json mapping."""

    key: str
    caption: str
    columns: list[str]
    paper: dict[str, dict[str, tuple[list[float | None], list[float | None] | None]]]
    row: FieldSpec
    subtable: FieldSpec | None
    columns_map: dict[str, FieldSpec] | None
    column: FieldSpec | None
    value: FieldSpec | None
    baseline_rows: dict[str, dict[str | None, FieldSpec]]
    where: dict[str, list[Any]]
    decimals: int = 2
    plot: str = "bar"
    #: why ours may differ from the paper (setting, data, recipe); printed under the table
    notes: str = ""
    #: printed after ``notes`` when the summary shows rows of runs with a ``paper_row`` or ``baseline_row``
    paper_row_notes: str = ""
    #: False for :func:`ours_table` (no paper numbers: one column per metric, no paper / Δ columns)
    has_paper: bool = True

    def matches(self, result: Mapping[str, Any]) -> bool:
        return all(lookup(result, k) in allowed for k, allowed in self.where.items())

    def cells(self, result: Mapping[str, Any]) -> list[tuple[str, str, str, float | None]]:
        """(subtable, row, column, value) cells one result fills; value None where the field is absent."""
        sub = self.subtable.label(result) if self.subtable else ""
        row = self.row.label(result)
        if sub is None or row is None:
            return []
        if self.columns_map is not None:
            return [(sub, row, col, spec.number(result)) for col, spec in self.columns_map.items()]
        col = self.column.label(result)
        return [] if col is None else [(sub, row, col, self.value.number(result))]

    def paired_test(self, result: Mapping[str, Any], col: str) -> Mapping[str, Any] | None:
        """The run's McNemar test against its base model for column ``col`` (:mod:`gradsift.paired`): for a value
        field ``metrics.<x>acc``, the record ``metrics.<x>vs_base`` (``test_best_acc`` -> ``test_best_vs_base``);
        None where the run has none (runs before it was recorded, non-accuracy columns)."""
        got = self._beside_acc(result, col, "vs_base")
        return got if isinstance(got, Mapping) and "p" in got else None

    def correct_vector(self, result: Mapping[str, Any], col: str) -> str | None:
        """The run's packed per-test-sample correctness for column ``col`` (:mod:`gradsift.paired`): for a value
        field ``metrics.<x>acc``, ``metrics.<x>correct`` (``test_best_acc`` -> ``test_best_correct``); None where
        the run has none."""
        got = self._beside_acc(result, col, "correct")
        return got if isinstance(got, str) else None

    def _beside_acc(self, result: Mapping[str, Any], col: str, suffix: str) -> Any:
        """For a column read from one field ``metrics.<x>acc``: the run's ``metrics.<x><suffix>`` (None otherwise)."""
        spec = self.columns_map.get(col) if self.columns_map is not None else self.value
        paths = getattr(spec, "paths", None) or ()
        if len(paths) != 1 or not paths[0].endswith("acc"):
            return None
        return lookup(result, paths[0].removesuffix("acc") + suffix)

    def baseline_cells(self, result: Mapping[str, Any]) -> list[tuple[str, str, str, float | None]]:
        sub = self.subtable.label(result) if self.subtable else ""
        if sub is None:
            return []
        out = []
        for row, specs in self.baseline_rows.items():
            for col, spec in specs.items():
                col = col if col is not None else (self.column.label(result) if self.column else None)
                if col is not None:
                    out.append((sub, row, col, spec.number(result)))
        return out


_RESERVED = {"caption", "columns", "rows", "mean", "std", "ours"}


def load_table(key: str, paper_dir: Path | str = PAPER_DIR) -> PaperTable:
    """Load ``<paper>.<table>`` (e.g. ``oga.table1_synthetic_mlp_moons``) from ``conf/paper/<paper>.yaml``."""
    paper, _, name = key.partition(".")
    path = Path(paper_dir) / f"{paper}.yaml"
    if not name or not path.is_file():
        raise ValueError(f"--table/paper_table {key!r}: expected '<paper>.<table>' with {path} present")
    tables = yaml.safe_load(path.read_text())
    if name not in tables:
        raise ValueError(f"{path}: no table {name!r}; have {sorted(tables)}")
    t = tables[name]
    where = f"{path}:{name}"
    if "ours" not in t or "columns" not in t:
        raise ValueError(f"{where}: caption-only entry (no `columns`/`ours:` mapping), nothing to summarize")
    ours = t["ours"]
    std_cols = {str(k): str(v) for k, v in (ours.get("paper_std_columns") or {}).items()}
    all_cols = [str(c) for c in t["columns"]]
    columns = [c for c in all_cols if c not in std_cols.values()]

    def split(rows: Mapping[str, list], stds: Mapping[str, list] | None) -> dict:
        out = {}
        for r, vals in rows.items():
            by = dict(zip(all_cols, vals))
            mean = [by.get(c) for c in columns]
            if std_cols:
                std = [by.get(std_cols[c]) if c in std_cols else None for c in columns]
            elif stds is not None and r in stds:
                sd = dict(zip(all_cols, stds[r]))
                std = [sd.get(c) for c in columns]
            else:
                std = None
            out[str(r)] = (mean, std)
        return out

    paper: dict = {}
    if "rows" in t:
        paper[""] = split(t["rows"], None)
    elif "mean" in t:
        paper[""] = split(t["mean"], t.get("std"))
    for sub, body in t.items():
        if sub in _RESERVED or not isinstance(body, Mapping):
            continue
        paper[str(sub)] = split(body["mean"], body.get("std")) if "mean" in body else split(body, None)

    has_columns, has_column = "columns" in ours, "column" in ours
    if has_columns == has_column or (has_column and "value" not in ours):
        raise ValueError(f"{where}.ours: give either `columns` ({{column: field}}) or `column` + `value`")
    columns_map = (
        {str(c): FieldSpec.parse(s, f"{where}.ours.columns.{c}") for c, s in ours["columns"].items()}
        if has_columns else None
    )
    baseline: dict[str, dict[str | None, FieldSpec]] = {}
    for r, spec in (ours.get("baseline_rows") or {}).items():
        loc = f"{where}.ours.baseline_rows.{r}"
        if isinstance(spec, str) or (isinstance(spec, Mapping) and (_SPEC_KINDS & set(spec))):
            baseline[str(r)] = {None: FieldSpec.parse(spec, loc)}
        else:
            baseline[str(r)] = {str(c): FieldSpec.parse(s, f"{loc}.{c}") for c, s in spec.items()}
    plot = ours.get("plot", "bar")
    if plot not in ("bar", "line"):
        raise ValueError(f"{where}.ours.plot: expected 'bar' or 'line', got {plot!r}")
    return PaperTable(
        key=key,
        caption=" ".join(str(t.get("caption", "")).split()),
        columns=columns,
        paper=paper,
        row=FieldSpec.parse(ours.get("row", "method"), f"{where}.ours.row"),
        subtable=FieldSpec.parse(ours["subtable"], f"{where}.ours.subtable") if "subtable" in ours else None,
        columns_map=columns_map,
        column=FieldSpec.parse(ours["column"], f"{where}.ours.column") if has_column else None,
        value=FieldSpec.parse(ours["value"], f"{where}.ours.value") if has_column else None,
        baseline_rows=baseline,
        where={k: v if isinstance(v, list) else [v] for k, v in (ours.get("where") or {}).items()},
        decimals=int(ours.get("decimals", 2)),
        plot=plot,
        notes=str(ours.get("notes", "")).strip(),
        paper_row_notes=" ".join(str(ours.get("paper_row_notes", "")).split()),
    )


# ----------------------------------------------------------------------------------------------- loading runs
@dataclass
class Run:
    """One result.json (or a stub for a job directory that has none, e.g. a killed job)."""

    source: str
    result: dict[str, Any]

    @property
    def failed(self) -> bool:
        return self.result.get("status") in FAILED_STATUSES or self.result.get("status") is None


def _display(path: Path) -> str:
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return path.resolve().as_posix()


def _stub(job_dir: Path) -> dict[str, Any]:
    """A failed-run record for a Hydra job dir with no result.json: config and overrides from .hydra/."""
    stub: dict[str, Any] = {"status": "failed", "error": "no result.json (job killed or crashed before writing it)"}
    for name in ("config", "overrides"):
        f = job_dir / ".hydra" / f"{name}.yaml"
        if f.is_file():
            stub[name] = yaml.safe_load(f.read_text())
    if isinstance(stub.get("config"), Mapping):
        for k in ("experiment", "method", "dataset", "seed", "budget", "scorer", "compressor"):
            if k in stub["config"] and not isinstance(stub["config"][k], (dict, list)):
                stub.setdefault(k, stub["config"][k])
    return stub


def load_runs(inputs: Iterable[Path | str]) -> list[Run]:
    """Result files from files and (recursively) directories; job dirs with .hydra/ but no result.json -> failed."""
    runs: dict[str, Run] = {}
    for item in map(Path, inputs):
        if item.is_file():
            files, job_dirs = [item], []
        elif item.is_dir():
            files = [p for p in item.rglob("result.json") if not _hidden(p, item)]
            job_dirs = [p.parent for p in item.rglob(".hydra") if p.is_dir() and not _hidden(p.parent, item)]
        else:
            raise FileNotFoundError(f"summarize input {item}: no such file or directory")
        for f in files:
            try:
                result = json.loads(f.read_text())
            except json.JSONDecodeError as e:
                result = {"status": "failed", "error": f"unreadable result.json: {e}"}
            runs[_display(f)] = Run(_display(f), result)
        for d in job_dirs:
            if not (d / "result.json").exists():
                runs[_display(d)] = Run(_display(d), _stub(d))
    return [runs[k] for k in sorted(runs)]


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts[:-1])


# ----------------------------------------------------------------------------------------------- aggregation
@dataclass
class Cell:
    """Paper and ours for one (sub-table, row, column)."""

    paper_mean: float | None = None
    paper_std: float | None = None
    per_seed: dict[str, list[float]] = field(default_factory=dict)
    n_failed: int = 0
    #: per seed, the runs' McNemar tests against their base model (:meth:`PaperTable.paired_test`), where recorded
    paired: dict[str, list[Mapping[str, Any]]] = field(default_factory=dict)
    #: per seed, each run's value minus the baseline row's value read from the same run (its own base model)
    gains: dict[str, list[float]] = field(default_factory=dict)
    #: per seed, the runs' packed per-test-sample correctness (:meth:`PaperTable.correct_vector`), where recorded
    vectors: dict[str, list[str]] = field(default_factory=dict)

    @property
    def values(self) -> list[float]:
        return [float(np.mean(v)) for _, v in sorted(self.per_seed.items())]

    @property
    def n(self) -> int:
        return len(self.per_seed)

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.values)) if self.values else None

    @property
    def std(self) -> float | None:
        """Sample std over seeds (ddof=1); None below two seeds."""
        return float(np.std(self.values, ddof=1)) if self.n > 1 else None

    @property
    def delta(self) -> float | None:
        return None if self.mean is None or self.paper_mean is None else self.mean - self.paper_mean

    @property
    def outside(self) -> bool:
        """Ours outside the paper's mean ± 2 std (only when the paper gives a std)."""
        return self.delta is not None and self.paper_std is not None and abs(self.delta) > 2 * self.paper_std + 1e-12

    @property
    def status(self) -> str:
        if self.n == 0:
            return "failed" if self.n_failed else ("not run" if self.paper_mean is not None else "n/a")
        return "partial" if self.n_failed else "ok"


@dataclass
class Summary:
    table: PaperTable
    cells: dict[str, dict[str, dict[str, Cell]]]  # subtable -> row -> column -> Cell
    columns: dict[str, list[str]]
    selection: dict[str, list[str]]  # rule -> rows
    unplaced_failures: list[tuple[str, str]]
    ignored: int
    machines: list[str]
    newest: str | None
    command: str
    #: (subtable, row) -> config keys whose values split that row into variants "row [key=value, ...]"
    split: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    #: config key -> the values pooled in shared cells because the caller asked (``pool``)
    pooled: dict[str, list[str]] = field(default_factory=dict)
    #: whether rows of runs with a ``paper_row`` / ``baseline_row`` are shown (then ``paper_row_notes`` are printed)
    renamed_rows: bool = False


def _failure_note(result: Mapping[str, Any]) -> str:
    """First line of the error plus the job's overrides, to find the job again."""
    why = (str(result.get("error") or f"status {result.get('status')}").splitlines() or [""])[0][:200]
    overrides = " ".join(map(str, result.get("overrides") or []))
    return why + (f" (overrides: {overrides})" if overrides else "")


#: config keys that never change a result: where files live, threads, progress bars, loggers, caching, labels of
#: the sweep, torch's NaN fill of new memory (speed only); ignored when deciding whether two runs share a cell (as
#: is every key ending in ``_dir``)
IGNORED_CONFIG_KEYS = frozenset({
    "hydra", "paths", "torch_threads", "experiment_name", "paper_table", "cache", "gallery", "logger",
    "fill_uninitialized_memory",
    "trainer.enable_progress_bar", "trainer.enable_model_summary", "trainer.enable_checkpointing",
    "trainer.log_every_n_steps", "trainer.default_root_dir", "data.num_workers", "data.download",
})
#: config sections that decide a baseline row's value (the untrimmed base model: the pipeline's model keys less the seed)
BASELINE_SECTIONS = ("data", "model", "trainer")


def _ignored(key: str) -> bool:
    parts = key.split(".")
    return (key == "seed" or parts[-1].endswith("_dir")
            or any(".".join(parts[:i]) in IGNORED_CONFIG_KEYS for i in range(1, len(parts) + 1)))


def comparable_config(result: Mapping[str, Any]) -> dict[str, str]:
    """The resolved config of a run (``result["config"]``) as ``{dotted key: canonical JSON value}``, without the
    keys in :data:`IGNORED_CONFIG_KEYS`; a null value is left out, so a key that a later config added with a null
    default compares equal to its absence."""
    out: dict[str, str] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, Mapping) and node:
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        elif node is not None and not _ignored(prefix[:-1]):
            out[prefix[:-1]] = json.dumps(node, sort_keys=True, default=str)

    walk(result.get("config") or {}, "")
    return out


def differing_keys(configs: Sequence[Mapping[str, str]], seeds: Sequence[Any],
                   sections: Sequence[str] | None = None) -> set[str]:
    """Keys whose values differ among ``configs`` (from :func:`comparable_config`), leaving out keys that follow
    the seed (``data.seed: ${seed}``: each run's value is its own seed); ``sections`` keeps only keys under them."""
    keys = set().union(*configs) if configs else set()
    if sections is not None:
        keys = {k for k in keys if k.split(".")[0] in sections}
    out = set()
    for k in keys:
        vals = [c.get(k) for c in configs]
        if len(set(vals)) > 1 and not all(v == json.dumps(sd) for v, sd in zip(vals, seeds)):
            out.add(k)
    return out


def _override_value(v: str | None) -> str:
    """A :func:`comparable_config` value as a Hydra override writes it: ``0.05``, ``bf16-mixed``, ``null``."""
    return "null" if v is None else (str(json.loads(v)) if v.startswith('"') else v)


def _variant(row: str, keys: Sequence[str], config: Mapping[str, str]) -> str:
    """``row [key=value, ...]`` (``Outlier Gradient (L1) [trim.budget=0.05]``); ``row`` itself without keys."""
    if not keys:
        return row
    return f"{row} [" + ", ".join(f"{k}={_override_value(config.get(k))}" for k in keys) + "]"


@dataclass
class _Placed:
    """A run that matched the table: its seed (``seed`` keys a cell's per-seed values, ``seed_value`` is the
    recorded one), its comparable config and the (subtable, row, column, value) cells it fills, baseline rows apart;
    ``paper`` maps a row it fills to the paper row compared with it, where the two differ (``paper_row``,
    ``baseline_row``)."""

    run: Run
    seed: str
    seed_value: Any
    config: dict[str, str]
    cells: list[tuple[str, str, str, float | None]]
    baseline: list[tuple[str, str, str, float | None]]
    paper: dict[str, str] = field(default_factory=dict)


def _renamed(result: Mapping[str, Any], placed: list, baseline: list) -> tuple[list, list, dict[str, str]]:
    """Apply the run's ``config.paper_row`` / ``config.baseline_row``: (cells, baseline cells, row -> paper row)."""
    paper: dict[str, str] = {}
    paper_row, baseline_row = lookup(result, "config.paper_row"), lookup(result, "config.baseline_row")
    if isinstance(paper_row, str) and paper_row:
        paper.update({row: paper_row for _, row, _, _ in placed if row != paper_row})
    if isinstance(baseline_row, str) and baseline_row:
        paper.update({baseline_row: row for _, row, _, _ in baseline if row != baseline_row})
        baseline = [(sub, baseline_row, col, value) for sub, _, col, value in baseline]
    return placed, baseline, paper


def summarize(runs: Sequence[Run], table: PaperTable, command: str = "", pool: Iterable[str] = ()) -> Summary:
    """Group runs by (sub-table, row, column) over seeds; paper numbers alongside.

    Runs that differ in any config key other than the seed (and the keys in :data:`IGNORED_CONFIG_KEYS`) never
    share a cell: the row is split into variants labelled with the differing keys, ``"Outlier Gradient (L1)
    [trim.budget=0.05]"``, each carrying the paper's numbers for the row. Splitting rather than refusing, because
    this runs at the end of every sweep, where an error would leave no summary at all, and because every number
    is then shown with the setting that produced it. Differences are found per cell, so keys that the table maps
    to columns (a budget column, a dataset column) do not split a row; a baseline row (the untrimmed model, filled
    from every run) compares only :data:`BASELINE_SECTIONS`. ``pool`` names keys whose differences are pooled on
    purpose (e.g. seeds run on CPU at fp32 beside GPU bf16 ones); the summary lists them.
    """
    pool = set(pool)
    paper_cells: dict[str, dict[str, dict[str, tuple[float | None, float | None]]]] = {}
    for sub, rows in table.paper.items():
        for row, (mean, std) in rows.items():
            paper_cells.setdefault(sub, {})[row] = {
                col: (mean[i], None if std is None else std[i]) for i, col in enumerate(table.columns)}
    unplaced: list[tuple[str, str]] = []
    ignored = 0
    machines: set[str] = set()
    dates: list[str] = []
    entries: list[_Placed] = []
    for run in runs:
        r = run.result
        if not table.matches(r):
            if run.failed and any(lookup(r, k) is _MISSING for k in table.where):  # e.g. a killed job's stub
                unplaced.append((run.source, _failure_note(r)))
            else:
                ignored += 1
            continue
        seed = str(r["seed"]) if r.get("seed") is not None else run.source
        placed = table.cells(r)
        if run.failed and not placed:
            unplaced.append((run.source, _failure_note(r)))
            continue
        placed, baseline, paper = _renamed(r, placed, [] if run.failed else table.baseline_cells(r))
        entries.append(_Placed(run, seed, r.get("seed"), comparable_config(r), placed, baseline, paper))
        if run.failed:
            continue
        versions = r.get("versions") or {}
        machine = r.get("machine") or versions.get("machine") or versions.get("device") or versions.get("platform")
        if machine:
            machines.add(str(machine))
        date = r.get("finished_at") or r.get("timestamp") or r.get("date")
        if date:
            dates.append(str(date))

    # which keys split which row: differences among the finished runs of each cell
    by_cell: dict[tuple[str, str, str, bool], list[tuple[dict[str, str], str]]] = {}
    for e in entries:
        if e.run.failed:
            continue
        for cells_of, is_base in ((e.cells, False), (e.baseline, True)):
            for sub, row, col, value in cells_of:
                if value is not None:
                    by_cell.setdefault((sub, row, col, is_base), []).append((e.config, e.seed_value))
    split: dict[tuple[str, str], set[str]] = {}
    pooled: dict[str, set[str]] = {}
    for (sub, row, _, is_base), members in by_cell.items():
        confs, seeds = [c for c, _ in members], [sd for _, sd in members]
        keys = differing_keys(confs, seeds, BASELINE_SECTIONS if is_base else None)
        for k in keys & pool:
            pooled.setdefault(k, set()).update(_override_value(c.get(k)) for c in confs)
        if keys - pool:
            split.setdefault((sub, row), set()).update(keys - pool)
    split_keys = {k: sorted(v) for k, v in split.items()}

    cells: dict[str, dict[str, dict[str, Cell]]] = {}

    def cell(sub: str, base_row: str, row: str, col: str) -> Cell:
        by_col = cells.setdefault(sub, {}).setdefault(row, {})
        if col not in by_col:
            paper = paper_cells.get(sub, {}).get(base_row, {}).get(col, (None, None))
            by_col[col] = Cell(*paper)
        return by_col[col]

    for sub, rows in paper_cells.items():
        for row, by_col in rows.items():
            if (sub, row) not in split_keys:
                for col in by_col:
                    cell(sub, row, row, col)
    selection: dict[str, set[str]] = {}
    variants: dict[tuple[str, str], set[str]] = {}  # a split row -> its variant labels
    followers: dict[tuple[str, str], set[str]] = {}  # a paper row -> the rows of runs compared with it (paper_row)
    for e in entries:
        run, placed = e.run, e.cells
        label = {(sub, row): _variant(row, split_keys.get((sub, row), ()), e.config)
                 for sub, row, _, _ in placed + e.baseline}
        for (sub, row), name in label.items():
            if (sub, row) in split_keys:
                variants.setdefault((sub, row), set()).add(name)
            if row in e.paper:
                followers.setdefault((sub, e.paper[row]), set()).add(name)
        if run.failed:
            for sub, row, col, _ in placed:
                cell(sub, e.paper.get(row, row), label[sub, row], col).n_failed += 1
            continue
        for sub, row, col, value in placed + e.baseline:
            if value is not None:
                cell(sub, e.paper.get(row, row), label[sub, row], col).per_seed.setdefault(e.seed, []).append(value)
        own_base = {(sub, col): value for sub, _, col, value in e.baseline if value is not None}
        for sub, row, col, value in placed:
            if value is None:
                continue
            c = cell(sub, e.paper.get(row, row), label[sub, row], col)
            if (sub, col) in own_base:
                c.gains.setdefault(e.seed, []).append(value - own_base[sub, col])
            test = table.paired_test(run.result, col)
            if test is not None:
                c.paired.setdefault(e.seed, []).append(test)
            vector = table.correct_vector(run.result, col)
            if vector is not None:
                c.vectors.setdefault(e.seed, []).append(vector)
        if placed:
            rule = str(run.result.get("selection", "unknown"))
            if lookup(run.result, "config.retrain") is False:  # scores and AUC only: nothing was trimmed and retrained
                rule = "detection"
            selection.setdefault(rule, set()).add(label[placed[0][0], placed[0][1]])
    for sub, rows in paper_cells.items():  # a split paper row: every variant shows the paper's numbers
        for row, by_col in rows.items():
            for variant in variants.get((sub, row), ()):
                for col in by_col:
                    cell(sub, row, variant, col)

    columns = {}
    for sub, rows in cells.items():
        extra = sorted({c for row in rows.values() for c in row} - set(table.columns))
        columns[sub] = table.columns + extra
    ordered: dict[str, dict[str, dict[str, Cell]]] = {}
    for sub in list(table.paper) + sorted(set(cells) - set(table.paper)):
        rows = cells.get(sub, {})
        if not rows:  # a sub-table with neither paper numbers nor runs (a sweep of one CIFAR-N label set): left out
            continue
        order: list[str] = []
        for row in table.paper.get(sub, {}):
            order += [row] if row in rows else sorted(variants.get((sub, row), ()))
            order += sorted(followers.get((sub, row), set()) - set(order))
        order += sorted(set(rows) - set(order))
        # a follower row none of whose runs holds this table's value (e.g. --accuracy cross on runs that predate
        # test_cross_acc) has no cells: it is left out, as an unnamed row with no value is
        ordered[sub] = {row: rows[row] for row in order if row in rows}
    return Summary(
        table=table,
        cells=ordered,
        columns=columns,
        selection={k: sorted(v) for k, v in sorted(selection.items())},
        unplaced_failures=sorted(unplaced),
        ignored=ignored,
        machines=sorted(machines),
        newest=max(dates) if dates else None,
        command=command,
        split={(sub, row): split_keys[sub, row] for sub in ordered
               for row in dict.fromkeys([*table.paper.get(sub, {}), *sorted(r for s_, r in split_keys if s_ == sub)])
               if (sub, row) in split_keys},
        pooled={k: sorted(v) for k, v in sorted(pooled.items())},
        renamed_rows=bool(followers),
    )


# ----------------------------------------------------------------------------------------------- rendering
def _num(x: float | None, d: int, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    s = f"{x:+.{d}f}" if signed else f"{x:.{d}f}"
    return s.replace("-0." + "0" * d, "0." + "0" * d).replace("+0." + "0" * d, "0." + "0" * d)


def paper_text(c: Cell, d: int) -> str:
    if c.paper_mean is None:
        return "—"
    return _num(c.paper_mean, d) + (f" ± {_num(c.paper_std, d)}" if c.paper_std is not None else "")


def ours_text(c: Cell, d: int, n_max: int) -> str:
    if c.n == 0:
        return "—" if c.status == "n/a" else c.status
    s = _num(c.mean, d) + (f" ± {_num(c.std, d)}" if c.std is not None else "") + (DAGGER if c.outside else "")
    notes = ([f"n={c.n}"] if c.n != n_max else []) + ([f"{c.n_failed} failed"] if c.n_failed else [])
    return s + (f" ({', '.join(notes)})" if notes else "")


def delta_text(c: Cell, d: int) -> str:
    return _num(c.delta, d, signed=True) if c.delta is not None else "—"


def _n_max(s: Summary) -> int:
    return max((c.n for rows in s.cells.values() for row in rows.values() for c in row.values()), default=0)


def header_lines(s: Summary, provenance: bool = False) -> list[str]:
    """The lines above the table. ``provenance`` adds the machines and the newest result's time, which change
    whenever the same sweep is rerun: written into a sweep's own folder, kept out of published summaries."""
    sel = "; ".join(f"{rule} ({_RULES.get(rule, rule)}): {', '.join(rows)}" for rule, rows in s.selection.items())
    lines = [f"Regenerate: `{s.command}`" if s.command else "Regenerate: (command not recorded)"]
    if provenance:
        lines += [f"Machine: {', '.join(s.machines) or 'not recorded'}", f"Newest result: {s.newest or 'not recorded'}"]
    lines.append(f"Selection rule per row: {sel or 'no finished runs'}")
    if s.split:
        rows = "; ".join(f"{f'{sub} / ' if sub else ''}{row}: {', '.join(keys)}" for (sub, row), keys in s.split.items())
        lines.append(f"Rows split into variants by the config keys that differ among their runs (besides the seed): {rows}")
    if s.pooled:
        keys = "; ".join(f"{k} ({', '.join(v)})" for k, v in s.pooled.items())
        lines.append(f"Cells pool runs that differ in (--pool): {keys}")
    return lines


_RULES = {"budget": "top-k by score within the trim budget", "detector": "the detector's predicted outliers",
          "detection": "no retraining; scores ranked against the noise mask where the labels have one",
          "identification": "every training prompt ranked per test prompt, no trimming"}


def paired_gains(s: Summary) -> dict[str, dict[str, dict[str, tuple[dict[str, float], float | None]]]]:
    """Per (sub-table, row, column): each seed's gain over the table's baseline row (this row's value minus the
    baseline's, same seed: for trim-retrain tables the untrimmed model of that seed) and the paper's gain (the
    difference of the paper's means), for every row but the baseline(s) and only seeds that both have.

    A run that records the baseline row's value itself (a retrain records its own base model's accuracy) is compared
    with that value, so that two runs of one seed whose base models differ (one retrained after the base model was
    trained again) are each paired with their own; otherwise the seed's mean baseline value is used."""
    out: dict[str, dict[str, dict[str, tuple[dict[str, float], float | None]]]] = {}
    if not s.table.baseline_rows:
        return out
    base = next(iter(s.table.baseline_rows))  # the first baseline row (tables have one)
    for sub, rows in s.cells.items():
        for row, by_col in rows.items():
            if base not in rows or row in s.table.baseline_rows:
                continue
            for col, c in by_col.items():
                b = rows[base].get(col, Cell())
                gains = {sd: float(np.mean(c.gains[sd])) if sd in c.gains
                         else float(np.mean(v)) - float(np.mean(b.per_seed[sd]))
                         for sd, v in sorted(c.per_seed.items()) if sd in c.gains or sd in b.per_seed}
                paper = c.paper_mean - b.paper_mean if c.paper_mean is not None and b.paper_mean is not None else None
                if gains:
                    out.setdefault(sub, {}).setdefault(row, {})[col] = (gains, paper)
    return out


def paired_pvalues(s: Summary) -> dict[str, dict[str, dict[str, dict[str, Mapping[str, Any]]]]]:
    """Per (sub-table, row, column): each seed's McNemar test of the run against its own base model on the same
    test samples (:mod:`gradsift.paired`; the first run of a seed where a seed has several), for the cells whose runs
    recorded one."""
    out: dict[str, dict[str, dict[str, dict[str, Mapping[str, Any]]]]] = {}
    for sub, rows in s.cells.items():
        for row, by_col in rows.items():
            for col, c in by_col.items():
                if c.paired:
                    out.setdefault(sub, {}).setdefault(row, {})[col] = {sd: t[0] for sd, t in sorted(c.paired.items())}
    return out


def _p(p: float) -> str:
    return f"{p:.2g}" if p >= 0.001 else "<0.001"


def paired_markdown(s: Summary) -> list[str]:
    """``--paired``: a table of each row's paired gain over the baseline row, per column: the paper's gain, our mean
    gain with every seed's, and at how many seeds the row is ahead (the plain "does it beat the baseline")."""
    if not s.table.baseline_rows:
        return []
    base, d = next(iter(s.table.baseline_rows)), s.table.decimals
    gains, tests = paired_gains(s), paired_pvalues(s)
    out = ["", f"## Paired gain over {base}", "",
           f"Per seed: this row's run minus the {base} value of the same seed (the same base model); paper = the "
           "difference of the paper's means. 'ahead' = seeds with a gain above 0, of the seeds both have."]
    if tests:
        out[-1] += (" 'p (per seed)': McNemar's exact test of the run against its own base model on the same test "
                    "samples (two-sided, the samples only one of the two models gets right; gradsift.paired), one "
                    "per seed in the order of the gains; '—' = a run that did not record which samples it gets right.")
    for sub, rows in gains.items():
        cols = [c for c in s.columns[sub] if any(c in by_col for by_col in rows.values())]
        with_p = bool(tests.get(sub))
        out += ["", f"### {sub}", ""] if sub else [""]
        out.append("| Method | " + " | ".join(f"{c} paper | {c} ours (per seed) | {c} ahead"
                                           + (f" | {c} p (per seed)" if with_p else "") for c in cols) + " |")
        out.append("|---|" + ("---:|---:|---:|" + ("---:|" if with_p else "")) * len(cols))
        for row, by_col in rows.items():
            parts = []
            for col in cols:
                if col not in by_col:
                    parts += ["—"] * (4 if with_p else 3)
                    continue
                g, paper = by_col[col]
                vals = list(g.values())
                seeds = ", ".join(_num(v, d, signed=True) for v in vals)
                parts += [_num(paper, d, signed=True) if paper is not None else "—",
                          f"{_num(float(np.mean(vals)), d, signed=True)} ({seeds})",
                          f"{sum(v > 0 for v in vals)}/{len(vals)}"]
                if with_p:
                    per = tests.get(sub, {}).get(row, {}).get(col, {})
                    parts.append(", ".join(_p(float(per[sd]["p"])) if sd in per else "—" for sd in g)
                                 if per else "—")
            out.append(f"| {row} | " + " | ".join(parts) + " |")
    return out


def versus_gains(s: Summary, control: str) -> dict[str, dict[str, dict[str, dict[str, tuple[float, Mapping | None]]]]]:
    """Per (sub-table, row, column): each seed's gain of the row over the ``control`` row (this row's value minus
    the control's, same seed) and, where both runs record which test samples they get right, McNemar's exact test of
    the row's run against the control's on those samples (:func:`gradsift.paired.paired_test`; the first run of a
    seed where a cell has several). Rows other than the control and the baseline row(s); seeds both have.

    Raises:
        ValueError: no row of the summary is called ``control`` (the message lists the rows).
    """
    from gradsift.paired import packed_test

    rows_seen = {row for rows in s.cells.values() for row in rows}
    if control not in rows_seen:
        raise ValueError(f"--versus {control!r}: no such row in this summary; its rows: {sorted(rows_seen)}")
    out: dict[str, dict[str, dict[str, dict[str, tuple[float, Mapping | None]]]]] = {}
    for sub, rows in s.cells.items():
        if control not in rows:
            continue
        for row, by_col in rows.items():
            if row == control or row in s.table.baseline_rows:
                continue
            for col, c in by_col.items():
                k = rows[control].get(col)
                if k is None:
                    continue
                per = {}
                for sd in sorted(set(c.per_seed) & set(k.per_seed)):
                    gain = float(np.mean(c.per_seed[sd])) - float(np.mean(k.per_seed[sd]))
                    both = c.vectors.get(sd) and k.vectors.get(sd)
                    per[sd] = (gain, packed_test(k.vectors[sd][0], c.vectors[sd][0]) if both else None)
                if per:
                    out.setdefault(sub, {}).setdefault(row, {})[col] = per
    return out


def versus_markdown(s: Summary, control: str) -> list[str]:
    """``--versus ROW``: a table of each row's per-seed gain over the control row (e.g. the random-5% control, same
    seed) with McNemar's exact p where both runs record their per-sample correctness."""
    d, gains = s.table.decimals, versus_gains(s, control)
    out = ["", f"## Paired gain over {control}", "",
           f"Per seed: this row's run minus the {control} run of the same seed. 'ahead' = seeds with a gain above 0, "
           "of the seeds both have. 'p (per seed)': McNemar's exact test of the row's model against the control's on "
           "the same test samples (two-sided; gradsift.paired), one per seed in the order of the gains; '—' = a "
           "pair in which a run did not record which samples it gets right."]
    for sub, rows in gains.items():
        cols = [c for c in s.columns[sub] if any(c in by_col for by_col in rows.values())]
        out += ["", f"### {sub}", ""] if sub else [""]
        out.append("| Method | " + " | ".join(f"{c} ours (per seed) | {c} ahead | {c} p (per seed)" for c in cols)
                   + " |")
        out.append("|---|" + "---:|---:|---:|" * len(cols))
        for row, by_col in rows.items():
            parts = []
            for col in cols:
                if col not in by_col:
                    parts += ["—"] * 3
                    continue
                vals = [g for g, _ in by_col[col].values()]
                seeds = ", ".join(_num(v, d, signed=True) for v in vals)
                parts += [f"{_num(float(np.mean(vals)), d, signed=True)} ({seeds})",
                          f"{sum(v > 0 for v in vals)}/{len(vals)}",
                          ", ".join(_p(float(t["p"])) if t is not None else "—" for _, t in by_col[col].values())]
            out.append(f"| {row} | " + " | ".join(parts) + " |")
    if not gains:
        out += ["", f"(no row shares a seed with {control})"]
    return out


def to_markdown(s: Summary, provenance: bool = False, paired: bool = False, versus: str | None = None) -> str:
    """The summary as markdown; ``provenance`` as in :func:`header_lines`; ``paired`` appends
    :func:`paired_markdown`, ``versus`` (a row name) :func:`versus_markdown`."""
    d, n_max = s.table.decimals, _n_max(s)
    out = "\n\n".join(header_lines(s, provenance)).splitlines() + ["", f"## {s.table.key}", "", s.table.caption, ""]
    if s.table.has_paper:
        out.append(
            f"ours = mean ± std over seeds (n={n_max} unless noted); Δ = ours − paper; {DAGGER} = ours outside the "
            "paper's mean ± 2 std (only where the paper gives a std)."
        )
    else:
        out.append(f"mean ± std over seeds (n={n_max} unless noted).")
    for sub, rows in s.cells.items():
        cols = s.columns[sub]
        out += ["", f"### {sub}", ""] if sub else [""]
        per_col = 3 if s.table.has_paper else 1
        header = (f"{c} paper | {c} ours | {c} Δ" if s.table.has_paper else c for c in cols)
        out.append("| Method | " + " | ".join(header) + " |")
        out.append("|---|" + "---:|" * (per_col * len(cols)))
        for row, by_col in rows.items():
            parts = []
            for col in cols:
                c = by_col.get(col, Cell())
                ours = ours_text(c, d, n_max)
                parts += [paper_text(c, d), ours, delta_text(c, d)] if s.table.has_paper else [ours]
            out.append(f"| {row} | " + " | ".join(parts) + " |")
    if s.table.notes:
        out += ["", f"Notes: {s.table.notes}"]
    if s.renamed_rows and s.table.paper_row_notes:
        out += ["", s.table.paper_row_notes]
    if s.unplaced_failures:
        out += ["", "Failed jobs that could not be placed in a cell:"]
        out += [f"- `{src}`: {err}" for src, err in s.unplaced_failures]
    if s.ignored:
        out += ["", f"{s.ignored} result file(s) did not match this table's filter ({s.table.where}) and were ignored."]
    if paired:
        out += paired_markdown(s)
    if versus:
        out += versus_markdown(s, versus)
    return "\n".join(out) + "\n"


CSV_FIELDS = [
    "table", "subtable", "row", "column", "paper_mean", "paper_std", "ours_mean", "ours_std",
    "n_seeds", "n_failed", "delta", "outside_2std", "status",
]


def to_csv(s: Summary) -> str:
    d = s.table.decimals
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_FIELDS)
    for sub, rows in s.cells.items():
        for row, by_col in rows.items():
            for col in s.columns[sub]:
                c = by_col.get(col, Cell())
                w.writerow([
                    s.table.key, sub, row, col, _num(c.paper_mean, d), _num(c.paper_std, d), _num(c.mean, d),
                    _num(c.std, d), c.n, c.n_failed, _num(c.delta, d, signed=True), int(c.outside), c.status,
                ])
    return buf.getvalue()


def _tex(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"), ("$", r"\$")):
        s = s.replace(a, b)
    return s.replace(" ± ", r" $\pm$ ").replace(DAGGER, r"$^\dagger$").replace("—", "--")


def to_latex(s: Summary) -> str:
    d, n_max = s.table.decimals, _n_max(s)
    out = [f"% Regenerate: {s.command}", f"% {s.table.key}: {s.table.caption}"]
    for sub, rows in s.cells.items():
        cols = s.columns[sub]
        out += [r"\begin{tabular}{l" + "rrr" * len(cols) + "}", r"\toprule"]
        if sub:
            out.append(rf"\multicolumn{{{1 + 3 * len(cols)}}}{{l}}{{\textbf{{{_tex(sub)}}}}} \\")
        out.append("Method & " + " & ".join(rf"\multicolumn{{3}}{{c}}{{{_tex(c)}}}" for c in cols) + r" \\")
        out.append(" & " + " & ".join(["paper & ours & $\\Delta$"] * len(cols)) + r" \\")
        out.append(r"\midrule")
        for row, by_col in rows.items():
            parts = []
            for col in cols:
                c = by_col.get(col, Cell())
                parts += [paper_text(c, d), ours_text(c, d, n_max), delta_text(c, d)]
            out.append(_tex(row) + " & " + " & ".join(_tex(p) for p in parts) + r" \\")
        out += [r"\bottomrule", r"\end{tabular}", ""]
    return "\n".join(out)


def to_png(s: Summary, path: Path | str) -> None:
    """Paper vs ours: horizontal bars per column (``plot: bar``) or lines over the columns (``plot: line``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(sub, col) for sub in s.cells for col in s.columns[sub]] if s.table.plot == "bar" else [
        (sub, None) for sub in s.cells
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 0.35 * max(map(len, s.cells.values())) + 2),
                             squeeze=False)
    for ax, (sub, col) in zip(axes[0], panels):
        rows = list(s.cells[sub])
        if col is not None:
            y = np.arange(len(rows))
            cs = [s.cells[sub][r].get(col, Cell()) for r in rows]
            ax.barh(y - 0.2, [c.paper_mean or 0 for c in cs], 0.4, label="paper", color="0.7")
            ax.barh(y + 0.2, [c.mean or 0 for c in cs], 0.4, xerr=[c.std or 0 for c in cs], label="ours",
                    color="tab:blue")
            ax.set_yticks(y, rows, fontsize=7)
            ax.invert_yaxis()
            ax.set_title(f"{sub} {col}".strip(), fontsize=9)
        else:
            x = np.arange(len(s.columns[sub]))
            for i, r in enumerate(rows):
                cs = [s.cells[sub][r].get(c, Cell()) for c in s.columns[sub]]
                color = f"C{i % 10}"
                ax.plot(x, [np.nan if c.paper_mean is None else c.paper_mean for c in cs], "--", color=color, lw=1)
                ax.errorbar(x, [np.nan if c.mean is None else c.mean for c in cs], [c.std or 0 for c in cs],
                            color=color, marker="o", ms=3, label=r)
            ax.set_xticks(x, s.columns[sub])
            ax.set_title(f"{sub} (dashed = paper)".strip(), fontsize=9)
        ax.legend(fontsize=6)
    fig.suptitle(s.table.key, fontsize=10)
    save_figure(fig, path, dpi=100, reproducible=True)


ACCURACIES = ("final", "best", "cross")
#: appended to the caption of a table whose accuracies are best-epoch ones (``--accuracy best``)
BEST_EPOCH_NOTE = ("Ours: best-epoch test accuracy (the max of the per-epoch test curve, base and retrained model "
                   "alike, as the OGA authors' np.max in cifar-10-100n/OD-experiment.py): the epoch is SELECTED ON "
                   "THE TEST SET, an optimistic estimate; --accuracy final gives the last epoch's.")
#: appended to the caption of a table of cross-selected accuracies (``--accuracy cross``)
CROSS_NOTE = ("Ours: early stopping without test-set selection (cross_acc): the epoch is chosen on one half of the "
              "test images (even / odd index) and its accuracy read on the other half, both ways, averaged; no image "
              "both chooses the epoch and measures it. --accuracy best gives the authors' test-selected max.")
#: per --accuracy: (the metric suffix replacing ``test_acc``, the caption note)
_ACCURACY_FIELDS = {"best": ("test_best_acc", BEST_EPOCH_NOTE), "cross": ("test_cross_acc", CROSS_NOTE)}


def best_epoch_table(table: PaperTable) -> PaperTable:
    """``table`` reading best-epoch accuracies: every field path ending in ``test_acc`` (``metrics.test_acc``,
    ``metrics.base_test_acc``) reads ``test_best_acc`` instead (:func:`gradsift.training.with_best_epoch`, recorded
    by runs with ``eval_every_epoch: true``), and the caption says that the epoch was selected on the test set.

    Raises:
        ValueError: when no field of the table reads a test accuracy.
    """
    return accuracy_table(table, "best")


def accuracy_table(table: PaperTable, accuracy: str) -> PaperTable:
    """``table`` reading another accuracy of the same runs: ``best`` (:func:`best_epoch_table`) or ``cross``
    (``test_cross_acc`` / ``base_test_cross_acc``: the epoch chosen on one half of the test set and read on the
    other, :func:`gradsift.training.with_best_epoch`); ``final`` returns ``table`` itself.

    Raises:
        ValueError: an unknown ``accuracy``, or no field of the table reads a test accuracy.
    """
    if accuracy == "final":
        return table
    if accuracy not in _ACCURACY_FIELDS:
        raise ValueError(f"--accuracy {accuracy!r}; expected one of {ACCURACIES}")
    field, note = _ACCURACY_FIELDS[accuracy]
    changed = []

    def swap(spec: FieldSpec | None) -> FieldSpec | None:
        if spec is None:
            return None
        paths = tuple(p[: -len("test_acc")] + field if p.endswith("test_acc") else p for p in spec.paths)
        changed.extend(p for p, q in zip(spec.paths, paths) if p != q)
        return replace(spec, paths=paths)

    out = replace(table, value=swap(table.value),
                  columns_map={c: swap(f) for c, f in table.columns_map.items()} if table.columns_map else None,
                  baseline_rows={r: {c: swap(f) for c, f in cols.items()} for r, cols in table.baseline_rows.items()},
                  caption=f"{table.caption} {note}".strip())
    if not changed:
        raise ValueError(f"--accuracy {accuracy}: table {table.key} reads no *test_acc field, so it has no "
                         f"{'best-epoch' if accuracy == 'best' else 'cross-selected'} accuracy to show")
    return out


def regenerate_command(inputs: Sequence[Path | str], table: str | None, out: Path | str,
                       pool: Sequence[str] = (), accuracy: str = "final", paired: bool = False,
                       versus: str | None = None) -> str:
    """The CLI call that rebuilds these files (paths relative to the working directory where possible)."""
    args = ["python", "experiments/summarize.py", *(_display(Path(p)) for p in inputs)]
    args += ["--table", table] if table else []
    args += [a for k in sorted(pool) for a in ("--pool", k)]
    args += ["--accuracy", accuracy] if accuracy != "final" else []
    args += ["--paired"] if paired else []
    args += ["--versus", versus] if versus else []
    args += ["--out", _display(output_stem(out))]
    return shlex.join(args)


def ours_table(runs: Sequence[Run]) -> PaperTable:
    """A table for runs that fill no paper table: rows = methods (split into variants by the config keys that
    differ, as :func:`summarize` does), columns = every numeric metric the finished runs recorded."""
    metrics = sorted({k for run in runs if not run.failed for k, v in (run.result.get("metrics") or {}).items()
                      if isinstance(v, (int, float)) and not isinstance(v, bool)})
    return PaperTable(
        key="ours", caption="No paper table: our runs only (result.json metrics, unscaled).", columns=metrics,
        paper={"": {}}, row=FieldSpec(paths=("method", "scorer")), subtable=None,
        columns_map={m: FieldSpec(paths=(f"metrics.{m}",)) for m in metrics}, column=None, value=None,
        baseline_rows={}, where={}, decimals=4, has_paper=False,
    )


class SummaryRegression(ValueError):
    """Writing a summary would replace one that has finished cells the new one lacks."""


def lost_cells(old_csv: str, new: Summary) -> list[str]:
    """Cells of a summary's CSV with more finished seeds than ``new`` gives them: ``"row | column: n=5 -> n=1"``."""
    new_cells = {(sub, row, col): c for sub, rows in new.cells.items() for row, by_col in rows.items()
                 for col, c in by_col.items()}
    lost = []
    for rec in csv.DictReader(io.StringIO(old_csv)):
        n_old = int(rec.get("n_seeds") or 0)
        c = new_cells.get((rec["subtable"], rec["row"], rec["column"]))
        n_new = c.n if c is not None else 0
        if n_new < n_old:
            now = f"n={n_new}" if n_new else ("not in the new summary" if c is None else c.status)
            name = " / ".join(p for p in (rec["subtable"], rec["row"]) if p)
            lost.append(f"{name} | {rec['column']}: n={n_old} -> {now}")
    return lost


def _check_replace(stem: Path, summary: Summary) -> None:
    old_md, old_csv = Path(f"{stem}.md"), Path(f"{stem}.csv")
    if not old_md.exists() and not old_csv.exists():
        return
    if not old_csv.exists():
        raise SummaryRegression(f"{old_md} exists but {old_csv} does not, so its finished cells cannot be compared "
                                "with the new summary; nothing written (--force replaces it)")
    lost = lost_cells(old_csv.read_text(), summary)
    if lost:
        shown = "\n  ".join(lost[:20]) + (f"\n  ... and {len(lost) - 20} more" if len(lost) > 20 else "")
        raise SummaryRegression(
            f"{old_md} has {len(lost)} cell(s) with more finished seeds than the new summary gives them; nothing "
            f"written:\n  {shown}\n"
            "Pass --force to replace it anyway, or write the new summary elsewhere with --out.")


def write_summary(inputs: Sequence[Path | str], table_key: str | None, out: Path | str,
                  paper_dir: Path | str = PAPER_DIR, *, force: bool = False, provenance: bool = False,
                  pool: Sequence[str] = (), accuracy: str = "final", paired: bool = False,
                  versus: str | None = None) -> tuple[Summary, str]:
    """Summarize ``inputs`` into ``out``.md/.csv/.tex/.png (``.md``/``.csv`` only without a paper table).

    Args:
        inputs: multirun folders (searched recursively) or result.json files.
        table_key: ``<paper>.<table>`` from ``conf/paper``; None = :func:`ours_table`.
        out: output path without suffix.
        paper_dir: folder of the ``<paper>.yaml`` files.
        force: replace an existing summary even where it has finished cells the new one lacks.
        provenance: add the volatile lines (machines, newest result time); for a sweep's own folder.
        pool: config keys whose differences may share a cell (see :func:`summarize`).
        accuracy: ``final`` (the last epoch's test accuracy, the default), ``best`` (the best epoch's, selected
            on the test set: :func:`best_epoch_table`) or ``cross`` (the epoch chosen on one half of the test set,
            read on the other: :func:`accuracy_table`).
        paired: append each row's per-seed gain over the baseline row to the markdown (:func:`paired_markdown`).
        versus: a row name (a control, e.g. ``Random 5% [control, not in the paper]``): append each row's per-seed
            gain over it with McNemar's p (:func:`versus_markdown`); refused before anything is written when the
            summary has no such row.

    Returns:
        The summary and its markdown.

    Raises:
        SummaryRegression: without ``force``, when ``out`` holds a summary with a cell that has more finished
            seeds than the new one gives it (each such cell is named); nothing is written then.
    """
    if accuracy not in ACCURACIES:
        raise ValueError(f"--accuracy {accuracy!r}; expected one of {ACCURACIES}")
    runs = load_runs(inputs)
    table = load_table(table_key, paper_dir) if table_key else ours_table(runs)
    table = accuracy_table(table, accuracy)
    summary = summarize(runs, table, regenerate_command(inputs, table_key, out, pool, accuracy, paired, versus), pool)
    stem = output_stem(out)
    if not force:
        _check_replace(stem, summary)
    md = to_markdown(summary, provenance, paired=paired, versus=versus)  # a bad --versus raises before any write
    stem.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{stem}.md").write_text(md)
    Path(f"{stem}.csv").write_text(to_csv(summary))
    if table.has_paper:
        Path(f"{stem}.tex").write_text(to_latex(summary))
        to_png(summary, f"{stem}.png")
    return summary, md


def list_tables(paper_dir: Path | str = PAPER_DIR) -> list[tuple[str, str]]:
    """``(key, caption)`` of every table in ``conf/paper/*.yaml`` that can be summarized (has an ``ours:`` block)."""
    out = []
    for path in sorted(Path(paper_dir).glob("*.yaml")):
        for name, body in (yaml.safe_load(path.read_text()) or {}).items():
            if isinstance(body, Mapping) and "ours" in body and "columns" in body:
                out.append((f"{path.stem}.{name}", " ".join(str(body.get("caption", "")).split())))
    return out


def output_stem(out: Path | str) -> Path:
    """``multirun_summaries/table1`` (or ``table1.md``) -> the stem the four outputs share; dots in names are kept."""
    out = Path(out)
    return out.with_suffix("") if out.suffix in (".md", ".csv", ".tex", ".png") else out
