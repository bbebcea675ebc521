"""Device side of gradsift.carry: take the pieces this call carried into a store that outlives the call.

    python3 scripts/gpu/assemble_model.py .gpu/carry/mpnet_bf16 /root/gradsift-models/mpnet_bf16

Copies the carried pieces into ``<store>/pieces`` (each checked against the manifest, which every call carries),
prints the pieces still missing and exits 3 while any are; once all are there, rebuilds and checks
``<store>/model`` and prints that path (exit 0). Idempotent: a complete model folder is left as it is. The store
lives only as long as the machine stays warm (about 30 s between calls). Standard library only, and gradsift.carry
is loaded by its path: the package's __init__ needs omegaconf, which a staging call does not carry as a wheel.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

CARRY = Path(__file__).resolve().parents[2] / "src" / "gradsift" / "carry.py"


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__)
        return 2
    spec = importlib.util.spec_from_file_location("gradsift_carry", CARRY)
    carry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(carry)
    model, missing = carry.assemble(sys.argv[1], sys.argv[2])
    if missing:
        print(f"still missing {len(missing)} piece(s): {' '.join(missing)}; carry them in the next call "
              f"(within ~30 s, or the machine starts bare and every piece is needed again)")
        return 3
    print(f"assembled and checked: {model}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
