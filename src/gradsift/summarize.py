"""Turn result.json files into a paper table: paper and ours side by side (markdown, CSV, LaTeX, PNG).

A table is data: ``conf/paper/<paper>.yaml`` holds the paper's numbers and an ``ours:`` block saying which
result.json field fills which row / column / sub-table (see the header of those files). Output is a pure function
of the result files (sorted, no wall-clock time), so regenerating from the same files is byte-identical.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shlex
from dataclasses import dataclass, field
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


def _failure_note(result: Mapping[str, Any]) -> str:
    """First line of the error plus the job's overrides, to find the job again."""
    why = (str(result.get("error") or f"status {result.get('status')}").splitlines() or [""])[0][:200]
    overrides = " ".join(map(str, result.get("overrides") or []))
    return why + (f" (overrides: {overrides})" if overrides else "")


def summarize(runs: Sequence[Run], table: PaperTable, command: str = "") -> Summary:
    """Group runs by (sub-table, row, column) over seeds; paper numbers alongside."""
    cells: dict[str, dict[str, dict[str, Cell]]] = {}
    for sub, rows in table.paper.items():
        for row, (mean, std) in rows.items():
            for i, col in enumerate(table.columns):
                cells.setdefault(sub, {}).setdefault(row, {})[col] = Cell(
                    mean[i], None if std is None else std[i]
                )
    selection: dict[str, set[str]] = {}
    unplaced: list[tuple[str, str]] = []
    ignored = 0
    machines: set[str] = set()
    dates: list[str] = []

    def cell(sub: str, row: str, col: str) -> Cell:
        return cells.setdefault(sub, {}).setdefault(row, {}).setdefault(col, Cell())

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
        if run.failed:
            for sub, row, col, _ in placed:
                cell(sub, row, col).n_failed += 1
            if not placed:
                unplaced.append((run.source, _failure_note(r)))
            continue
        for sub, row, col, value in placed + table.baseline_cells(r):
            if value is not None:
                cell(sub, row, col).per_seed.setdefault(seed, []).append(value)
        if placed:
            rule = str(r.get("selection", "unknown"))
            if lookup(r, "config.retrain") is False:  # scores and AUC only: nothing was trimmed and retrained
                rule = "detection"
            selection.setdefault(rule, set()).add(placed[0][1])
        versions = r.get("versions") or {}
        machine = r.get("machine") or versions.get("machine") or versions.get("device") or versions.get("platform")
        if machine:
            machines.add(str(machine))
        date = r.get("finished_at") or r.get("timestamp") or r.get("date")
        if date:
            dates.append(str(date))

    columns = {}
    for sub, rows in cells.items():
        extra = sorted({c for row in rows.values() for c in row} - set(table.columns))
        columns[sub] = table.columns + extra
    ordered: dict[str, dict[str, dict[str, Cell]]] = {}
    for sub in list(table.paper) + sorted(set(cells) - set(table.paper)):
        known = list(table.paper.get(sub, {}))
        ordered[sub] = {row: cells[sub][row] for row in known + sorted(set(cells[sub]) - set(known))}
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


def header_lines(s: Summary) -> list[str]:
    sel = "; ".join(f"{rule} ({_RULES.get(rule, rule)}): {', '.join(rows)}" for rule, rows in s.selection.items())
    return [
        f"Regenerate: `{s.command}`" if s.command else "Regenerate: (command not recorded)",
        f"Machine: {', '.join(s.machines) or 'not recorded'}",
        f"Newest result: {s.newest or 'not recorded'}",
        f"Selection rule per row: {sel or 'no finished runs'}",
    ]


_RULES = {"budget": "top-k by score within the trim budget", "detector": "the detector's predicted outliers",
          "detection": "no retraining; scores ranked against the noise mask where the labels have one",
          "identification": "every training prompt ranked per test prompt, no trimming"}


def to_markdown(s: Summary) -> str:
    d, n_max = s.table.decimals, _n_max(s)
    out = "\n\n".join(header_lines(s)).splitlines() + ["", f"## {s.table.key}", "", s.table.caption, ""]
    out.append(
        f"ours = mean ± std over seeds (n={n_max} unless noted); Δ = ours − paper; {DAGGER} = ours outside the "
        "paper's mean ± 2 std (only where the paper gives a std)."
    )
    for sub, rows in s.cells.items():
        cols = s.columns[sub]
        out += ["", f"### {sub}", ""] if sub else [""]
        out.append("| Method | " + " | ".join(f"{c} paper | {c} ours | {c} Δ" for c in cols) + " |")
        out.append("|---|" + "---:|" * (3 * len(cols)))
        for row, by_col in rows.items():
            parts = []
            for col in cols:
                c = by_col.get(col, Cell())
                parts += [paper_text(c, d), ours_text(c, d, n_max), delta_text(c, d)]
            out.append(f"| {row} | " + " | ".join(parts) + " |")
    if s.table.notes:
        out += ["", f"Notes: {s.table.notes}"]
    if s.unplaced_failures:
        out += ["", "Failed jobs that could not be placed in a cell:"]
        out += [f"- `{src}`: {err}" for src, err in s.unplaced_failures]
    if s.ignored:
        out += ["", f"{s.ignored} result file(s) did not match this table's filter ({s.table.where}) and were ignored."]
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


def regenerate_command(inputs: Sequence[Path | str], table: str, out: Path | str) -> str:
    """The CLI call that rebuilds these files (paths relative to the working directory where possible)."""
    args = ["python", "experiments/summarize.py", *(_display(Path(p)) for p in inputs), "--table", table,
            "--out", _display(output_stem(out))]
    return shlex.join(args)


def write_summary(inputs: Sequence[Path | str], table_key: str, out: Path | str,
                  paper_dir: Path | str = PAPER_DIR) -> tuple[Summary, str]:
    """Summarize ``inputs`` into ``out``.md/.csv/.tex/.png; returns the summary and its markdown."""
    table = load_table(table_key, paper_dir)
    summary = summarize(load_runs(inputs), table, regenerate_command(inputs, table_key, out))
    stem = output_stem(out)
    stem.parent.mkdir(parents=True, exist_ok=True)
    md = to_markdown(summary)
    Path(f"{stem}.md").write_text(md)
    Path(f"{stem}.csv").write_text(to_csv(summary))
    Path(f"{stem}.tex").write_text(to_latex(summary))
    to_png(summary, f"{stem}.png")
    return summary, md


def output_stem(out: Path | str) -> Path:
    """``multirun_summaries/table1`` (or ``table1.md``) -> the stem the four outputs share; dots in names are kept."""
    out = Path(out)
    return out.with_suffix("") if out.suffix in (".md", ".csv", ".tex", ".png") else out
