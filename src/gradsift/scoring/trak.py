"""TRAK (Park et al. 2023; MadryLab's ``traker`` 0.3.2) from projected gradients of the margin, with gradsift's sign.

Per checkpoint (or independently trained model) ``c``: ``Phi_c [n, k]`` are the training samples' projected gradients
of TRAK's model output ``f = log(p_y / (1 - p_y))`` (gathered inside ``attribution.model_output.margin_output``),
projected by any gradsift compressor (``GaussianCompressor`` is TRAK's normal JL matrix): the engine's, or this
scorer's ``projector`` applied to the stored gradients at scoring time, so one gradient gather serves every method of a
sweep. ``phi_c`` are the targets' (the reference split's), ``K_c = (Phi_c^T Phi_c + lambda_reg I)^-1`` (its pseudo-inverse where rank-deficient)
scaled by ``1 / mean|K_c|`` (traker's ``BasicScoreComputer``), and ``Q_c = 1 - p_y`` the out-to-loss reweighting of
the training rows. TRAK's score of training sample k for target t (Sec. 3.4, Eq. 16; traker's ``finalize_scores``) is

    tau(t, k) = (1/C sum_c Phi_c K_c phi_{t,c})[k] * (1/C sum_c Q_c)[k],

positive when k raises the target's margin (helps it). gradsift's score is ``-mean_t tau(t, k)``: higher = more
detrimental. traker also divides the projected gradients by sqrt(#parameters), which after the ``1 / mean|K|``
scaling multiplies every score by one constant (and turns its ``lambda_reg`` into ``lambda_reg * #parameters`` of
this class's); rankings are the same.

The projection is what makes the kernel a regression: with as many projected dimensions as training samples,
``Phi (Phi^T Phi)^+ Phi^T`` is the identity and the scores degenerate (measured on two half-moons, 250 samples,
1,218 parameters, final model: LDS -0.12 unprojected, 0.39 at k = 32, 0.11 at k = 128). TRAK used k = 2,048 for CIFAR-10's 50,000
images; keep k well below n.
"""

from __future__ import annotations

import numpy as np

from gradsift.attribution.compressors import Compressor
from gradsift.attribution.model_output import MARGIN
from gradsift.scoring.base import Scorer, ScoringInputs
from gradsift.scoring.checkpoints import CheckpointInputs, checkpoint_inputs
from gradsift.scoring.compressed import compress_gradient_set
from gradsift.scoring.influence import gauss_newton, matvec, mean_gradient


class TRAKScorer(Scorer):
    """TRAK's estimator averaged over the checkpoints in ``inputs.extra["checkpoints"]`` (or the final model).

    ``model_output = "margin"`` asks the pipeline for gradients of TRAK's margin rather than of the loss, for the
    training and the reference split; ``needs_probs`` for ``Q = 1 - p_y`` at each checkpoint.

    Args:
        projector: a compressor applied to the given gradients first (set up here on their blocks, the same matrix
            for every checkpoint); None = use them as gathered.
        lambda_reg: ridge added to ``Phi^T Phi`` (traker's ``lambda_reg`` times #parameters).
        chunk_size: rows per float64 block.
        display_name: the table row name.
    """

    display_name = "TRAK"
    #: relative eigenvalue cutoff of the pseudo-inverse: singular values of float32 gradients below 1e-5 of the
    #: largest are rounding noise
    RCOND = 1e-10
    needs_reference = True
    needs_probs = True
    model_output = MARGIN
    uses_checkpoints = True

    def __init__(self, projector: Compressor | None = None, lambda_reg: float = 0.0, chunk_size: int = 4096,
                 display_name: str | None = None):
        if not (isinstance(lambda_reg, (int, float)) and lambda_reg >= 0):
            raise ValueError(f"scorer.lambda_reg must be a non-negative float, got {lambda_reg!r}")
        if chunk_size < 1:
            raise ValueError(f"scorer.chunk_size must be >= 1, got {chunk_size}")
        self.projector, self.lambda_reg, self.chunk_size = projector, float(lambda_reg), chunk_size
        if display_name:
            self.display_name = display_name
        self._scores: np.ndarray | None = None

    def kernel(self, grads: np.ndarray) -> np.ndarray:
        """``(Phi^T Phi + lambda_reg I)^-1 / mean|.|`` of one checkpoint's projected training gradients.

        A rank-deficient ``Phi^T Phi`` (more projected dimensions than samples, or unprojected margin gradients,
        which do not change when every logit shifts by one constant) gets its pseudo-inverse, the ridgeless limit of
        TRAK's estimator: eigenvalues below ``RCOND`` times the largest count as zero.

        Args:
            grads: ``[n, k]`` projected margin gradients of the training rows.

        Returns:
            float64 ``[k, k]``.
        """
        n, k = grads.shape
        xtx = gauss_newton(grads, chunk_size=self.chunk_size) * n + self.lambda_reg * np.eye(k)
        w, v = np.linalg.eigh(xtx)
        if w.max() <= 0:
            raise ValueError("TRAK's Phi^T Phi is zero: every training gradient is zero")
        keep = w > self.RCOND * w.max()
        inv = (v[:, keep] / w[keep]) @ v[:, keep].T
        return inv / np.abs(inv).mean()

    def fit(self, inputs: ScoringInputs) -> "TRAKScorer":
        """TRAK's scores of the training rows, averaged over the targets and the checkpoints.

        Args:
            inputs: margin gradients and probabilities (and ``extra["checkpoints"]``).

        Returns:
            The fitted scorer.
        """
        ckpts = [self.project(c) for c in checkpoint_inputs(inputs, need_reference=True, need_probs=True)]
        n = inputs.train.n
        labels = np.asarray(inputs.train.labels)
        features, q = np.zeros(n), np.zeros(n)
        for c in ckpts:
            target = mean_gradient(c.reference.grads, self.chunk_size)  # mean_t phi_t: the scores are linear in it
            features += matvec(c.train.grads, self.kernel(c.train.grads) @ target, self.chunk_size)
            q += 1.0 - np.asarray(c.train_probs, dtype=np.float64)[np.arange(n), labels]
        self._scores = -(features / len(ckpts)) * (q / len(ckpts))
        return self

    def project(self, ckpt: CheckpointInputs) -> CheckpointInputs:
        """One checkpoint's gradients through ``projector`` (unchanged without one)."""
        if self.projector is None:
            return ckpt
        if [b.name for b in self.projector.in_blocks] != [b.name for b in ckpt.train.blocks]:
            self.projector.setup(ckpt.train.blocks, "cpu", n_samples=ckpt.train.n)
        return CheckpointInputs(compress_gradient_set(ckpt.train, self.projector),
                                compress_gradient_set(ckpt.reference, self.projector), ckpt.train_probs,
                                ckpt.learning_rate, ckpt.name)

    def score(self) -> np.ndarray:
        """The scores of the last :meth:`fit`."""
        if self._scores is None:
            raise RuntimeError("TRAKScorer.score() called before fit()")
        return self._scores


__all__ = ["TRAKScorer"]
