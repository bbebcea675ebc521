"""Paired comparison of two classifiers on one test set: which test samples each gets right, and McNemar's test.

A trim-retrain run's model and the untrimmed model of the same seed are scored on the same test images, so their
accuracy difference has a much smaller standard error than two independent accuracies would: only the samples on
which they disagree carry information about it. Each fit records which test samples it classifies correctly
(``correct``, ``best_correct``, ``cross_correct``: :func:`gradsift.training.with_best_epoch`), ordered by the test
sample ``index``, as :func:`pack` strings; the pipeline turns the retrained model's and the base model's vectors into
:func:`paired_test` (``metrics.test_vs_base``, ``test_best_vs_base``, ``test_cross_vs_base``), and
``gradsift-summarize --paired`` prints the per-seed p-values beside the gains.

Two retrained models compare the same way (``gradsift-paired A B``: a trimming rule against the random-5% control of
the same seed, say): :func:`compare_runs` tests B against A at the final, best and cross-selected epochs.

The test is McNemar's exact (binomial) test on the discordant pairs (McNemar 1947; the exact form as in
``statsmodels.stats.contingency_tables.mcnemar(exact=True)``), computed with :func:`scipy.stats.binomtest`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

#: prefix of a packed vector, so that a reader can tell the format: ``bits1:<n>:<base64 of np.packbits>``
_TAG = "bits1"


def pack(correct: np.ndarray) -> str:
    """A boolean vector as ``bits1:<n>:<base64>`` (``np.packbits``, 1 bit per sample: 10,000 test images -> 1.7 kB)."""
    bits = np.asarray(correct, dtype=bool).ravel()
    return f"{_TAG}:{bits.size}:{base64.b64encode(np.packbits(bits).tobytes()).decode('ascii')}"


def unpack(packed: str) -> np.ndarray:
    """The boolean vector of :func:`pack`."""
    tag, n, data = str(packed).split(":", 2)
    if tag != _TAG:
        raise ValueError(f"packed correctness vector: expected the '{_TAG}:<n>:<base64>' format, got {packed[:20]!r}")
    return np.unpackbits(np.frombuffer(base64.b64decode(data), dtype=np.uint8), count=int(n)).astype(bool)


def paired_test(base: np.ndarray, other: np.ndarray) -> dict[str, float | int]:
    """McNemar's exact test of ``other`` against ``base``, two classifiers' correctness on the same test samples.

    Args:
        base: bool per test sample, True where the baseline (untrimmed) model is right.
        other: the same for the compared (retrained) model, same samples in the same order.

    Returns:
        ``n`` samples; ``gain`` = accuracy of ``other`` minus that of ``base`` (a fraction); ``only_base`` /
        ``only_other``: samples only one of them gets right (the discordant pairs); ``se``: the standard error of
        ``gain`` over test samples, paired (``sqrt(b + c - (c - b)^2 / n) / n``); ``p``: McNemar's exact two-sided
        p-value, the binomial test of ``only_other`` out of ``only_base + only_other`` at 1/2 (1.0 without discordant
        pairs).
    """
    from scipy.stats import binomtest

    base, other = np.asarray(base, dtype=bool), np.asarray(other, dtype=bool)
    if base.shape != other.shape:
        raise ValueError(f"paired_test: the two correctness vectors differ in length ({base.size} vs {other.size}): "
                         "they must come from the same test set")
    n = int(base.size)
    b, c = int((base & ~other).sum()), int((other & ~base).sum())
    p = float(binomtest(c, b + c, 0.5).pvalue) if b + c else 1.0
    se = float(np.sqrt(max(b + c - (c - b) ** 2 / n, 0.0)) / n) if n else float("nan")
    return {"n": n, "gain": (c - b) / n if n else float("nan"), "only_base": b, "only_other": c, "se": se, "p": p}


def packed_test(base: str, other: str) -> dict[str, float | int] | None:
    """:func:`paired_test` of two :func:`pack`-ed vectors; None where their lengths differ (different test sets)."""
    a, b = unpack(base), unpack(other)
    return paired_test(a, b) if a.size == b.size else None


#: correctness keys of a fit's test metrics: final epoch, best epoch, cross-selected epoch
KINDS = ("correct", "best_correct", "cross_correct")


def versus_base(metrics: Mapping[str, object]) -> dict[str, dict]:
    """``test_<kind>vs_base`` entries for a run's metrics holding both ``test_<kind>correct`` and
    ``base_test_<kind>correct`` (``kind`` = "", "best_", "cross_"): :func:`paired_test` of the retrained model against
    the base model. Vectors of different lengths (different test sets) give no entry.

    The cross-selected ``gain`` is the difference of the pooled accuracies of the two ``cross_correct`` vectors;
    ``cross_acc`` averages the two halves' accuracies instead. They agree when the even- and odd-index halves are
    the same size (CIFAR-10's 10,000 test images: 5,000 each) and differ slightly otherwise."""
    out = {}
    for key in KINDS:
        mine, theirs = metrics.get(f"test_{key}"), metrics.get(f"base_test_{key}")
        if isinstance(mine, str) and isinstance(theirs, str) and (test := packed_test(theirs, mine)) is not None:
            out[f"test_{key.removesuffix('correct')}vs_base"] = test
    return out


def _record(path: str | Path) -> tuple[Path, dict]:
    """The ``result.json`` of a run folder (or of the one run below a sweep folder) and its record."""
    path = Path(path)
    files = [path] if path.is_file() else [path / "result.json"] if (path / "result.json").exists() else \
        sorted(path.rglob("result.json"))
    if len(files) != 1:
        raise FileNotFoundError(f"{path}: expected one run (a result.json, or a folder with one below it), found "
                                f"{len(files)}")
    return files[0], json.loads(files[0].read_text())


def compare_runs(a: str | Path, b: str | Path) -> dict[str, dict]:
    """:func:`paired_test` of run ``b``'s retrained model against run ``a``'s, per epoch kind.

    Args:
        a, b: run folders (or their ``result.json``), each recording ``metrics.test_<kind>correct``.

    Returns:
        ``{"final" | "best" | "cross": paired_test(...)}`` for the kinds both runs record.

    Raises:
        ValueError: the runs share no kind (a run from before the vectors were recorded), or their vectors differ in
            length (different test sets).
    """
    (fa, ra), (fb, rb) = _record(a), _record(b)
    out = {}
    for key, name in zip(KINDS, ("final", "best", "cross")):
        va, vb = ra.get("metrics", {}).get(f"test_{key}"), rb.get("metrics", {}).get(f"test_{key}")
        if isinstance(va, str) and isinstance(vb, str):
            if (test := packed_test(va, vb)) is None:
                raise ValueError(f"{fa} and {fb}: {unpack(va).size} vs {unpack(vb).size} test samples; they must "
                                 "share one test set")
            out[name] = test
    if not out:
        raise ValueError(f"{fa} and {fb}: no metrics.test_correct / test_best_correct / test_cross_correct in both "
                         "(runs before the per-image correctness was recorded cannot be paired)")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``gradsift-paired A B [B ...]``: each B's retrained model against A's, McNemar's exact test per epoch kind."""
    import argparse

    p = argparse.ArgumentParser(prog="gradsift-paired", description=main.__doc__.split(": ", 1)[1])
    p.add_argument("a", help="the reference run's folder (e.g. the random-5%% control)")
    p.add_argument("b", nargs="+", help="the compared runs' folders")
    args = p.parse_args(argv)
    _, ra = _record(args.a)
    print(f"against {ra.get('method')} (seed {ra.get('seed')}): gain in points, discordant test images "
          "(only A right / only B right), paired standard error, McNemar's exact p")
    rc = 0
    for b in args.b:
        _, rb = _record(b)
        note = "" if rb.get("seed") == ra.get("seed") else f" (seed {rb.get('seed')}: not the same seed)"
        print(f"{rb.get('method')}{note}")
        try:
            tests = compare_runs(args.a, b)
        except ValueError as e:  # the other runs are still compared
            print(f"  not paired: {e}")
            rc = 1
            continue
        for kind, t in tests.items():
            print(f"  {kind:5s} {100 * t['gain']:+.2f} ({t['only_base']} / {t['only_other']}), se {100 * t['se']:.2f}, "
                  f"p {t['p']:.2g}")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
