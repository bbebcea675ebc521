"""Console scripts ``gradsift-run`` (one run or a Hydra multirun) and ``gradsift-summarize`` (a paper table).

    gradsift-run scorer=l2 seed=3
    gradsift-run -m experiment=table1_moons
    gradsift-summarize multirun/table1_moons --table oga.table1_synthetic_mlp_moons --out multirun_summaries/table1

``gradsift-run`` composes the packaged configs (``src/gradsift/conf``); add your own config folders with
``hydra.searchpath=[file:///path/to/conf]``. ``experiments/run.py`` and ``experiments/summarize.py`` call the same
functions. ``gradsift-audit`` and ``gradsift-curves`` live in :mod:`gradsift.audit` and :mod:`gradsift.viz.curves`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from gradsift.pipeline import run as run_pipeline
from gradsift.report import print_result
from gradsift.summarize import PAPER_DIR, write_summary


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def run(cfg: DictConfig) -> float:
    """One gradsift run: compose the config, call the pipeline, print the metrics; returns the test accuracy."""
    hc = HydraConfig.get()
    result = run_pipeline(cfg, hc.runtime.output_dir, choices=dict(hc.runtime.choices))
    print_result(result)
    return result.get("metrics", {}).get("test_acc", float("nan"))


def summarize(argv: list[str] | None = None) -> None:
    """Summarize multirun folders (or result.json files) into a paper table: .md, .csv, .tex and .png."""
    parser = argparse.ArgumentParser(prog="gradsift-summarize", description=summarize.__doc__,
                                     epilog="e.g. gradsift-summarize multirun/table1_moons --table "
                                            "oga.table1_synthetic_mlp_moons --out multirun_summaries/table1_synthetic")
    parser.add_argument("inputs", nargs="+", type=Path, help="multirun directories (searched recursively) or result.json files")
    parser.add_argument("--table", required=True, help="dotted table key, e.g. oga.table1_synthetic_mlp_moons")
    parser.add_argument("--out", required=True, type=Path, help="output path without suffix (.md/.csv/.tex/.png are written)")
    parser.add_argument("--papers", type=Path, default=PAPER_DIR,
                        help="folder holding <paper>.yaml (default: the packaged conf/paper)")
    args = parser.parse_args(argv)
    _, md = write_summary(args.inputs, args.table, args.out, args.papers)
    try:
        from rich.console import Console
        from rich.markdown import Markdown

        Console().print(Markdown(md))
    except ImportError:
        print(md)
