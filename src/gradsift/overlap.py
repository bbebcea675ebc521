"""How much the samples that different methods trim have in common: pairwise overlap of the flagged sets.

When several rules each gain about as much over the untrimmed model, the first question is whether they remove the
same samples. This reads the ``flagged`` tables of the runs of one sweep (one base model: the same data, noise and
seed, one job per method) and gives, for every pair of methods, the samples both flag and their Jaccard index; with
each run's ``precision`` (the share of wrong labels among its flagged, from ``result.json``) beside it.

    gradsift-overlap multirun_summaries/runs/gpu_authors/authors_base_*_s1 \\
        --out multirun_summaries/table2_cifar10n_authors_overlap

writes ``<out>.csv`` (sweep, method_a, method_b, n_a, n_b, shared, jaccard), ``<out>.md`` (one matrix per sweep:
samples both flag, Jaccard in brackets) and ``<out>.png`` (one Jaccard heatmap per sweep).
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from gradsift.handoff import FLAGGED_FILES, read_flag_table


def flagged_sets(sweep: str | Path) -> dict[str, tuple[frozenset[int], float | None]]:
    """Per method (``result.json``'s ``method``) of the sweep's finished runs: the set of flagged sample indices and
    the run's ``metrics.precision`` (None where the run has none)."""
    out: dict[str, tuple[frozenset[int], float | None]] = {}
    for res in sorted(Path(sweep).glob("*/result.json")):
        rec = json.loads(res.read_text())
        files = [res.parent / name for name in FLAGGED_FILES if (res.parent / name).exists()]
        if rec.get("status") != "ok" or not files:
            continue
        table = read_flag_table(files[0])
        method = str(rec.get("method", res.parent.name))
        if method in out:
            raise ValueError(f"{sweep}: two runs of {method!r}; give one sweep (one base model) per folder")
        precision = (rec.get("metrics") or {}).get("precision")
        out[method] = (frozenset(table.loc[table["flagged"].astype(bool), "index"].astype(int)),
                       None if precision is None else float(precision))
    if not out:
        raise ValueError(f"{sweep}: no finished run with a flagged.csv / flagged.npz below it")
    return out


def read_sweeps(sweeps: Sequence[str | Path]) -> dict[str, dict[str, tuple[frozenset[int], float | None]]]:
    """:func:`flagged_sets` of each sweep, keyed by the sweep folder's name (each folder read once)."""
    return {Path(sweep).name: flagged_sets(sweep) for sweep in sweeps}


def overlap_table(by_sweep: dict[str, dict[str, tuple[frozenset[int], float | None]]]) -> pd.DataFrame:
    """One row per sweep of :func:`read_sweeps` and pair of methods: ``n_a``, ``n_b`` flagged, ``shared`` (flagged
    by both) and ``jaccard`` (shared / flagged by either; 0 where neither flags anything)."""
    rows = []
    for name, sets in by_sweep.items():
        for a, b in itertools.combinations(sorted(sets), 2):
            (sa, _), (sb, _) = sets[a], sets[b]
            union = len(sa | sb)
            rows.append({"sweep": name, "method_a": a, "method_b": b, "n_a": len(sa), "n_b": len(sb),
                         "shared": len(sa & sb), "jaccard": len(sa & sb) / union if union else 0.0})
    return pd.DataFrame(rows, columns=["sweep", "method_a", "method_b", "n_a", "n_b", "shared", "jaccard"])


def _matrix(df: pd.DataFrame, sweep: str, value: str) -> pd.DataFrame:
    part = df[df["sweep"] == sweep]
    methods = sorted(set(part["method_a"]) | set(part["method_b"]))
    m = pd.DataFrame(np.nan, index=methods, columns=methods)
    for r in part.itertuples():
        m.loc[r.method_a, r.method_b] = m.loc[r.method_b, r.method_a] = getattr(r, value)
    return m


def to_markdown(df: pd.DataFrame, by_sweep: dict[str, dict[str, tuple[frozenset[int], float | None]]],
                command: str) -> str:
    """One matrix per sweep: samples both methods flag, with the Jaccard index in brackets; each method's
    precision (share of wrong labels among its flagged) in the first column."""
    out = ["# Overlap of the trimmed sets", "", f"`{command}`", "",
           "Per pair of methods: training samples both flag, (Jaccard index = both / either). Precision: the share of "
           "wrong labels among a method's flagged samples (its run's `metrics.precision`).", ""]
    for name, sets in by_sweep.items():
        shared, jac = _matrix(df, name, "shared"), _matrix(df, name, "jaccard")
        methods = list(shared.index)
        out += [f"## {name}", "", "| method | flagged | precision | " + " | ".join(f"({i + 1})" for i in
                                                                               range(len(methods))) + " |",
                "|---|---:|---:|" + "---:|" * len(methods)]
        for i, a in enumerate(methods):
            s, p = sets[a]
            cells = ["—" if a == b else f"{int(shared.loc[a, b])} ({jac.loc[a, b]:.2f})" for b in methods]
            out.append(f"| ({i + 1}) {a} | {len(s)} | {'—' if p is None else f'{p:.3f}'} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def plot(df: pd.DataFrame, names: Sequence[str], path: str | Path) -> Path:
    """One Jaccard heatmap per sweep, methods numbered as in the markdown."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gradsift.viz import save_figure

    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names) + 1.6, 3.8), squeeze=False)
    for n, (ax, name) in enumerate(zip(axes[0], names)):
        jac = _matrix(df, name, "jaccard")
        shown = jac.to_numpy(copy=True)
        np.fill_diagonal(shown, 1.0)
        ax.imshow(shown, vmin=0, vmax=1, cmap="viridis")
        k = len(jac)
        ax.set_xticks(range(k), [f"({i + 1})" for i in range(k)])
        # the first panel names the methods (without their bracketed variant), the others number them
        ax.set_yticks(range(k), [f"({i + 1}) {m.split(' [')[0]}" if n == 0 else f"({i + 1})"
                                 for i, m in enumerate(jac.index)], fontsize=7)
        for i in range(k):
            for j in range(k):
                if i != j:
                    ax.text(j, i, f"{shown[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if shown[i, j] < 0.5 else "black")
        ax.set_title(name, fontsize=9)
    fig.suptitle("Jaccard index of the flagged sets (shared / either)", fontsize=10)
    return save_figure(fig, Path(path), dpi=130, reproducible=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sweeps", nargs="+", help="sweep folders, each one base model's runs (one job per method)")
    p.add_argument("--out", required=True, help="output stem (.csv, .md and .png are written)")
    args = p.parse_args(argv)
    by_sweep = read_sweeps(args.sweeps)
    df = overlap_table(by_sweep)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out.with_suffix(".csv"), index=False, float_format="%.4f")
    command = "python -m gradsift.overlap " + " ".join(args.sweeps) + f" --out {args.out}"
    md = to_markdown(df, by_sweep, command)
    out.with_suffix(".md").write_text(md + "\n")
    plot(df, list(by_sweep), out.with_suffix(".png"))
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
