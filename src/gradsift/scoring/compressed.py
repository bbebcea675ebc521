"""Influence in a compressed gradient space, with the compression applied when scoring (dropout paper Table 1).

:class:`gradsift.scoring.influence.CompressedInfluenceScorer` scores whatever gradients the engine gathered, so comparing
Orig., Gaussian and Dropout on one model needs three gradient passes (and, since the base-model cache is keyed by the
compressor, three trainings). :class:`ScoreTimeCompressedInfluenceScorer` instead takes the stored *uncompressed*
gradients of one model and compresses them with its own compressor before Eq. 3 of the dropout paper: Dropout keeps
the same r coordinates, Gaussian applies the same ``P[r, d]``, so the influence scores are the ones the engine-side
compression would give (the paper's Figure 1 sweeps the compression seed and r on one fine-tuned model). The
compression time is part of the scoring time.

Without a compressor it is the paper's "Orig." row: Eq. 1 with the Gauss-Newton Hessian ``(1/n) G^T G`` and the
per-layer damping of Appendix D.1. ``block_diagonal="auto"`` keeps the dense ``d x d`` Hessian while
``d <= max_dim`` and otherwise inverts it per layer (the block-diagonal approximation DataInf and LiSSA use), e.g.
LoRA rank 8 on MiniLM (d = 36,864).
"""

from __future__ import annotations

import numpy as np
import torch

from gradsift.attribution.compressors import Compressor
from gradsift.attribution.gradient_set import Block, GradientSet
from gradsift.scoring.base import ScoringInputs
from gradsift.scoring.influence import CompressedInfluenceScorer, InfluenceScorer, matvec, spd_solve, curvatures


def compress_gradient_set(gs: GradientSet, compressor: Compressor, chunk_size: int = 1024) -> GradientSet:
    """``gs`` with every row compressed by ``compressor`` (already ``setup`` on ``gs.blocks``); empty blocks dropped."""
    parts = []
    with torch.no_grad():
        for start in range(0, gs.n, chunk_size):
            rows = torch.from_numpy(np.ascontiguousarray(gs.grads[start:start + chunk_size], dtype=np.float32))
            parts.append(compressor.compress(rows).float().cpu().numpy())
    grads = np.concatenate(parts) if parts else np.zeros((0, compressor.out_blocks[-1].stop), np.float32)
    blocks = [Block(b.name, b.start, b.stop) for b in compressor.out_blocks if b.size > 0]
    return GradientSet(grads=grads, index=gs.index, labels=gs.labels, blocks=blocks,
                       meta={**gs.meta, "compressor": compressor.state() | {"at": "scoring"}})


class ScoreTimeCompressedInfluenceScorer(InfluenceScorer):
    """Eq. 1/3 of the dropout paper on the stored gradients, compressed first by ``compressor`` (None = "Orig.").

    ``block_diagonal``: ``True`` inverts ``H + Lambda`` per layer block, ``False`` densely (refused above
    ``max_dim``), ``"auto"`` densely up to ``max_dim`` columns and per block above. After ``fit``,
    ``used_block_diagonal`` and ``dim`` say what was done.
    """

    display_name = "Orig."

    def __init__(self, compressor: Compressor | None = None, damping: float | str = "auto",
                 block_diagonal: bool | str = "auto", max_dim: int = 20_000, chunk_size: int = 4096,
                 display_name: str | None = None):
        super().__init__(damping, chunk_size, display_name)
        if block_diagonal not in (True, False, "auto"):
            raise ValueError(f"scorer.block_diagonal must be true, false or 'auto', got {block_diagonal!r}")
        self.compressor, self.block_diagonal, self.max_dim = compressor, block_diagonal, max_dim
        self.used_block_diagonal: bool | None = None
        self.dim: int | None = None

    def compress(self, inputs: ScoringInputs) -> ScoringInputs:
        """The inputs with train and reference gradients compressed by ``compressor`` (unchanged without one)."""
        if self.compressor is None:
            return inputs
        self.compressor.setup(inputs.train.blocks, "cpu", n_samples=inputs.train.n)
        train = compress_gradient_set(inputs.train, self.compressor)
        reference = compress_gradient_set(inputs.reference, self.compressor) if inputs.reference is not None else None
        return ScoringInputs(train=train, reference=reference, train_probs=inputs.train_probs, seed=inputs.seed,
                             extra=inputs.extra)

    def fit(self, inputs: ScoringInputs) -> "ScoreTimeCompressedInfluenceScorer":
        """Compress, then Eq. 1/3 with the damped Gauss-Newton Hessian (dense or per block)."""
        inputs = self.compress(inputs)
        self.dim = inputs.train.dim
        block = self.dim > self.max_dim if self.block_diagonal == "auto" else bool(self.block_diagonal)
        self.used_block_diagonal = block
        if not block:
            self._scores = CompressedInfluenceScorer(self.damping, self.max_dim, self.chunk_size).fit(inputs).score()
            return self
        too_big = [b.name for b in inputs.train.blocks if b.size > self.max_dim]
        if too_big:
            raise ValueError(f"blocks {too_big} have more than scorer.max_dim={self.max_dim} columns; compress the "
                             "gradients or raise max_dim")
        v = self._reference(inputs)
        ihvp = np.zeros_like(v)
        for curv in curvatures(inputs, "gauss_newton", self.damping, block_diagonal=True, dense=True,
                               chunk_size=self.chunk_size):
            ihvp[curv.cols] = spd_solve(curv.matrix(), v[curv.cols])
        self._scores = -matvec(inputs.train.grads, ihvp, self.chunk_size)
        return self
