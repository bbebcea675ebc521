"""Console scripts ``gradsift-run`` (one run or a Hydra multirun) and ``gradsift-summarize`` (a paper table).

    gradsift-run scorer=l2 seed=3
    gradsift-run -m experiment=table1_moons
    gradsift-summarize multirun/table1_moons --table oga.table1_synthetic_mlp_moons --out multirun_summaries/table1

``gradsift-run`` composes the packaged configs (``src/gradsift/conf``); add a config folder of your own with
``--config-dir path/to/conf`` (Hydra's option) or ``hydra.searchpath=[file:///path/to/conf]``: its ``data/``,
``model/`` ... files become options of those groups. ``experiments/run.py`` and ``experiments/summarize.py`` call the same
functions. ``gradsift-audit`` and ``gradsift-curves`` live in :mod:`gradsift.audit` and :mod:`gradsift.viz.curves`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from omegaconf import DictConfig

from gradsift.data.base import MissingInputError
from gradsift.pipeline import run as run_pipeline
from gradsift.report import console, job_line, print_result
from gradsift.summarize import ACCURACIES, PAPER_DIR, SummaryRegression, list_tables, write_summary


class InputError(CompactHydraException):
    """A sweep job's missing input: Hydra reports it as its one-line message when the sweep ends."""


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def run(cfg: DictConfig) -> float:
    """One gradsift run: compose the config, call the pipeline, print the metrics (a table, or one line per job of a
    sweep) and where the run wrote; returns the test accuracy."""
    hc = HydraConfig.get()
    output_dir = hc.runtime.output_dir
    try:
        result = run_pipeline(cfg, output_dir, choices=dict(hc.runtime.choices))
    except MissingInputError as e:  # result.json has the traceback; the console gets one line
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        if hc.mode == RunMode.MULTIRUN:  # the job fails, the sweep goes on and lists it at the end
            raise InputError(f"gradsift-run: {e}") from e
        sys.exit(f"gradsift-run: {e}")
    shown = os.path.relpath(output_dir) if not os.path.relpath(output_dir).startswith("..") else output_dir
    if hc.mode == RunMode.MULTIRUN:
        print(job_line(result, shown), flush=True)
    else:
        print_result(result)
        files = ", ".join(sorted(p.name for p in Path(output_dir).iterdir() if p.is_file()))
        print(job_line(result, shown) if result.get("skipped") else f"wrote {shown} ({files})", flush=True)
    return result.get("metrics", {}).get("test_acc", float("nan"))


def _tables_epilog() -> str:
    rows = [f"  {key}" + (f"\n      {caption[:110]}{'...' if len(caption) > 110 else ''}" if caption else "")
            for key, caption in list_tables()]
    return "tables (--table, from conf/paper/*.yaml):\n" + "\n".join(rows)


def summarize(argv: list[str] | None = None) -> None:
    """Summarize multirun folders (or result.json files) into a paper table: .md, .csv, .tex and .png.

    Without ``--table``: a plain table of our runs (rows = methods, split by the config keys that differ; columns = the
    metrics), .md and .csv. Runs that differ in a config key other than the seed never share a cell (``--pool KEY``
    lets them). An existing summary at ``--out`` is replaced only when the new one has every finished cell it has, with
    at least as many seeds (``--force`` replaces it anyway): a killed or partly failed sweep cannot overwrite a better
    table.
    """
    parser = argparse.ArgumentParser(prog="gradsift-summarize", description=summarize.__doc__, epilog=_tables_epilog(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", type=Path, help="multirun directories (searched recursively) or result.json files")
    parser.add_argument("--table", help="dotted table key (listed below); omit for a table of our runs only")
    parser.add_argument("--out", required=True, type=Path, help="output path without suffix (.md/.csv/.tex/.png are written)")
    parser.add_argument("--papers", type=Path, default=PAPER_DIR,
                        help="folder holding <paper>.yaml (default: the packaged conf/paper)")
    parser.add_argument("--force", action="store_true", help="replace an existing summary even if it loses finished cells")
    parser.add_argument("--pool", action="append", default=[], metavar="KEY",
                        help="config key whose differences may share a cell (repeatable), e.g. trainer.precision")
    parser.add_argument("--accuracy", choices=ACCURACIES, default="final",
                        help="final: the last epoch's test accuracy; best: the best epoch's (runs with "
                             "eval_every_epoch=true), SELECTED ON THE TEST SET as the OGA authors' np.max, and "
                             "marked so in the caption; cross: the epoch chosen on one half of the test images and "
                             "read on the other, both ways averaged (early stopping without test-set selection)")
    parser.add_argument("--paired", action="store_true",
                        help="append each row's per-seed gain over the table's baseline row (e.g. Cross Entropy, the "
                             "untrimmed model of the same seed), the paper's gain and at how many seeds it is ahead")
    parser.add_argument("--versus", metavar="ROW",
                        help="append each row's per-seed gain over this row (a control, e.g. 'Random 5%% [control, "
                             "not in the paper]'), with McNemar's exact p where both runs record their per-sample "
                             "correctness")
    args = parser.parse_args(argv)
    try:
        _, md = write_summary(args.inputs, args.table, args.out, args.papers, force=args.force, pool=args.pool,
                              accuracy=args.accuracy, paired=args.paired, versus=args.versus)
    except (SummaryRegression, ValueError) as e:
        sys.exit(f"gradsift-summarize: {e}")
    if not sys.stdout.isatty():  # a log file gets the markdown itself, uncut
        print(md, end="")
        return
    from rich.markdown import Markdown

    console().print(Markdown(md))
