"""``gradsift-run`` from a checkout: ``python experiments/run.py scorer=l2 seed=3`` (see gradsift.cli)."""

from gradsift.cli import run

if __name__ == "__main__":
    run()
