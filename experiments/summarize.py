"""Summarize a multirun directory (or result.json files) into a paper table: .md, .csv, .tex and .png.

    python experiments/summarize.py multirun/table1_moons --table oga.table1_synthetic_mlp_moons \
        --out multirun_summaries/table1_synthetic
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gradsift.summarize import PAPER_DIR, write_summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", type=Path, help="multirun directories (searched recursively) or result.json files")
    parser.add_argument("--table", required=True, help="dotted table key, e.g. oga.table1_synthetic_mlp_moons")
    parser.add_argument("--out", required=True, type=Path, help="output path without suffix (.md/.csv/.tex/.png are written)")
    parser.add_argument("--papers", type=Path, default=PAPER_DIR, help="folder holding <paper>.yaml (default: conf/paper)")
    args = parser.parse_args(argv)
    _, md = write_summary(args.inputs, args.table, args.out, args.papers)
    try:
        from rich.console import Console
        from rich.markdown import Markdown

        Console().print(Markdown(md))
    except ImportError:
        print(md)


if __name__ == "__main__":
    main()
