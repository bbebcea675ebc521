"""The influence-function family, computed from gradients the engine already gathered.

OGA paper Sec. 3.1 and Table 1; dropout paper Sec. 2, 3 and Appendix B.

Sign (every scorer here): ``score(z_k) = I(z_k) = -(mean_j g_ref_j)^T (H + Lambda)^-1 g_k`` (Eq. 1 of the dropout
paper, after Koh & Liang 2017). Upweighting z_k by eps changes the reference loss by eps * I(z_k), so removing it
(eps = -1/n) changes the reference loss by about ``-(1/n) I(z_k) = +(1/n) g_ref^T (H + Lambda)^-1 g_k``: a sample
whose removal would LOWER the reference loss has a large I(z_k) and scores HIGH (= more detrimental, as every
scorer). The reference gradients are ``inputs.reference``: validation (or test) gradients, or the training gradients
themselves when the experiment uses the training set as reference (the OGA synthetic experiment). Self-influence scores are
``g_k^T (H + Lambda)^-1 g_k`` (higher = more suspicious; Bejan et al. 2023) and need no reference.

``H`` is either ``"gauss_newton"`` (alias ``"fisher"``): ``(1/n) G^T G`` of the training gradients (the empirical
Fisher / Gauss-Newton Hessian of cross entropy, dropout paper Sec. 2.1), or ``"exact"``: the loss Hessian of the
chosen parameters that the attributor puts in ``inputs.extra["hessian"]`` (``attribution/hessian.py``).
``Lambda`` is a per-block (per-layer) damping: ``"auto"`` gives ``lambda_l = 0.1 * mean_i ||g_l(z_i)||^2 / d_l``
(dropout paper Appendix D.1), a float gives the same lambda to every block. Dense algebra runs in float64 over
row chunks of the (possibly memory-mapped) gradient matrix.

The OGA authors' code (DataInf's ``IFEngine``, ``ykwon0407/DataInf`` ``src/influence.py``, which their scripts import)
differs from the textbook methods in three places, each a switch here (defaults = the textbook methods):

- ``LiSSAScorer(variant="datainf_code")``: DataInf's recursion ``r <- v + r - ((1/n) G^T G r - lambda r)``, 10
  iterations, no scale (``influence.py`` ``compute_hvp_LiSSA``, ``alpha_const=1``). Its fixed point is
  ``(H - lambda I)^-1 v``: the damping enters with a minus sign.
- ``SelfLiSSAScorer`` / ``SelfDataInfScorer(hessian_from="sample")``: one engine per sample, so H, lambda and v all
  come from that sample's gradient alone (OGA ``nlp/ROBERTA_SELECTION_1_LATEST.py:150-178``). Computed in float32 as
  the authors' torch code. Per-sample Self-DataInf is then the constant ``10 d / (10 d + 1)`` (damping ``auto``), so
  its order, and what a budget trims, comes from float32 rounding and the stable sort's tie-break: an arbitrary
  subset. Per-sample Self-LiSSA is ``(1 - c^(depth+1)) / (1 - 1/(10 d))`` with ``c = 1 - ||g||^2 (1 - 1/(10 d))``
  (``variant="datainf_code"``), increasing in ``||g||^2``: the L2-norm ranking, except where float32 rounds
  ``c^(depth+1)`` away (``||g||^2`` near 1: the scores there are flat at ``1 / (1 - 1/(10 d))``).
- ``ExactInfluenceScorer(datainf_reshape_bug=True)``: DataInf's ``compute_hvp_accurate`` reshapes the inverse-HVP
  of a 1-D gradient tensor to ``(d, 1)``, and ``compute_IF``'s ``torch.sum(hvp * g)`` then broadcasts it against the
  ``(d,)`` gradient into a ``d x d`` outer product: ``IF = -(sum_j h_j)(sum_j g_j)`` per block instead of ``-h . g``
  (the OGA synthetic script passes 1-D gradients, ``synthetic/BASELINES_INFLUENCE_TOY_MLP.py:144``). Its "exact"
  Hessian is ``(1/n) G^T G + lambda I`` (``hessian="gauss_newton"``), not the loss Hessian.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch

from gradsift.attribution.gradient_set import Block, GradientSet
from gradsift.scoring.base import Scorer, ScoringInputs, compute_device

HESSIANS = ("gauss_newton", "fisher", "exact")
#: LiSSA recursions: the textbook one (+damping, scaled) and DataInf's code (-damping, no scale)
LISSA_VARIANTS = ("standard", "datainf_code")
#: where self-influence takes its Hessian and damping: the training set, or the scored sample's gradient alone
HESSIAN_FROM = ("train", "sample")


# -- small float64 building blocks ------------------------------------------------------------------------------

def _chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def _rows(grads: np.ndarray, sl: slice, cols: slice = slice(None)) -> np.ndarray:
    return np.asarray(grads[sl, cols], dtype=np.float64)


def mean_gradient(grads: np.ndarray, chunk_size: int = 4096) -> np.ndarray:
    """Mean row of ``grads`` in float64 (the ``v`` of Eq. 1 when ``grads`` are the reference gradients)."""
    total = np.zeros(grads.shape[1])
    for sl in _chunks(grads.shape[0], chunk_size):
        total += _rows(grads, sl).sum(axis=0)
    return total / grads.shape[0]


def block_damping(grads: np.ndarray, blocks: list[Block], damping: float | str, chunk_size: int = 4096) -> np.ndarray:
    """One damping per block: ``"auto"`` = 0.1 * mean_i ||g_l(z_i)||^2 / d_l (dropout paper App. D.1), or a float."""
    if damping == "auto":
        sq = np.zeros(len(blocks))
        for sl in _chunks(grads.shape[0], chunk_size):
            g = _rows(grads, sl)
            sq += [np.einsum("ij,ij->", g[:, b.start:b.stop], g[:, b.start:b.stop]) for b in blocks]
        lam = 0.1 * sq / grads.shape[0] / np.array([b.size for b in blocks])
        if (lam <= 0).any():
            zero = [b.name for b, v in zip(blocks, lam) if v <= 0]
            raise ValueError(f"scorer.damping='auto' is 0 for blocks {zero} (all-zero gradients); set scorer.damping "
                             "to a positive float")
        return lam
    if isinstance(damping, (int, float)) and not isinstance(damping, bool) and damping >= 0:
        return np.full(len(blocks), float(damping))
    raise ValueError(f"scorer.damping must be 'auto' or a non-negative float, got {damping!r}")


def gauss_newton(grads: np.ndarray, cols: slice = slice(None), chunk_size: int = 4096) -> np.ndarray:
    """``(1/n) G^T G`` of the columns ``cols``: the Gauss-Newton / empirical Fisher Hessian (dropout paper Sec. 2.1)."""
    d = len(range(*cols.indices(grads.shape[1])))
    h = np.zeros((d, d))
    for sl in _chunks(grads.shape[0], chunk_size):
        g = _rows(grads, sl, cols)
        h += g.T @ g
    return h / grads.shape[0]


def row_quadratic_forms(grads: np.ndarray, q: np.ndarray, cols: slice = slice(None),
                        chunk_size: int = 4096) -> np.ndarray:
    """``g_k^T Q g_k`` for every row ``g_k`` of ``grads[:, cols]``."""
    out = np.empty(grads.shape[0])
    for sl in _chunks(grads.shape[0], chunk_size):
        g = _rows(grads, sl, cols)
        out[sl] = np.einsum("ij,ij->i", g @ q, g)
    return out


def matvec(grads: np.ndarray, x: np.ndarray, chunk_size: int) -> np.ndarray:
    """``grads @ x`` in float64, ``chunk_size`` rows at a time (``grads`` may be a memmap)."""
    out = np.empty(grads.shape[0])
    for sl in _chunks(grads.shape[0], chunk_size):
        out[sl] = _rows(grads, sl) @ x
    return out


@dataclass
class Curvature:
    """``H + Lambda`` restricted to the columns ``cols``: dense, or matrix-free ``(1/n) G^T G`` (DataInf's code)."""

    cols: slice
    damping: np.ndarray  # [d_cols] diagonal of Lambda
    dense: np.ndarray | None  # undamped H on cols, or None for matrix-free Gauss-Newton
    grads: np.ndarray
    chunk_size: int = 4096

    @property
    def dim(self) -> int:
        """Number of columns the operator acts on."""
        return len(self.damping)

    def matmat(self, s: np.ndarray, damping_sign: float = 1.0) -> np.ndarray:
        """``S (H + Lambda)`` for a stack of row vectors ``S`` [k, d_cols] (H is symmetric).

        ``damping_sign=-1`` gives ``S (H - Lambda)`` (DataInf's LiSSA code).
        """
        if self.dense is not None:
            return s @ self.dense + damping_sign * s * self.damping
        # matrix-free products stay in the gradients' own precision (no float64 copy of G per product)
        dtype = np.result_type(self.grads.dtype, np.float32)
        s_low, out, n = s.astype(dtype), damping_sign * s * self.damping, self.grads.shape[0]
        for sl in _chunks(n, self.chunk_size):
            g = np.asarray(self.grads[sl, self.cols], dtype=dtype)
            out += (s_low @ g.T) @ g / n
        return out

    def matrix(self) -> np.ndarray:
        """The damped matrix itself (dense curvature only)."""
        return self.dense + np.diag(self.damping)


def curvatures(inputs: ScoringInputs, hessian: str, damping: float | str, block_diagonal: bool, dense: bool,
               chunk_size: int = 4096) -> list[Curvature]:
    """The damped curvature as one full operator or one operator per block (block-diagonal H, per-layer damping)."""
    if hessian not in HESSIANS:
        raise ValueError(f"scorer.hessian must be one of {HESSIANS}, got {hessian!r}")
    train = inputs.train
    lam = block_damping(train.grads, train.blocks, damping, chunk_size)
    diag = np.concatenate([np.full(b.size, v) for b, v in zip(train.blocks, lam)])
    full = _exact_hessian(inputs) if hessian == "exact" else None
    spans = [slice(b.start, b.stop) for b in train.blocks] if block_diagonal else [slice(0, train.dim)]
    out = []
    for cols in spans:
        if full is not None:
            h = full[cols, cols]
        else:
            h = gauss_newton(train.grads, cols, chunk_size) if dense else None
        out.append(Curvature(cols, diag[cols], h, train.grads, chunk_size))
    return out


def _exact_hessian(inputs: ScoringInputs) -> np.ndarray:
    h = inputs.extra.get("hessian")
    if h is None:
        raise ValueError("scorer.hessian='exact' needs inputs.extra['hessian'] (the attributor computes it with "
                         "gradsift.attribution.hessian.loss_hessian when the scorer sets needs_hessian); use "
                         "scorer.hessian=gauss_newton to build H from the gradients instead")
    h = np.asarray(h, dtype=np.float64)
    d = inputs.train.dim
    if h.shape != (d, d):
        raise ValueError(f"scorer.hessian='exact': the Hessian has shape {h.shape} but the gradients have {d} "
                         "columns; the exact Hessian needs uncompressed gradients (compressor=identity) of the same "
                         "parameters; use scorer.hessian=gauss_newton for compressed gradients")
    return (h + h.T) / 2


def spd_solve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Solve ``a x = b`` by Cholesky; an indefinite exact Hessian falls back to a symmetric solve with a warning."""
    try:
        return scipy.linalg.cho_solve(scipy.linalg.cho_factor(a), b)
    except np.linalg.LinAlgError:
        warnings.warn("H + damping is not positive definite (non-convex loss?); solving the indefinite system; "
                      "raise scorer.damping or use scorer.hessian=gauss_newton", stacklevel=3)
        return scipy.linalg.solve(a, b, assume_a="sym")


# -- scorers ----------------------------------------------------------------------------------------------------

class InfluenceScorer(Scorer):
    """Shared plumbing: damping and chunking options, a display name, stored scores."""

    needs_reference = True

    def __init__(self, damping: float | str = "auto", chunk_size: int = 4096, display_name: str | None = None):
        if chunk_size < 1:
            raise ValueError(f"scorer.chunk_size must be >= 1, got {chunk_size}")
        self.damping, self.chunk_size = damping, chunk_size
        if display_name:
            self.display_name = display_name
        self._scores: np.ndarray | None = None

    def score(self) -> np.ndarray:
        """The scores of the last :meth:`fit`."""
        if self._scores is None:
            raise RuntimeError(f"{type(self).__name__}.score() called before fit()")
        return self._scores

    def _reference(self, inputs: ScoringInputs) -> np.ndarray:
        if inputs.reference is None:
            raise ValueError(f"{type(self).__name__} needs reference gradients in inputs.reference")
        if inputs.reference.dim != inputs.train.dim:
            raise ValueError(f"reference gradients have {inputs.reference.dim} columns, training gradients "
                             f"{inputs.train.dim}; gather both with the same parameters and compressor")
        return mean_gradient(inputs.reference.grads, self.chunk_size)


class GradientTracingScorer(InfluenceScorer):
    """Gradient Tracing / Hessian-free (TracIn at the last checkpoint, Pruthi et al. 2020): ``-(mean g_ref) . g_k``."""

    display_name = "Gradient Tracing"

    def __init__(self, chunk_size: int = 4096, display_name: str | None = None):
        super().__init__(damping=0.0, chunk_size=chunk_size, display_name=display_name)

    def fit(self, inputs: ScoringInputs) -> "GradientTracingScorer":
        """Score every training row against the mean reference gradient."""
        self._scores = -matvec(inputs.train.grads, self._reference(inputs), self.chunk_size)
        return self

    def pairwise(self, train: GradientSet, reference: GradientSet, seed: int = 0,
                 device: str | None = None) -> np.ndarray:
        """Every reference row at once: ``S[j, k] = -g_ref_j . g_train_k`` (float64) on ``device``.

        Args:
            train: the training gradients.
            reference: the reference rows (test prompts).
            seed: unused (the method is deterministic).
            device: where the product runs (``"auto"``/None: CUDA when available).

        Returns:
            ``[n_reference, n_train]`` scores.
        """
        dev = compute_device(device)
        g = torch.as_tensor(np.asarray(train.grads), device=dev).double()
        v = torch.as_tensor(np.asarray(reference.grads), device=dev).double()
        return (-(v @ g.T)).cpu().numpy()


class ExactInfluenceScorer(InfluenceScorer):
    """Exact influence (Eq. 1 of the dropout paper) with a dense damped Hessian and a Cholesky solve.

    ``hessian="exact"`` uses the loss Hessian of the chosen parameters (the instance then has
    ``needs_hessian = True`` so the attributor computes it); ``"gauss_newton"``/``"fisher"`` uses (1/n) G^T G.
    Cost: O(n d^2 + d^3) time, O(d^2) memory (dropout paper Table 6); refuses d > ``max_dim``.

    ``datainf_reshape_bug=True`` scores ``-(sum_{j in b} h_j)(sum_{j in b} g_kj)`` summed over blocks b, with
    ``h = (H + Lambda)^-1 v``, instead of ``-h . g_k``: what DataInf's ``compute_hvp_accurate`` + ``compute_IF`` return
    for 1-D gradient tensors, as the OGA synthetic script passes them (see the module docstring). Only for
    reproducing the authors' "Exact Hessian" row (with ``hessian="gauss_newton"``); it is not an influence.
    """

    display_name = "Exact Hessian"

    def __init__(self, hessian: str = "exact", damping: float | str = "auto", max_dim: int = 20_000,
                 chunk_size: int = 4096, display_name: str | None = None, datainf_reshape_bug: bool = False):
        super().__init__(damping, chunk_size, display_name)
        if hessian not in HESSIANS:
            raise ValueError(f"scorer.hessian must be one of {HESSIANS}, got {hessian!r}")
        if not isinstance(datainf_reshape_bug, bool):
            raise ValueError(f"scorer.datainf_reshape_bug must be true or false, got {datainf_reshape_bug!r}")
        self.hessian, self.max_dim, self.datainf_reshape_bug = hessian, max_dim, datainf_reshape_bug
        self.needs_hessian = hessian == "exact"

    def fit(self, inputs: ScoringInputs) -> "ExactInfluenceScorer":
        """Solve ``(H + Lambda) x = v`` densely (Cholesky) and score every training row with it."""
        if inputs.train.dim > self.max_dim:
            raise ValueError(f"{type(self).__name__} needs a dense {inputs.train.dim}^2 Hessian, above "
                             f"scorer.max_dim={self.max_dim}; compress the gradients (compressor=dropout) or use "
                             "LiSSA/DataInf")
        v = self._reference(inputs)
        (curv,) = curvatures(inputs, self.hessian, self.damping, block_diagonal=False, dense=True,
                             chunk_size=self.chunk_size)
        h = spd_solve(curv.matrix(), v)
        if self.datainf_reshape_bug:
            self._scores = -_block_sum_products(inputs.train, h, self.chunk_size)
        else:
            self._scores = -matvec(inputs.train.grads, h, self.chunk_size)
        return self


def _block_sum_products(train: GradientSet, h: np.ndarray, chunk_size: int) -> np.ndarray:
    """``sum_b (sum_{j in b} h_j)(sum_{j in b} g_kj)`` for every row k: DataInf's 1-D reshape bug (see above)."""
    out = np.zeros(train.n)
    for sl in _chunks(train.n, chunk_size):
        g = _rows(train.grads, sl)
        for b in train.blocks:
            out[sl] += h[b.start:b.stop].sum() * g[:, b.start:b.stop].sum(axis=1)
    return out


class CompressedInfluenceScorer(ExactInfluenceScorer):
    """"Orig." influence in a compressed space (Eq. 3 of the dropout paper).

    Eq. 1 on whatever (compressed) gradients it is given, with ``H = (1/n) G^T G + Lambda`` of those gradients.
    Equals exact Gauss-Newton influence under the identity compressor.

    Args:
        damping: ``"auto"`` (per-layer rule) or a float.
        max_dim: refuse a dense Hessian above this many columns.
        chunk_size: rows per float64 chunk.
        display_name: the table's row name.
    """

    display_name = "Orig."

    def __init__(self, damping: float | str = "auto", max_dim: int = 20_000, chunk_size: int = 4096,
                 display_name: str | None = None):
        super().__init__("gauss_newton", damping, max_dim, chunk_size, display_name)


class LiSSAScorer(InfluenceScorer):
    """LiSSA (Agarwal et al. 2017; dropout paper Eq. 7-8): a recursion that approximates the inverse HVP.

    ``s_{i+1} = v + (I - (H + Lambda)/scale) s_i``, s_0 = v, so ``s_depth / scale`` approximates ``(H + Lambda)^-1 v``; score = ``-g_k . s_depth / scale``.

    By default H is block diagonal (one block per layer) and applied matrix-free as ``(1/n) G^T G v``, as in
    DataInf's reference code. ``scale="auto"`` = max(1, lambda_max(H_l + Lambda_l)) per block (power iteration):
    the paper's scale 1 whenever its convergence condition ``H + lambda I <= I`` holds, rescaled otherwise.

    ``variant="datainf_code"`` runs DataInf's own recursion instead (``ykwon0407/DataInf`` ``src/influence.py``
    ``compute_hvp_LiSSA``, which the OGA authors' scripts call): ``s_{i+1} = v + s_i - (H - Lambda) s_i``, no scale
    (``scale`` must stay ``auto`` or 1), score ``-g_k . s_depth``; its fixed point is ``(H - Lambda)^-1 v``.
    """

    display_name = "LiSSA"

    def __init__(self, depth: int = 10, scale: float | str = "auto", damping: float | str = "auto",
                 hessian: str = "gauss_newton", block_diagonal: bool = True, max_dense_dim: int = 8192,
                 chunk_size: int = 4096, display_name: str | None = None, variant: str = "standard"):
        super().__init__(damping, chunk_size, display_name)
        if not isinstance(depth, int) or depth < 0:
            raise ValueError(f"scorer.depth must be a non-negative int, got {depth!r}")
        if scale != "auto" and not (isinstance(scale, (int, float)) and scale > 0):
            raise ValueError(f"scorer.scale must be 'auto' or a positive float, got {scale!r}")
        if hessian not in HESSIANS:
            raise ValueError(f"scorer.hessian must be one of {HESSIANS}, got {hessian!r}")
        if variant not in LISSA_VARIANTS:
            raise ValueError(f"scorer.variant must be one of {LISSA_VARIANTS}, got {variant!r}")
        if variant == "datainf_code" and scale not in ("auto", 1):
            raise ValueError(f"scorer.variant=datainf_code has no scale (DataInf's alpha_const=1), but "
                             f"scorer.scale={scale!r}; leave scorer.scale at auto or 1")
        self.depth, self.scale, self.hessian, self.variant = depth, scale, hessian, variant
        self.damping_sign = -1.0 if variant == "datainf_code" else 1.0
        self.block_diagonal, self.max_dense_dim = block_diagonal, max_dense_dim
        self.needs_hessian = hessian == "exact"

    def _curvatures(self, inputs: ScoringInputs, dense: bool) -> list[Curvature]:
        return curvatures(inputs, self.hessian, self.damping, self.block_diagonal, dense, self.chunk_size)

    def _scale(self, curv: Curvature, seed: int) -> float:
        if self.variant == "datainf_code":
            return 1.0
        if self.scale != "auto":
            return float(self.scale)
        x = np.random.default_rng(seed).standard_normal(curv.dim)
        top = 0.0
        for _ in range(20):
            y = curv.matmat(x[None])[0]
            top = float(x @ y) / float(x @ x)
            x = y / np.linalg.norm(y)
        return max(1.0, top)

    def _recursion(self, curv: Curvature, v: np.ndarray, scale: float) -> np.ndarray:
        """``s_depth / scale`` for each row of ``v`` [k, d_cols]."""
        s = v.copy()
        with np.errstate(over="ignore", invalid="ignore"):
            for _ in range(self.depth):
                s = v + s - curv.matmat(s, self.damping_sign) / scale
        if not np.isfinite(s).all():
            if self.variant == "datainf_code":
                raise FloatingPointError(f"LiSSA (scorer.variant=datainf_code) diverged in block {curv.cols}: "
                                         "DataInf's unscaled recursion needs lambda_max(H - damping) < 2")
            raise FloatingPointError(f"LiSSA diverged in block {curv.cols}: set scorer.scale above "
                                     "lambda_max(H + damping) / 2, or scorer.scale=auto")
        return s / scale

    def ihvp(self, inputs: ScoringInputs) -> np.ndarray:
        """LiSSA's estimate of ``(H + Lambda)^-1 v`` for the mean reference gradient ``v``."""
        v = self._reference(inputs)
        out = np.empty_like(v)
        for curv in self._curvatures(inputs, dense=self.hessian == "exact"):
            out[curv.cols] = self._recursion(curv, v[None, curv.cols], self._scale(curv, inputs.seed))[0]
        return out

    def fit(self, inputs: ScoringInputs) -> "LiSSAScorer":
        """Score every training row against LiSSA's inverse-HVP estimate."""
        self._scores = -matvec(inputs.train.grads, self.ihvp(inputs), self.chunk_size)
        return self


class SelfLiSSAScorer(LiSSAScorer):
    """Self-LiSSA (Bejan et al. 2023): ``g_k^T s_depth(g_k) / scale`` with LiSSA's recursion started at v = g_k.

    Blocks of at most ``max_dense_dim`` columns materialise the recursion's polynomial in H as a d_l x d_l matrix
    (O(depth d_l^3 + n d_l^2)); larger blocks run the recursion matrix-free on row chunks (O(depth n^2 d_l)).

    ``hessian_from="sample"``: H = g_k g_k^T and the damping (``auto``: 0.1 ||g_k||^2 / d per block) from g_k alone,
    one engine per sample as the OGA authors' RoBERTa script (``nlp/ROBERTA_SELECTION_1_LATEST.py:150-178``), in
    float32; with ``variant="datainf_code"`` this is their Self-LiSSA, monotone in ``||g_k||^2`` (module docstring).
    ``scale="auto"`` is then max(1, ||g_k||^2 + lambda_k) per sample.
    """

    display_name = "Self-LiSSA"
    needs_reference = False

    def __init__(self, depth: int = 10, scale: float | str = "auto", damping: float | str = "auto",
                 hessian: str = "gauss_newton", block_diagonal: bool = True, max_dense_dim: int = 8192,
                 chunk_size: int = 4096, display_name: str | None = None, variant: str = "standard",
                 hessian_from: str = "train"):
        super().__init__(depth, scale, damping, hessian, block_diagonal, max_dense_dim, chunk_size, display_name,
                         variant)
        self.hessian_from = _check_hessian_from(hessian_from, hessian)

    def fit(self, inputs: ScoringInputs) -> "SelfLiSSAScorer":
        """``g_k^T s_depth(g_k) / scale`` for every training row."""
        if self.hessian_from == "sample":
            self._scores = self._fit_per_sample(inputs.train)
            return self
        grads = inputs.train.grads
        scores = np.zeros(inputs.train.n)
        small = all(b.size <= self.max_dense_dim for b in inputs.train.blocks) if self.block_diagonal \
            else inputs.train.dim <= self.max_dense_dim
        for curv in self._curvatures(inputs, dense=small or self.hessian == "exact"):
            scale = self._scale(curv, inputs.seed)
            if curv.dense is not None:
                q = self._recursion(curv, np.eye(curv.dim), scale)
                scores += row_quadratic_forms(grads, (q + q.T) / 2, curv.cols, self.chunk_size)
                continue
            for sl in _chunks(inputs.train.n, self.chunk_size):
                g = _rows(grads, sl, curv.cols)
                scores[sl] += np.einsum("ij,ij->i", self._recursion(curv, g, scale), g)
        self._scores = scores
        return self

    def _fit_per_sample(self, train: GradientSet) -> np.ndarray:
        """Each row's recursion with its own H = g g^T and damping, vectorised over rows, in float32.

        Per block, DataInf's ``compute_hvp_LiSSA`` with one training gradient, ``v = r_0 = g``:
        ``r <- v + r - ((g . r) g - lambda r)`` (``variant="datainf_code"``) or
        ``r <- v + r - ((g . r) g + lambda r) / scale`` (``standard``); the score is ``g . r_depth / scale``.
        """
        scores = np.zeros(train.n)
        for sl in _chunks(train.n, self.chunk_size):
            g_all = torch.as_tensor(_rows(train.grads, sl), dtype=torch.float32)
            for cols in _sample_spans(train, self.block_diagonal):
                g = g_all[:, cols]
                lam = _sample_damping(g, self.damping)[:, None]
                if self.variant == "datainf_code":
                    scale = torch.ones_like(lam)
                elif self.scale == "auto":
                    scale = torch.clamp((g * g).sum(1, keepdim=True) + lam, min=1.0)
                else:
                    scale = torch.full_like(lam, float(self.scale))
                r = g.clone()
                for _ in range(self.depth):
                    r = g + r - ((g * r).sum(1, keepdim=True) * g + self.damping_sign * lam * r) / scale
                scores[sl] += ((r / scale) * g).sum(1).double().numpy()
        if not np.isfinite(scores).all():
            raise FloatingPointError("per-sample LiSSA (scorer.hessian_from=sample) overflowed: a sample's "
                                     "||g||^2 is far above 2 x scale (DataInf's code: scale 1); use "
                                     "scorer.variant=standard with scorer.scale=auto")
        return scores


def _check_hessian_from(hessian_from: str, hessian: str = "gauss_newton") -> str:
    if hessian_from not in HESSIAN_FROM:
        raise ValueError(f"scorer.hessian_from must be one of {HESSIAN_FROM}, got {hessian_from!r}")
    if hessian_from == "sample" and hessian == "exact":
        raise ValueError("scorer.hessian_from=sample builds H = g g^T from each sample's own gradient; it needs "
                         "scorer.hessian=gauss_newton (the exact loss Hessian is of the whole training set)")
    return hessian_from


def _sample_spans(train: GradientSet, block_diagonal: bool = True) -> list[slice]:
    """The column spans a per-sample engine treats separately: one per block (DataInf's weight names) or all."""
    return [slice(b.start, b.stop) for b in train.blocks] if block_diagonal else [slice(0, train.dim)]


def _sample_damping(g: torch.Tensor, damping: float | str) -> torch.Tensor:
    """Each row's damping in float32: ``auto`` = mean(g**2) / 10, DataInf's ``torch.mean(S) / 10`` over one sample."""
    if damping == "auto":
        return (g * g).mean(1) / 10
    if isinstance(damping, (int, float)) and not isinstance(damping, bool) and damping >= 0:
        return torch.full((g.shape[0],), float(damping), dtype=g.dtype)
    raise ValueError(f"scorer.damping must be 'auto' or a non-negative float, got {damping!r}")


class DataInfScorer(InfluenceScorer):
    """DataInf (Kwon et al. 2024; dropout paper Eq. 9-10): Sherman-Morrison inverses per block.

    Per block, the inverse of the mean is swapped for the mean of Sherman-Morrison inverses,
    ``(H_l + lambda_l I)^-1 ~ (1/(n lambda_l)) sum_k (I - g_k g_k^T / (lambda_l + ||g_k||^2))``, in O(n d) time and
    O(d) memory. Needs a positive damping.

    Args:
        damping: ``"auto"`` (per-layer rule) or a positive float.
        chunk_size: rows per float64 chunk.
        display_name: the table's row name.
    """

    display_name = "DataInf"

    def _setup(self, inputs: ScoringInputs) -> tuple[np.ndarray, np.ndarray]:
        """Per-block damping and the per-row, per-block squared norms ``||g_{k,l}||^2`` [n, blocks]."""
        train = inputs.train
        lam = block_damping(train.grads, train.blocks, self.damping, self.chunk_size)
        if (lam <= 0).any():
            raise ValueError(f"{type(self).__name__} needs scorer.damping > 0 (or 'auto'), got {self.damping!r}")
        sq = np.empty((train.n, len(train.blocks)))
        for sl in _chunks(train.n, self.chunk_size):
            g = _rows(train.grads, sl)
            sq[sl] = np.stack([np.einsum("ij,ij->i", g[:, b.start:b.stop], g[:, b.start:b.stop])
                               for b in train.blocks], axis=1)
        return lam, sq

    def fit(self, inputs: ScoringInputs) -> "DataInfScorer":
        """Score every training row against DataInf's inverse-HVP estimate."""
        train = inputs.train
        v = self._reference(inputs)
        lam, sq = self._setup(inputs)
        # c_{k,l} = g_{k,l} . v_l / (lambda_l + ||g_{k,l}||^2), then ihvp_l = (v_l - (1/n) G_l^T c_l) / lambda_l
        ihvp = v.copy()
        for sl in _chunks(train.n, self.chunk_size):
            g = _rows(train.grads, sl)
            for i, b in enumerate(train.blocks):
                gb = g[:, b.start:b.stop]
                c = gb @ v[b.start:b.stop] / (lam[i] + sq[sl, i])
                ihvp[b.start:b.stop] -= gb.T @ c / train.n
        for i, b in enumerate(train.blocks):
            ihvp[b.start:b.stop] /= lam[i]
        self._scores = -matvec(train.grads, ihvp, self.chunk_size)
        return self

    def pairwise(self, train: GradientSet, reference: GradientSet, seed: int = 0,
                 device: str | None = None) -> np.ndarray:
        """DataInf with each reference row alone as the reference, all rows at once, in O(n_ref n d) on ``device``.

        Equals the generic one-fit-per-row rule (tested). Per block l with damping ``lambda_l`` and
        ``c = (V_l G_l^T) / (lambda_l + ||g_{k,l}||^2)``: ``ihvp_l = (V_l - c G_l / n) / lambda_l`` and
        ``S -= ihvp_l G_l^T``.

        Args:
            train: the training gradients.
            reference: the reference rows (test prompts).
            seed: unused (the method is deterministic).
            device: where the products run (``"auto"``/None: CUDA when available).

        Returns:
            ``[n_reference, n_train]`` scores.

        Raises:
            ValueError: the two sets have different columns, or the damping is not positive.
        """
        if train.dim != reference.dim:
            raise ValueError(f"reference gradients have {reference.dim} columns, training gradients {train.dim}")
        lam = block_damping(np.asarray(train.grads), train.blocks, self.damping)
        if (lam <= 0).any():
            raise ValueError(f"DataInf needs damping > 0 (or 'auto'), got {self.damping!r}")
        dev = compute_device(device)
        n = train.n
        out = torch.zeros(reference.n, n, dtype=torch.float64, device=dev)
        for lam_l, b in zip(lam, train.blocks):
            g = torch.as_tensor(np.asarray(train.grads[:, b.start:b.stop]), device=dev).double()
            v = torch.as_tensor(np.asarray(reference.grads[:, b.start:b.stop]), device=dev).double()
            c = (v @ g.T) / (float(lam_l) + (g * g).sum(1))
            ihvp = (v - c @ g / n) / float(lam_l)
            out -= ihvp @ g.T
        return out.cpu().numpy()


class SelfDataInfScorer(DataInfScorer):
    """Self-DataInf (OGA paper Table 1): ``g_i^T M g_i`` with DataInf's inverse M of Eq. 10.

    Per block: ``(1/lambda_l) (||g_{i,l}||^2 - (1/n) sum_k (g_{k,l} . g_{i,l})^2 / (lambda_l + ||g_{k,l}||^2))``.

    Blocks of at most ``max_dense_dim`` columns form ``(1/n) G_l^T W G_l`` (O(n d_l^2)); larger ones use the Gram
    matrix on row chunks (O(n^2 d_l)).

    ``hessian_from="sample"``: n = 1, H and the damping from g_i alone, one DataInf engine per sample as the OGA
    authors' RoBERTa script (``nlp/ROBERTA_SELECTION_1_LATEST.py:150-178``), computed in float32 with DataInf's
    operations (``compute_hvp_proposed``): ``||g||^2 / (lambda_i + ||g||^2)`` per block, the constant
    ``10 d / (10 d + 1)`` under damping ``auto``. Which samples a budget then trims is decided by float32 rounding
    and the stable sort's tie-break (the lowest rows first): an arbitrary subset, not a ranking. A block whose
    gradient is exactly zero scores 0 there (DataInf's code divides 0 by 0).
    """

    display_name = "Self-DataInf"
    needs_reference = False

    def __init__(self, damping: float | str = "auto", max_dense_dim: int = 8192, chunk_size: int = 4096,
                 display_name: str | None = None, hessian_from: str = "train"):
        super().__init__(damping, chunk_size, display_name)
        self.max_dense_dim = max_dense_dim
        self.hessian_from = _check_hessian_from(hessian_from)

    def fit(self, inputs: ScoringInputs) -> "SelfDataInfScorer":
        """``g_i^T M g_i`` for every training row, block by block."""
        if self.hessian_from == "sample":
            self._scores = self._fit_per_sample(inputs.train)
            return self
        train, grads, n = inputs.train, inputs.train.grads, inputs.train.n
        lam, sq = self._setup(inputs)
        scores = np.zeros(n)
        for i, b in enumerate(train.blocks):
            cols, w = slice(b.start, b.stop), 1.0 / (lam[i] + sq[:, i])
            if b.size <= self.max_dense_dim:
                m = np.zeros((b.size, b.size))
                for sl in _chunks(n, self.chunk_size):
                    g = _rows(grads, sl, cols)
                    m += (g * w[sl, None]).T @ g
                swapped = row_quadratic_forms(grads, m / n, cols, self.chunk_size)
            else:
                swapped = np.zeros(n)
                for rows in _chunks(n, self.chunk_size):
                    gi = _rows(grads, rows, cols)
                    for sl in _chunks(n, self.chunk_size):
                        swapped[rows] += ((gi @ _rows(grads, sl, cols).T) ** 2 @ w[sl]) / n
            scores += (sq[:, i] - swapped) / lam[i]
        self._scores = scores
        return self

    def _fit_per_sample(self, train: GradientSet) -> np.ndarray:
        """DataInf's ``compute_hvp_proposed`` + ``compute_IF`` with each row its own training and reference set.

        Per block, vectorised over rows in float32; the sign is gradsift's (higher = more self-influential).
        """
        if self.damping != "auto" and not (isinstance(self.damping, (int, float)) and self.damping > 0):
            raise ValueError(f"Self-DataInf needs scorer.damping > 0 (or 'auto'), got {self.damping!r}")
        scores = np.zeros(train.n)
        for sl in _chunks(train.n, self.chunk_size):
            g_all = torch.as_tensor(_rows(train.grads, sl), dtype=torch.float32)
            for cols in _sample_spans(train):
                g = g_all[:, cols]
                lam = _sample_damping(g, self.damping)[:, None]
                nonzero = lam > 0  # damping auto: 0 only for a zero gradient
                lam = torch.where(nonzero, lam, torch.ones_like(lam))
                c = (g * g).sum(1, keepdim=True) / (lam + (g * g).sum(1, keepdim=True))
                hvp = (g - c * g) / lam
                scores[sl] += torch.where(nonzero[:, 0], (hvp * g).sum(1), 0.0).double().numpy()
        return scores
