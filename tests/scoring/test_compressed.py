"""Influence with the compression applied at scoring time (scoring/compressed.py) against the engine-side route."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gradsift.attribution.compressors import DropoutCompressor, GaussianCompressor
from gradsift.attribution.gradient_set import Block, GradientSet
from gradsift.scoring.base import ScoringInputs
from gradsift.scoring.compressed import ScoreTimeCompressedInfluenceScorer, compress_gradient_set
from gradsift.scoring.influence import CompressedInfluenceScorer, block_damping, gauss_newton, mean_gradient, spd_solve

BLOCKS = [Block("l0.lora_A", 0, 12), Block("l0.lora_B", 12, 20), Block("l1.lora_A", 20, 30)]


def _inputs(seed: int = 0, n: int = 60, m: int = 15) -> ScoringInputs:
    rng = np.random.default_rng(seed)
    d = BLOCKS[-1].stop
    mix = rng.standard_normal((d, d)) / np.sqrt(d)
    train = GradientSet(grads=(rng.standard_normal((n, d)) @ mix).astype(np.float32), index=np.arange(n),
                        labels=rng.integers(0, 2, n), blocks=BLOCKS)
    val = GradientSet(grads=(rng.standard_normal((m, d)) @ mix).astype(np.float32), index=np.arange(m),
                      labels=rng.integers(0, 2, m), blocks=BLOCKS)
    return ScoringInputs(train=train, reference=val, seed=seed)


def test_without_compressor_equals_compressed_influence_on_the_same_gradients():
    inputs = _inputs()
    ours = ScoreTimeCompressedInfluenceScorer(block_diagonal=False).fit_score(inputs)
    ref = CompressedInfluenceScorer().fit_score(inputs)
    np.testing.assert_allclose(ours, ref, rtol=1e-10)


@pytest.mark.parametrize("cls", [DropoutCompressor, GaussianCompressor])
def test_compression_at_scoring_equals_scoring_precompressed_gradients(cls):
    inputs = _inputs(1)
    ours = ScoreTimeCompressedInfluenceScorer(compressor=cls(r=7, seed=3), block_diagonal=False).fit_score(inputs)
    comp = cls(r=7, seed=3)
    comp.setup(inputs.train.blocks, "cpu")

    def squeeze(gs: GradientSet) -> GradientSet:
        g = comp.compress(torch.from_numpy(gs.grads)).numpy()
        return GradientSet(g, gs.index, gs.labels, [b for b in comp.out_blocks if b.size])

    ref = CompressedInfluenceScorer().fit_score(ScoringInputs(squeeze(inputs.train), squeeze(inputs.reference)))
    np.testing.assert_allclose(ours, ref, rtol=1e-6)
    if cls is DropoutCompressor:  # dropout keeps exactly the seeded coordinates
        gs = compress_gradient_set(inputs.train, comp)
        np.testing.assert_array_equal(gs.grads, inputs.train.grads[:, comp.indices])


def test_block_diagonal_solves_each_layer_and_auto_switches_at_max_dim():
    inputs = _inputs(2)
    g, v = inputs.train.grads, mean_gradient(inputs.reference.grads)
    lam = block_damping(g, BLOCKS, "auto")
    ihvp = np.concatenate([spd_solve(gauss_newton(g, slice(b.start, b.stop)) + lam[i] * np.eye(b.size),
                                      v[b.start:b.stop]) for i, b in enumerate(BLOCKS)])
    expected = -(g.astype(np.float64) @ ihvp)
    auto = ScoreTimeCompressedInfluenceScorer(max_dim=29)  # d = 30 > max_dim: per block
    np.testing.assert_allclose(auto.fit_score(inputs), expected, rtol=1e-9)
    assert auto.used_block_diagonal and auto.dim == 30
    dense = ScoreTimeCompressedInfluenceScorer(max_dim=30)
    dense.fit_score(inputs)
    assert dense.used_block_diagonal is False
    with pytest.raises(ValueError, match="max_dim"):
        ScoreTimeCompressedInfluenceScorer(block_diagonal=True, max_dim=5).fit_score(inputs)
    with pytest.raises(ValueError, match="block_diagonal"):
        ScoreTimeCompressedInfluenceScorer(block_diagonal="sometimes")
