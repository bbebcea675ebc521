"""``gradsift-summarize`` from a checkout: ``python experiments/summarize.py multirun/x --table ... --out ...``."""

from gradsift.cli import summarize

if __name__ == "__main__":
    summarize()
