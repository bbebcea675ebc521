"""Gradient compressors: map a per-sample gradient of dimension d to r << d coordinates.

Interface (every compressor): ``setup(blocks, device, params=None, n_samples=None)`` once with the uncompressed
per-parameter blocks, then ``compress(grads[B, d]) -> [B, r]``; ``out_blocks`` gives the compressed per-layer
blocks (so DataInf and per-layer damping still work) and ``state()`` what must be stored with the gradients to
reproduce them. Compressors are seeded and deterministic.

The hook engine (``attribution.gradients``) never forms the whole [B, d] matrix: it calls
``compress_block(i, g_i)`` per parameter and, for weights of Linear-like layers, first tries
``compress_factors(i, acts[B, T, in], grad_out[B, T, out])``, which lets Dropout compute only the kept
coordinates ``sum_t g_t[o] a_t[j]`` and LoGra project activations before the outer product (Eq. 13 of the
dropout paper's Appendix B). Parts are joined by ``combine`` (concatenated, or summed for dense projections).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from gradsift.attribution.gradient_set import Block

#: layouts of a flattened parameter: "out_in" = weight[out, in...] (nn.Linear, nn.Conv2d), "in_out" =
#: weight[in, out] (transformers' Conv1D), "other" = anything else (biases, norms, embeddings)
LAYOUTS = ("out_in", "in_out", "other")


@dataclass(frozen=True)
class ParamInfo:
    """Shape and storage layout of one selected parameter (one input block)."""

    name: str
    shape: tuple[int, ...]
    layout: str = "other"

    @property
    def in_out(self) -> tuple[int, int]:
        """(fan_in, fan_out) of a Linear-like weight."""
        if self.layout == "out_in":
            return math.prod(self.shape[1:]), self.shape[0]
        if self.layout == "in_out":
            return self.shape[0], math.prod(self.shape[1:])
        raise ValueError(f"parameter {self.name} has layout 'other': it is not a Linear-like weight")


class Compressor:
    """Base class; subclasses override :meth:`compress_block` (and may override the other hooks)."""

    #: how per-block parts are joined: "concat" (block-diagonal compressors) or "sum" (dense projections)
    reduce = "concat"

    def __init__(self, seed: int = 0):
        self.seed = int(seed)
        self.in_blocks: list[Block] = []
        self.out_blocks: list[Block] = []
        self.params: list[ParamInfo] = []
        self.device = torch.device("cpu")

    def setup(self, blocks: list[Block], device: torch.device | str = "cpu", params: list[ParamInfo] | None = None,
              n_samples: int | None = None) -> None:
        """Fix the compression for these input blocks (``params`` adds shapes/layouts; default: flat vectors)."""
        self.in_blocks = list(blocks)
        self.params = list(params) if params is not None else [ParamInfo(b.name, (b.size,)) for b in blocks]
        if [p.name for p in self.params] != [b.name for b in self.in_blocks]:
            raise ValueError("Compressor.setup: params must name the same parameters as blocks, in the same order")
        self.device = torch.device(device)
        self.out_blocks = self._build(n_samples)

    def _build(self, n_samples: int | None) -> list[Block]:
        return list(self.in_blocks)

    def compress_block(self, i: int, g: torch.Tensor) -> torch.Tensor:
        """Part of the compressed gradient contributed by block ``i`` (per-sample gradient ``g[B, d_i]``)."""
        raise NotImplementedError

    def compress_factors(self, i: int, acts: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor | None:
        """Same as :meth:`compress_block` for a Linear-like weight, from its factors.

        The weight's per-sample gradient is ``sum_t outer(grad_out[:, t], acts[:, t])``; ``None`` = not supported,
        the engine materializes it.
        """
        return None

    def combine(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """Join the per-block parts: concatenated, or summed for dense projections (``reduce``)."""
        if self.reduce == "sum":
            return torch.stack(parts).sum(0)
        return torch.cat(parts, dim=1)

    def compress(self, grads: torch.Tensor) -> torch.Tensor:
        """[B, d] full per-sample gradients -> [B, r]."""
        if not self.in_blocks:
            raise RuntimeError(f"{type(self).__name__}.compress called before setup()")
        return self.combine([self.compress_block(i, grads[:, b.start:b.stop]) for i, b in enumerate(self.in_blocks)])

    def state(self) -> dict:
        """What must be stored with the gradients to reproduce them: the class name and seed."""
        return {"name": type(self).__name__, "seed": self.seed}


class IdentityCompressor(Compressor):
    """No compression: the full per-sample gradient."""

    def compress_block(self, i: int, g: torch.Tensor) -> torch.Tensor:
        """The block unchanged."""
        return g

    def compress(self, grads: torch.Tensor) -> torch.Tensor:
        """The gradients unchanged."""
        return grads


def _concat_blocks(names: list[str], sizes: list[int]) -> list[Block]:
    out, start = [], 0
    for name, size in zip(names, sizes):
        if size:
            out.append(Block(name, start, start + size))
            start += size
    return out


class DropoutCompressor(Compressor):
    """Keep ``r`` coordinates of the gradient chosen once from ``seed`` (Eq. 3 of the dropout paper).

    O(r) time and memory: the indices come from Floyd-style sampling without replacement (numpy), and for
    Linear-like weights only the kept coordinates ``sum_t g_t[o] a_t[j]`` are computed.
    """

    def __init__(self, r: int = 4096, seed: int = 0, chunk: int = 1 << 14):
        super().__init__(seed)
        if int(r) < 1:
            raise ValueError(f"compressor.r must be a positive int, got {r!r}")
        self.r = int(r)
        self.chunk = int(chunk)
        self.indices = np.empty(0, dtype=np.int64)

    def _build(self, n_samples: int | None) -> list[Block]:
        d = self.in_blocks[-1].stop if self.in_blocks else 0
        if self.r > d:
            raise ValueError(f"compressor.r={self.r} exceeds the gradient dimension d={d}; use a smaller r or identity")
        self.indices = np.sort(np.random.default_rng(self.seed).choice(d, size=self.r, replace=False)).astype(np.int64)
        self._local: list[torch.Tensor] = []
        for b in self.in_blocks:
            lo, hi = np.searchsorted(self.indices, [b.start, b.stop])
            self._local.append(torch.from_numpy(self.indices[lo:hi] - b.start).to(self.device))
        return _concat_blocks([b.name for b in self.in_blocks], [len(x) for x in self._local])

    def compress_block(self, i: int, g: torch.Tensor) -> torch.Tensor:
        """The kept coordinates of block ``i``."""
        return g[:, self._local[i].to(g.device)].float()

    def compress_factors(self, i: int, acts: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor | None:
        """Only the kept coordinates ``sum_t g_t[o] a_t[j]`` of a Linear-like weight (None for other layouts)."""
        p = self.params[i]
        if p.layout == "other":
            return None
        fan_in, fan_out = p.in_out
        k = self._local[i].to(acts.device)
        rows, cols = (k // fan_in, k % fan_in) if p.layout == "out_in" else (k % fan_out, k // fan_out)
        parts = []
        for c in range(0, len(k), self.chunk):  # bounds the [B, T, chunk] temporaries
            parts.append((grad_out[:, :, rows[c:c + self.chunk]].float() * acts[:, :, cols[c:c + self.chunk]].float()).sum(1))
        return torch.cat(parts, 1) if parts else acts.new_zeros(acts.shape[0], 0, dtype=torch.float32)

    def state(self) -> dict:
        """Name, seed, r and the kept indices."""
        return {**super().state(), "r": self.r, "indices": self.indices.tolist()}


class GaussianCompressor(Compressor):
    """Dense Gaussian projection ``P g`` with ``P[r, d] ~ N(0, 1/r)`` (TRAK-style, Eq. 2 of the dropout paper).

    ``P`` is never stored whole: column chunks are regenerated on ``device`` from ``(seed, block, chunk)`` at
    every call (O(rd) time per sample, Table 7). Generated by the device's RNG, so CPU and GPU runs differ.
    """

    reduce = "sum"

    def __init__(self, r: int = 4096, seed: int = 0, chunk_bytes: int = 1 << 28):
        super().__init__(seed)
        if int(r) < 1:
            raise ValueError(f"compressor.r must be a positive int, got {r!r}")
        self.r = int(r)
        self.chunk_cols = max(1, int(chunk_bytes) // (4 * self.r))

    def _build(self, n_samples: int | None) -> list[Block]:
        return [Block("gaussian", 0, self.r)]

    def matrix_chunk(self, i: int, c: int, width: int, device: torch.device) -> torch.Tensor:
        """Columns ``[c*chunk_cols, c*chunk_cols+width)`` of block ``i``'s slice of ``P``."""
        gen = torch.Generator(device=device).manual_seed(_mix(self.seed, i, c))
        return torch.randn(self.r, width, generator=gen, device=device, dtype=torch.float32) / math.sqrt(self.r)

    def compress_block(self, i: int, g: torch.Tensor) -> torch.Tensor:
        """``P_i g`` with block ``i``'s columns of ``P``, regenerated chunk by chunk."""
        out = torch.zeros(g.shape[0], self.r, device=g.device, dtype=torch.float32)
        for c, c0 in enumerate(range(0, g.shape[1], self.chunk_cols)):
            gc = g[:, c0:c0 + self.chunk_cols].float()
            out += gc @ self.matrix_chunk(i, c, gc.shape[1], g.device).T
        return out

    def state(self) -> dict:
        """Name, seed, r, chunk width and device type (the projection comes from the device's RNG)."""
        return {**super().state(), "r": self.r, "chunk_cols": self.chunk_cols, "device_type": self.device.type}


class SparseRandomProjectionCompressor(Compressor):
    """Li et al.'s very sparse random projection, built by sklearn's ``SparseRandomProjection``.

    ``r=None`` picks the dimension by the Johnson-Lindenstrauss rule (``eps``, needs ``n_samples``). The CSR
    matrix (about ``r * sqrt(d)`` non-zeros at the default density) is applied on ``device`` with torch.sparse.
    """

    reduce = "sum"

    def __init__(self, r: int | None = None, seed: int = 0, eps: float = 0.1, density: float | str = "auto"):
        super().__init__(seed)
        self.r = None if r is None else int(r)
        self.eps = float(eps)
        self.density = density

    def _build(self, n_samples: int | None) -> list[Block]:
        import scipy.sparse as sp
        from sklearn.random_projection import SparseRandomProjection as SkSRP

        if self.r is None and not n_samples:
            raise ValueError("compressor.r is null, so the Johnson-Lindenstrauss rule needs the number of samples: "
                             "pass n_samples to setup() (the engine does when the loader has a dataset) or set r")
        d = self.in_blocks[-1].stop
        srp = SkSRP(n_components=self.r if self.r is not None else "auto", density=self.density, eps=self.eps,
                    dense_output=False, random_state=self.seed)
        srp.fit(sp.csr_matrix((int(n_samples or 1), d), dtype=np.float32))
        self.r = int(srp.n_components_)
        comps = srp.components_.tocsc()
        self._mats = []
        for b in self.in_blocks:
            m = comps[:, b.start:b.stop].tocsr().astype(np.float32)
            self._mats.append(torch.sparse_csr_tensor(torch.from_numpy(m.indptr).long(), torch.from_numpy(m.indices).long(),
                                                      torch.from_numpy(m.data), size=m.shape).to(self.device))
        return [Block("sparse_random_projection", 0, self.r)]

    def compress_block(self, i: int, g: torch.Tensor) -> torch.Tensor:
        """The sparse projection of block ``i``."""
        return (self._mats[i] @ g.float().T).T

    def state(self) -> dict:
        """Name, seed, r, eps and density."""
        return {**super().state(), "r": self.r, "eps": self.eps, "density": self.density}


class LoGraCompressor(Compressor):
    """LoGra (Choe et al. 2024; Eq. 12-13 of the dropout paper): a Kronecker-structured projection.

    Per Linear-like weight, project inputs with ``P_in[r_in, in]`` and output gradients with ``P_out[r_out, out]``, then take their outer product, i.e.
    ``(P_in kron P_out) vec(G)`` with ``vec`` column-major for ``G[out, in]``; ``r_in = r_out = sqrt(r)``.

    Other parameters (biases, norms) get a dense Gaussian projection to ``min(d_i, r_out)`` coordinates.
    Matrices are drawn on the CPU from ``seed`` (device independent) and kept: O(sqrt(r d)) memory (Table 7).
    """

    def __init__(self, r: int = 4096, seed: int = 0, r_in: int | None = None, r_out: int | None = None):
        super().__init__(seed)
        root = math.isqrt(int(r))
        if (r_in is None or r_out is None) and root * root != int(r):
            raise ValueError(f"compressor.r={r} must be a perfect square for LoGra (r_in = r_out = sqrt(r)), "
                             "or set compressor.r_in and compressor.r_out")
        self.r = int(r)
        self.r_in = int(r_in or root)
        self.r_out = int(r_out or root)

    def _gauss(self, i: int, which: int, rows: int, cols: int) -> torch.Tensor:
        if rows * cols > 1 << 28:
            raise ValueError(f"LoGra would need a {rows}x{cols} projection for a non-Linear parameter; select only "
                             "Linear/Conv1D/Conv2d weights (attribution.gradients.parameters)")
        gen = torch.Generator().manual_seed(_mix(self.seed, i, which))
        return (torch.randn(rows, cols, generator=gen, dtype=torch.float32) / math.sqrt(rows)).to(self.device)

    def _build(self, n_samples: int | None) -> list[Block]:
        self._proj: list[tuple[torch.Tensor, ...]] = []
        sizes = []
        for i, (p, b) in enumerate(zip(self.params, self.in_blocks)):
            if p.layout == "other":
                k = min(b.size, self.r_out)
                self._proj.append((self._gauss(i, 2, k, b.size),))
                sizes.append(k)
            else:
                fan_in, fan_out = p.in_out
                self._proj.append((self._gauss(i, 0, self.r_in, fan_in), self._gauss(i, 1, self.r_out, fan_out)))
                sizes.append(self.r_in * self.r_out)
        return _concat_blocks([b.name for b in self.in_blocks], sizes)

    def projections(self, i: int) -> tuple[torch.Tensor, ...]:
        """``(P_in, P_out)`` of a Linear-like weight block, ``(P,)`` of any other block."""
        return self._proj[i]

    def compress_block(self, i: int, g: torch.Tensor) -> torch.Tensor:
        """``(P_in kron P_out) vec(G)`` of block ``i`` (a Gaussian projection for other parameters)."""
        p, proj = self.params[i], self._proj[i]
        g = g.float()
        if p.layout == "other":
            return g @ proj[0].T
        p_in, p_out = proj
        fan_in, fan_out = p.in_out
        if p.layout == "out_in":  # G[out, in] -> P_out G P_in^T, stored [r_in, r_out] (column-major vec)
            return (p_out @ g.view(-1, fan_out, fan_in) @ p_in.T).transpose(1, 2).reshape(g.shape[0], -1)
        return (p_in @ g.view(-1, fan_in, fan_out) @ p_out.T).reshape(g.shape[0], -1)

    def compress_factors(self, i: int, acts: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor | None:
        """Project activations and output gradients before their outer product (dropout paper Eq. 13)."""
        if self.params[i].layout == "other":
            return None
        p_in, p_out = self._proj[i]
        pa = acts.float() @ p_in.T  # [B, T, r_in]
        pg = grad_out.float() @ p_out.T  # [B, T, r_out]
        return torch.einsum("bti,bto->bio", pa, pg).reshape(acts.shape[0], -1)

    def state(self) -> dict:
        """Name, seed, r, r_in and r_out."""
        return {**super().state(), "r": self.r, "r_in": self.r_in, "r_out": self.r_out}


def _mix(seed: int, *parts: int) -> int:
    """A deterministic 63-bit seed from ``seed`` and integer parts (no Python hash randomization)."""
    h = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *(int(p) for p in parts)]).generate_state(2, np.uint32)
    return int(h[0]) << 31 ^ int(h[1])
