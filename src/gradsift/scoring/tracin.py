"""TracInCP (Pruthi et al. 2020 Eq. 3; dattri's ``TracInAttributor``) over saved checkpoints, with gradsift's sign.

``score(z_k) = -sum_c eta_c (mean_j g_ref_j,c) . g_k,c``, higher = more detrimental. ``eta_c`` is the learning rate
in effect at checkpoint ``c``. With the final model as the only checkpoint and ``eta = 1`` it is Gradient Tracing
(``scoring.influence.GradientTracingScorer``).
"""

from __future__ import annotations

import numpy as np

from gradsift.scoring.base import Scorer, ScoringInputs
from gradsift.scoring.checkpoints import checkpoint_inputs
from gradsift.scoring.influence import matvec, mean_gradient


class TracInCPScorer(Scorer):
    """Learning-rate-weighted sum over checkpoints of the training gradient's dot product with the reference's.

    The checkpoints are ``inputs.extra["checkpoints"]`` (see ``scoring/checkpoints.py``); without them, the final
    model with a learning rate of 1.

    Args:
        chunk_size: rows per float64 block.
        display_name: the table row name.
    """

    display_name = "TracInCP"
    needs_reference = True
    uses_checkpoints = True

    def __init__(self, chunk_size: int = 4096, display_name: str | None = None):
        if chunk_size < 1:
            raise ValueError(f"scorer.chunk_size must be >= 1, got {chunk_size}")
        self.chunk_size = chunk_size
        if display_name:
            self.display_name = display_name
        self._scores: np.ndarray | None = None

    def fit(self, inputs: ScoringInputs) -> "TracInCPScorer":
        """Sum ``-eta_c g_k,c . mean g_ref,c`` over the checkpoints.

        Args:
            inputs: the gradients (and ``extra["checkpoints"]``).

        Returns:
            The fitted scorer.
        """
        scores = np.zeros(inputs.train.n)
        for c in checkpoint_inputs(inputs):
            v = mean_gradient(c.reference.grads, self.chunk_size)
            scores -= c.learning_rate * matvec(c.train.grads, v, self.chunk_size)
        self._scores = scores
        return self

    def score(self) -> np.ndarray:
        """The scores of the last :meth:`fit`."""
        if self._scores is None:
            raise RuntimeError("TracInCPScorer.score() called before fit()")
        return self._scores


__all__ = ["TracInCPScorer"]
