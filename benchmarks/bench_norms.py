"""Outlier Gradient L1 / L2 scoring: blockwise float64 row norms (``scoring.outliers.row_norms``, cache-sized blocks
of ~2 MiB) against its earlier 4,096-row blocks and the original whole-matrix
``np.linalg.norm(grads.astype(np.float64), ord, axis=1)``, on the same matrix.

"first call": each variant once in a fresh process (what a pipeline job pays: the whole-matrix form allocates, and
page-faults in, one float64 copy for L2 and two for L1); "warm": best of ``--repeats`` calls in this process.

    python benchmarks/bench_norms.py            # 50,000 x 5,130 float32 (CIFAR-10 last layer), best of 3
    python benchmarks/bench_norms.py --block-sweep   # L1 + L2 seconds per block size, three matrix shapes
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import time

import numpy as np

from gradsift.scoring.outliers import row_norms


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def variants(x: np.ndarray, ord: int) -> dict:
    return {"whole": lambda: np.linalg.norm(x.astype(np.float64), ord=ord, axis=1),
            "rows4096": lambda: row_norms(x, ord, rows=4096),
            "block": lambda: row_norms(x, ord)}


def matrix(n: int, d: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, d), dtype=np.float32)


def first_call(n: int, d: int, ord: int, name: str) -> float:
    """Seconds of one call in a fresh interpreter (the matrix is built before the clock starts)."""
    code = (f"import sys; sys.argv = ['bench_norms', '--n', '{n}', '--d', '{d}', '--cold', '{name}', '--ord', "
            f"'{ord}']; import runpy; runpy.run_path({__file__!r}, run_name='__main__')")
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


SWEEP_SHAPES = ((49_000, 5_130), (200_000, 512), (2_000, 65_536))
SWEEP_MIB = (0.5, 1, 2, 4, 8)


def block_sweep(repeats: int) -> None:
    """Best-of-``repeats`` seconds of L1 + L2 ``row_norms`` per float64 block size, in this process (how the
    default block size was picked), against 4,096-row blocks."""
    print(f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, L1 + L2, best of {repeats}, load average "
          f"{os.getloadavg()[0]:.1f}\n")
    print("| shape | 4,096 rows | " + " | ".join(f"{mib:g} MiB" for mib in SWEEP_MIB) + " |")
    print("|---|---:|" + "---:|" * len(SWEEP_MIB))
    for n, d in SWEEP_SHAPES:
        x = matrix(n, d)
        cells = []
        for rows in (4096, *(max(1, int(mib * 2**20) // (8 * d)) for mib in SWEEP_MIB)):
            cells.append(best_of(lambda: (row_norms(x, 1, rows=rows), row_norms(x, 2, rows=rows)), repeats))
        print(f"| {n:,} x {d:,} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=50_000)
    p.add_argument("--d", type=int, default=5_130)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--block-sweep", action="store_true", help="time L1 + L2 per block size instead (SWEEP_SHAPES)")
    # child process: one timed call
    p.add_argument("--cold", choices=["whole", "rows4096", "block"], help=argparse.SUPPRESS)
    p.add_argument("--ord", type=int, default=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.block_sweep:
        return block_sweep(args.repeats)
    x = matrix(args.n, args.d)
    if args.cold:
        fn = variants(x, args.ord)[args.cold]
        t = time.perf_counter()
        fn()
        print(time.perf_counter() - t)
        return
    print(f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, {args.n:,} x {args.d:,} float32, best of "
          f"{args.repeats}, load average {os.getloadavg()[0]:.1f}\n")
    names = ("whole", "rows4096", "block")
    print("| norm | first call: whole-matrix (s) | first call: 4,096-row blocks (s) | first call: 2 MiB blocks (s) | "
          "speed-up vs whole | warm: whole-matrix (s) | warm: 4,096-row blocks (s) | warm: 2 MiB blocks (s) | "
          "speed-up vs 4,096 rows | bit-equal |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for ord in (1, 2):
        fns = variants(x, ord)
        cold = {name: first_call(args.n, args.d, ord, name) for name in names}
        warm = {name: best_of(fns[name], args.repeats) for name in names}
        ref = fns["whole"]()
        equal = all(np.array_equal(ref, fns[name]()) for name in names[1:])
        print(f"| L{ord} | {cold['whole']:.2f} | {cold['rows4096']:.2f} | {cold['block']:.2f} | "
              f"{cold['whole'] / cold['block']:.1f}x | {warm['whole']:.2f} | {warm['rows4096']:.2f} | "
              f"{warm['block']:.2f} | {warm['rows4096'] / warm['block']:.1f}x | {equal} |")


if __name__ == "__main__":
    main()
