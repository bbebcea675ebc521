"""The linear datamodeling score (LDS; Park et al. 2023 Def. 2.3, dattri's ``metric.lds``) of attribution scores.

Train models on random subsets ``S_1..S_m`` of the training set (each keeps a seeded ``fraction``), measure their
test losses ``L(S_j)``, and ask how well the scores rank them: with gradsift's sign (higher = more detrimental;
removing ``z_k`` changes the reference loss by about ``-score_k / n``), the loss a subset's model should reach rises
with ``sum_{k in S} score_k``, so

    LDS(t) = Spearman_j( sum_{k in S_j} score_k(t), L_t(S_j) ),

per target ``t`` (a test sample, or the mean test loss for one-score-per-sample scorers). This is dattri's LDS of the
negated scores against the negated losses (dattri scores helpfulness and flips the ground truth to ``-loss``).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import spearmanr


def subset_masks(n: int, n_subsets: int, fraction: float, seed: int) -> np.ndarray:
    """``[n_subsets, n]`` boolean masks, each keeping ``round(fraction * n)`` rows drawn without replacement.

    Args:
        n: number of training rows.
        n_subsets: number of subsets (models to train).
        fraction: the kept fraction, in (0, 1).
        seed: seed of the draw (the same seed gives the same subsets).

    Returns:
        The masks, row j = subset j.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"metric.fraction must be in (0, 1), got {fraction!r}")
    if n_subsets < 2:
        raise ValueError(f"metric.n_subsets must be >= 2 (a rank correlation over subsets), got {n_subsets!r}")
    k = int(round(fraction * n))
    if not 0 < k < n:
        raise ValueError(f"metric.fraction={fraction} keeps {k} of {n} rows; it must keep at least one and drop one")
    rng = np.random.default_rng(seed)
    masks = np.zeros((n_subsets, n), dtype=bool)
    for j in range(n_subsets):
        masks[j, rng.choice(n, size=k, replace=False)] = True
    return masks


def linear_datamodeling_score(scores: np.ndarray, masks: np.ndarray, losses: np.ndarray) -> np.ndarray:
    """Spearman correlation, per target, of the scores summed over each subset with that subset's actual loss.

    Args:
        scores: ``[n]`` (one target) or ``[n, T]`` attribution scores, higher = more detrimental.
        masks: ``[m, n]`` boolean subset masks (:func:`subset_masks`).
        losses: ``[m]`` or ``[m, T]`` losses of the models trained on the subsets, on each target.

    Returns:
        ``[T]`` LDS values (``[1]`` for one target); NaN where a column is constant.
    """
    s = np.asarray(scores, dtype=np.float64)
    s = s[:, None] if s.ndim == 1 else s
    y = np.asarray(losses, dtype=np.float64)
    y = y[:, None] if y.ndim == 1 else y
    m = np.asarray(masks, dtype=bool)
    if m.ndim != 2 or m.shape[1] != s.shape[0]:
        raise ValueError(f"masks must be [n_subsets, n={s.shape[0]}], got shape {m.shape}")
    if y.shape != (m.shape[0], s.shape[1]):
        raise ValueError(f"losses must be [n_subsets={m.shape[0]}, targets={s.shape[1]}], got shape {y.shape}")
    predicted = m.astype(np.float64) @ s
    out = np.full(s.shape[1], np.nan)
    for t in range(s.shape[1]):
        if np.ptp(predicted[:, t]) > 0 and np.ptp(y[:, t]) > 0:
            out[t] = spearmanr(predicted[:, t], y[:, t]).statistic
    return out


class LinearDatamodelingScore:
    """The ``metric=lds`` evaluation of a run's scores: its subsets and the score (``conf/metric/lds.yaml``).

    The pipeline trains one model of the run's recipe per subset (through the retrain cache, so the scorers of a
    sweep share them) and records their clean test losses; the target is the mean test loss, since a trim-flow
    scorer gives one score per training sample.

    Args:
        n_subsets: the number of subsets (models trained).
        fraction: the kept fraction of the training rows per subset.
        seed: the subsets' seed.
    """

    def __init__(self, n_subsets: int = 50, fraction: float = 0.5, seed: int = 0):
        if not 0 < fraction < 1:
            raise ValueError(f"metric.fraction must be in (0, 1), got {fraction!r}")
        if int(n_subsets) < 2:
            raise ValueError(f"metric.n_subsets must be >= 2 (a rank correlation over subsets), got {n_subsets!r}")
        self.n_subsets, self.fraction, self.seed = int(n_subsets), float(fraction), int(seed)

    def masks(self, n: int) -> np.ndarray:
        """The ``[n_subsets, n]`` kept-row masks of ``n`` training rows."""
        return subset_masks(n, self.n_subsets, self.fraction, self.seed)

    def __call__(self, scores: np.ndarray, masks: np.ndarray, losses: np.ndarray) -> float:
        """The LDS of ``scores`` against the subsets' losses (the mean over targets).

        Args:
            scores: ``[n]`` scores of the training rows, higher = more detrimental.
            masks: what :meth:`masks` returned.
            losses: ``[n_subsets]`` test losses of the models trained on the subsets.

        Returns:
            The Spearman correlation (NaN when the scores or the losses are constant).
        """
        values = linear_datamodeling_score(scores, masks, losses)
        return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


__all__ = ["subset_masks", "linear_datamodeling_score", "LinearDatamodelingScore"]
