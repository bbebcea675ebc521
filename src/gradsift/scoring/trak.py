"""TRAK (Park et al. 2023; MadryLab's ``traker`` 0.3.2) from projected gradients of the margin, with gradsift's sign.

Per checkpoint (or independently trained model) ``c``: ``Phi_c [n, k]`` are the training samples' projected gradients
of TRAK's model output ``f = log(p_y / (1 - p_y))`` (gathered inside ``attribution.model_output.margin_output``; any
gradsift compressor is the projection, ``compressor=gaussian`` is TRAK's normal JL matrix), ``phi_c`` the targets'
(the reference split's), ``K_c = (Phi_c^T Phi_c + lambda_reg I)^-1`` scaled by ``1 / mean|K_c|`` (traker's
``BasicScoreComputer``), and ``Q_c = 1 - p_y`` the out-to-loss reweighting of the training rows. TRAK's score of
training sample k for target t (Sec. 3.4, Eq. 16; traker's ``finalize_scores``) is

    tau(t, k) = (1/C sum_c Phi_c K_c phi_{t,c})[k] * (1/C sum_c Q_c)[k],

positive when k raises the target's margin (helps it). gradsift's score is ``-mean_t tau(t, k)``: higher = more
detrimental. traker also divides the projected gradients by sqrt(#parameters), which after the ``1 / mean|K|``
scaling multiplies every score by one constant (and turns its ``lambda_reg`` into ``lambda_reg * #parameters`` of
this class's); rankings are the same.
"""

from __future__ import annotations

import numpy as np

from gradsift.attribution.model_output import MARGIN
from gradsift.scoring.base import Scorer, ScoringInputs
from gradsift.scoring.checkpoints import checkpoint_inputs
from gradsift.scoring.influence import _matvec, gauss_newton, mean_gradient


class TRAKScorer(Scorer):
    """TRAK's estimator averaged over the checkpoints in ``inputs.extra["checkpoints"]`` (or the final model).

    ``model_output = "margin"`` asks the pipeline for gradients of TRAK's margin rather than of the loss, for the
    training and the reference split; ``needs_probs`` for ``Q = 1 - p_y`` at each checkpoint.
    """

    display_name = "TRAK"
    needs_val = True
    needs_probs = True
    model_output = MARGIN

    def __init__(self, lambda_reg: float = 0.0, chunk_size: int = 4096, display_name: str | None = None):
        if not (isinstance(lambda_reg, (int, float)) and lambda_reg >= 0):
            raise ValueError(f"scorer.lambda_reg must be a non-negative float, got {lambda_reg!r}")
        if chunk_size < 1:
            raise ValueError(f"scorer.chunk_size must be >= 1, got {chunk_size}")
        self.lambda_reg, self.chunk_size = float(lambda_reg), chunk_size
        if display_name:
            self.display_name = display_name
        self._scores: np.ndarray | None = None

    def kernel(self, grads: np.ndarray) -> np.ndarray:
        """``(Phi^T Phi + lambda_reg I)^-1 / mean|.|`` of one checkpoint's projected training gradients."""
        n, k = grads.shape
        if k > n and self.lambda_reg == 0:
            raise ValueError(f"TRAK's kernel (Phi^T Phi)^-1 is singular with k={k} projected dimensions and n={n} "
                             "training samples: set scorer.lambda_reg > 0 or compressor.r below n")
        xtx = gauss_newton(grads, chunk_size=self.chunk_size) * n + self.lambda_reg * np.eye(k)
        w, v = np.linalg.eigh(xtx)
        if w.min() <= 1e-12 * max(w.max(), 0.0) or w.max() <= 0:
            raise ValueError(f"TRAK's Phi^T Phi is singular (condition number {w.max() / max(w.min(), 1e-300):.1e}; "
                             "e.g. uncompressed margin gradients, which are invariant to shifting all logits): set "
                             "scorer.lambda_reg > 0 or project (compressor=gaussian)")
        inv = (v / w) @ v.T
        return inv / np.abs(inv).mean()

    def fit(self, inputs: ScoringInputs) -> "TRAKScorer":
        ckpts = checkpoint_inputs(inputs, need_reference=True, need_probs=True)
        n = inputs.train.n
        labels = np.asarray(inputs.train.labels)
        features, q = np.zeros(n), np.zeros(n)
        for c in ckpts:
            target = mean_gradient(c.reference.grads, self.chunk_size)  # mean_t phi_t: the scores are linear in it
            features += _matvec(c.train.grads, self.kernel(c.train.grads) @ target, self.chunk_size)
            q += 1.0 - np.asarray(c.train_probs, dtype=np.float64)[np.arange(n), labels]
        self._scores = -(features / len(ckpts)) * (q / len(ckpts))
        return self

    def score(self) -> np.ndarray:
        if self._scores is None:
            raise RuntimeError("TRAKScorer.score() called before fit()")
        return self._scores


__all__ = ["TRAKScorer"]
