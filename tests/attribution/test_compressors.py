"""Compressors against their definitions: kept coordinates, JL inner-product preservation, Kronecker identity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gradsift.attribution.compressors import DropoutCompressor, GaussianCompressor, LoGraCompressor, ParamInfo, SparseRandomProjectionCompressor
from gradsift.attribution.gradient_set import Block

BLOCKS = [Block("a", 0, 3000), Block("b", 3000, 5000)]


def _vectors(n: int = 20, d: int = 5000, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def _jl_ok(x: torch.Tensor, y: torch.Tensor, eps: float) -> None:
    """Inner products of unit-normalized rows preserved within eps (JL: error ~ 1/sqrt(r))."""
    s = x.norm(dim=1, keepdim=True)  # the same scale for x and y, so norm distortion counts too
    gx, gy = (x / s) @ (x / s).T, (y / s) @ (y / s).T
    assert (gx - gy).abs().max() < eps, float((gx - gy).abs().max())


def test_dropout_keeps_seeded_coordinates_per_block():
    x = _vectors()
    c = DropoutCompressor(r=100, seed=3)
    c.setup(BLOCKS)
    y = c.compress(x)
    assert torch.equal(y, x[:, torch.from_numpy(c.indices)])
    assert len(np.unique(c.indices)) == 100 and [b.name for b in c.out_blocks] == ["a", "b"]
    assert sum(b.size for b in c.out_blocks) == 100
    c2 = DropoutCompressor(r=100, seed=3)
    c2.setup(BLOCKS)
    assert np.array_equal(c.indices, c2.indices)
    with pytest.raises(ValueError, match="exceeds"):
        DropoutCompressor(r=6000).setup(BLOCKS)


@pytest.mark.parametrize("make", [lambda: GaussianCompressor(r=2048, seed=1, chunk_bytes=2048 * 4 * 700),
                                  lambda: SparseRandomProjectionCompressor(r=2048, seed=1)])
def test_dense_projections_preserve_inner_products(make):
    x = _vectors()
    c = make()
    c.setup(BLOCKS)
    y = c.compress(x)
    assert y.shape == (20, 2048) and c.out_blocks == [Block(c.out_blocks[0].name, 0, 2048)]
    _jl_ok(x, y, eps=0.15)
    c2 = make()
    c2.setup(BLOCKS)
    assert torch.equal(y, c2.compress(x))  # seeded and deterministic


def test_gaussian_chunks_assemble_one_matrix():
    c = GaussianCompressor(r=8, seed=2, chunk_bytes=8 * 4 * 7)  # 7 columns a chunk
    c.setup([Block("a", 0, 20)])
    p = torch.cat([c.matrix_chunk(0, k, min(7, 20 - 7 * k), torch.device("cpu")) for k in range(3)], 1)
    x = _vectors(3, 20)
    torch.testing.assert_close(c.compress(x), x @ p.T)


def test_sparse_projection_matches_sklearn_and_jl_dimension():
    from sklearn.random_projection import SparseRandomProjection as Sk, johnson_lindenstrauss_min_dim

    c = SparseRandomProjectionCompressor(r=None, eps=0.5, seed=4)
    c.setup(BLOCKS, n_samples=50)
    assert c.r == johnson_lindenstrauss_min_dim(50, eps=0.5)
    x = _vectors(5)
    sk = Sk(n_components=c.r, eps=0.5, random_state=4).fit(x.numpy())
    np.testing.assert_allclose(c.compress(x).numpy(), sk.transform(x.numpy()), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="n_samples"):
        SparseRandomProjectionCompressor(r=None).setup(BLOCKS)


@pytest.mark.parametrize("layout", ["out_in", "in_out"])
def test_logra_is_kronecker_of_projections(layout):
    fan_in, fan_out, b, t = 7, 5, 4, 3
    shape = (fan_out, fan_in) if layout == "out_in" else (fan_in, fan_out)
    c = LoGraCompressor(r=9, seed=5)
    c.setup([Block("w", 0, 35)], params=[ParamInfo("w", shape, layout)])
    acts, gout = torch.randn(b, t, fan_in), torch.randn(b, t, fan_out)
    G = torch.einsum("bto,bti->boi", gout, acts)  # per-sample gradient [out, in]
    flat = G.reshape(b, -1) if layout == "out_in" else G.transpose(1, 2).reshape(b, -1)  # as the parameter stores it
    p_in, p_out = c.projections(0)
    vec_c = G.transpose(1, 2).reshape(b, -1)  # column-major vec of G[out, in]
    want = vec_c @ torch.kron(p_in, p_out).T  # (P_in kron P_out) vec(G), Eq. 12
    torch.testing.assert_close(c.compress(flat), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(c.compress_factors(0, acts, gout), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="perfect square"):
        LoGraCompressor(r=10)
