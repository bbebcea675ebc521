"""K-FAC and EK-FAC influence (kronfluence's main methods; Grosse et al. 2023) with gradsift's sign.

From Kronecker factors gathered on the engine side (``attribution/kfac.py``):
``score(z_k) = -(mean_j g_ref_j)^T (H + lambda)^-1 g_k``, higher = more detrimental (see ``scoring/influence.py``).

Per covered layer, with the reference gradient as a matrix ``V [out, in]`` and the factors' eigenbases ``Q_A, Q_S``:
``(H + lambda)^-1 V = Q_S ((Q_S^T V Q_A) / (D + lambda)) Q_A^T`` where ``D[o, i] = s_o a_i`` (K-FAC: products of
the factors' eigenvalues) or the eigen-corrected diagonal ``Lambda[o, i]`` (EK-FAC). ``damping``: a float is
kronfluence's ``damping_factor`` (the same for every layer); ``"auto"`` is kronfluence's heuristic
(``damping_factor=None``): ``0.1 * mean(D)`` per layer. For EK-FAC, ``mean(Lambda) = tr(F_l) / d_l``, so ``"auto"``
equals the per-layer ``"auto"`` damping of the other influence scorers (dropout paper App. D.1) when the factors and
the gradients come from the same samples.

Uncompressed gradients (``compressor=identity``) give the exact K-FAC / EK-FAC influence over the covered layers.
Compressed gradients ``c_k = C g_k`` of a linear compressor ``C`` are scored with the preconditioned reference
gradient projected by the same compressor: ``score_k = -(C w)^T c_k``, ``w = (H + lambda)^-1 v`` computed in the full
space from the factors and the full mean reference gradient ``v`` (``factors.reference_gradient``). It is the
Johnson-Lindenstrauss estimate of the full score (``E[C^T C] = I`` for the Gaussian, sparse random and LoGra
projections; ``(r/d) I`` for Dropout, a constant factor that leaves the ranking unchanged), since ``w`` cannot be
recovered from compressed gradients alone. This needs the compressor object the gradients were gathered with
(``inputs.extra["compressor"]``, set up on the uncompressed blocks): a Gaussian projection depends on the device
that drew it, so a rebuilt one would not match.
"""

from __future__ import annotations

import numpy as np
import torch

from gradsift.attribution.kfac import KroneckerFactors, LayerFactors, put_weight_matrix, weight_matrix
from gradsift.scoring.base import ScoringInputs
from gradsift.scoring.influence import InfluenceScorer, matvec


def layer_damping(factors: LayerFactors, diagonal: np.ndarray, damping: float | str) -> float:
    """The damping kronfluence adds: a non-negative float as given, or ``"auto"`` = 0.1 * mean of the diagonal.

    Args:
        factors: the layer (named in errors).
        diagonal: the layer's curvature diagonal in its Kronecker eigenbasis.
        damping: ``"auto"`` or a non-negative float.

    Returns:
        The layer's damping.
    """
    if damping == "auto":
        return 0.1 * float(np.mean(diagonal))
    if isinstance(damping, (int, float)) and not isinstance(damping, bool) and damping >= 0:
        return float(damping)
    raise ValueError(f"scorer.damping must be 'auto' or a non-negative float, got {damping!r}")


def eigen_diagonal(layer: LayerFactors, strategy: str) -> np.ndarray:
    """The curvature's diagonal in the layer's Kronecker eigenbasis, ``[out, in]``: ``s_o a_i`` or EK-FAC's Lambda."""
    if strategy == "kfac":
        return np.outer(layer.s_vals, layer.a_vals)
    if layer.lam is None:
        raise ValueError(f"EK-FAC needs the eigen-corrected diagonal of layer {layer.module!r}, but the factors were "
                         "gathered with strategy='kfac'; gather them with strategy='ekfac' or use scorer=kfac")
    return layer.lam


def precondition(factors: KroneckerFactors, vectors: np.ndarray, damping: float | str,
                 strategy: str = "ekfac") -> np.ndarray:
    """``(H + lambda)^-1 v`` for uncompressed vectors ``[..., d]`` with the block-diagonal (E)K-FAC curvature.

    Args:
        factors: the layers' eigendecomposed factors and the parameter blocks they cover.
        vectors: one or more uncompressed gradient vectors (engine column order).
        damping: ``"auto"`` (kronfluence's heuristic) or a float (kronfluence's ``damping_factor``).
        strategy: ``"kfac"`` or ``"ekfac"``.

    Returns:
        float64 array of the same shape.
    """
    v = np.asarray(vectors, dtype=np.float64)
    if v.shape[-1] != factors.dim:
        raise ValueError(f"the vectors have {v.shape[-1]} columns, the factors cover {factors.dim} parameters")
    out = np.zeros_like(v)
    for layer in factors.layers:
        diag = eigen_diagonal(layer, strategy)
        lam = layer_damping(layer, diag, damping)
        mat = weight_matrix(v, factors, layer)
        rot = layer.s_vecs.T @ mat @ layer.a_vecs
        with np.errstate(divide="ignore"):
            inv = 1.0 / (diag + lam)
        if not np.isfinite(inv).all():
            raise FloatingPointError(f"layer {layer.module!r}: a zero curvature eigenvalue with zero damping; set "
                                     "scorer.damping > 0 or 'auto'")
        put_weight_matrix(out, factors, layer, layer.s_vecs @ (rot * inv) @ layer.a_vecs.T)
    return out


class KFACScorer(InfluenceScorer):
    """K-FAC influence: ``-(v)^T (A kron S + lambda)^-1 g_k`` per covered layer (George et al. 2018 Eq. 3 basis).

    Reads ``inputs.extra["kfac"]`` (:class:`~gradsift.attribution.kfac.KroneckerFactors`); ``needs_kfac`` asks the
    pipeline to gather them with this scorer's ``strategy`` and ``empirical_fisher``.
    """

    display_name = "K-FAC"
    strategy = "kfac"
    needs_kfac = True

    def __init__(self, damping: float | str = "auto", empirical_fisher: bool = False, chunk_size: int = 4096,
                 display_name: str | None = None):
        super().__init__(damping, chunk_size, display_name)
        if not isinstance(empirical_fisher, bool):
            raise ValueError(f"scorer.empirical_fisher must be true or false, got {empirical_fisher!r}")
        self.empirical_fisher = empirical_fisher
        self.compressed: bool | None = None

    def _factors(self, inputs: ScoringInputs) -> KroneckerFactors:
        factors = inputs.extra.get("kfac")
        if not isinstance(factors, KroneckerFactors):
            raise ValueError(f"{type(self).__name__} needs inputs.extra['kfac'] (KroneckerFactors from "
                             "gradsift.attribution.kfac.KroneckerFactorGatherer)")
        if factors.empirical_fisher != self.empirical_fisher:
            raise ValueError(f"scorer.empirical_fisher={self.empirical_fisher} but the factors were gathered with "
                             f"empirical_fisher={factors.empirical_fisher}")
        return factors

    def fit(self, inputs: ScoringInputs) -> "KFACScorer":
        """Precondition the mean reference gradient with the factors and take its dot product with every row.

        Args:
            inputs: training and reference gradients, ``extra["kfac"]`` (and ``extra["compressor"]`` for
                compressed gradients).

        Returns:
            The fitted scorer.
        """
        factors = self._factors(inputs)
        train = inputs.train
        self.compressed = [(b.name, b.size) for b in train.blocks] != [(b.name, b.size) for b in factors.blocks]
        if not self.compressed:
            w = precondition(factors, self._reference(inputs), self.damping, self.strategy)
        else:
            w = self._compressed_direction(inputs, factors)
        self._scores = -matvec(train.grads, w, self.chunk_size)
        return self

    def _compressed_direction(self, inputs: ScoringInputs, factors: KroneckerFactors) -> np.ndarray:
        """``C (H + lambda)^-1 v`` in the compressed space of the training gradients."""
        comp = inputs.extra.get("compressor")
        if comp is None or factors.reference_gradient is None:
            raise ValueError(f"{type(self).__name__}: the training gradients are compressed ({inputs.train.dim} "
                             f"columns, the factors cover {factors.dim} parameters); scoring them needs the full mean "
                             "reference gradient (KroneckerFactorGatherer.gather(..., reference=loader)) and the "
                             "compressor they were gathered with in inputs.extra['compressor'], or use "
                             "compressor=identity")
        stored = inputs.train.meta.get("compressor")
        if stored is not None and stored != comp.state():
            raise ValueError(f"inputs.extra['compressor'] ({comp.state().get('name')}) is not the compressor the "
                             f"training gradients were gathered with ({stored.get('name')})")
        if [(b.name, b.size) for b in comp.in_blocks] != [(b.name, b.size) for b in factors.blocks]:
            raise ValueError("inputs.extra['compressor'] must be set up on the uncompressed blocks the factors cover")
        w = precondition(factors, factors.reference_gradient, self.damping, self.strategy)
        with torch.no_grad():
            wc = comp.compress(torch.as_tensor(w[None], dtype=torch.float32, device=comp.device))
        wc = wc.double().cpu().numpy()[0]
        if wc.shape[0] != inputs.train.dim:
            raise ValueError(f"the compressor maps to {wc.shape[0]} columns, the training gradients have "
                             f"{inputs.train.dim}")
        return wc


class EKFACScorer(KFACScorer):
    """EK-FAC influence, kronfluence's default ``strategy="ekfac"``.

    K-FAC's eigenbasis with the eigen-corrected diagonal ``Lambda`` (George et al. 2018; Grosse et al. 2023 Sec. 2.2).
    """

    display_name = "EK-FAC"
    strategy = "ekfac"


__all__ = ["KFACScorer", "EKFACScorer", "precondition", "eigen_diagonal", "layer_damping"]
