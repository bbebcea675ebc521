"""Kronecker factors of Linear / Conv1D / Conv2d layers for K-FAC and EK-FAC influence.

They are gathered with forward hooks like the gradient engine's (``attribution/gradients.py``), in kronfluence
1.0.1's conventions.

For a layer with per-sample gradient ``G = sum_t g_t a_t^T`` (``a``: layer input, with a trailing 1 when the bias
is selected; ``g``: gradient of the per-sample loss w.r.t. the layer output; ``t``: tokens or conv patches), K-FAC
(Martens & Grosse 2015) approximates the layer's Fisher by ``A kron S`` with ``A = E[a a^T]`` and ``S = E[g g^T]``,
both averaged over the rows ``(sample, t)`` the layer saw (kronfluence's ``count``). EK-FAC (George et al. 2018;
Grosse et al. 2023 Eq. 20) keeps the eigenbasis ``Q_A kron Q_S`` and replaces the eigenvalues by the exact
diagonal of the per-sample Fisher in that basis, ``Lambda[o, i] = (1/n) sum_k (Q_S^T G_k Q_A)[o, i]^2``.

Pseudo-gradient (kronfluence's ``use_empirical_fisher``): ``empirical_fisher=False`` (kronfluence's default, the true
Fisher) differentiates the loss at labels sampled from the model's own predictive distribution, ``True`` at the given
labels.
Sampled labels are a deterministic function of (seed, sample index) (:func:`sampled_labels`), so both passes and any
re-run see the same labels. Damping is a scoring-time choice (``scoring/kfac.py``), as kronfluence's
``ScoreArguments.damping_factor``.

Cost: one forward/backward pass for ``A``/``S`` and, for EK-FAC, a second one for ``Lambda``; memory O(in^2 + out^2)
per layer plus a per-sample ``[out, in]`` temporary bounded by ``max_chunk_bytes``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gradsift.attribution.gradient_set import Block
from gradsift.attribution.gradients import hook_rule, progress_bar, select_parameters

STRATEGIES = ("kfac", "ekfac")
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


# -- sampled labels for the true Fisher ------------------------------------------------------------------------

def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``x * c mod 2^32`` for int64 tensors holding 32-bit values, without overflowing int64."""
    lo, hi = x & 0xFFFF, x >> 16
    return ((lo * c) + (((hi * c) & 0xFFFF) << 16)) & 0xFFFFFFFF


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (lowbias32, Wellons 2018) of int64 tensors holding 32-bit values."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def sample_uniforms(index: torch.Tensor, seed: int) -> torch.Tensor:
    """One float64 uniform in [0, 1) per sample index, a function of (seed, index) only.

    The same on every device and for any batching.

    Args:
        index: the samples' dataset indices.
        seed: the sampling seed.

    Returns:
        float64 uniforms, one per index.
    """
    s = _hash32(torch.tensor(int(seed) & 0xFFFFFFFF, dtype=torch.int64, device=index.device))
    x = _hash32(_hash32(index.to(torch.int64) & 0xFFFFFFFF) ^ s)
    return x.double() / 2.0 ** 32


def sampled_labels(probs: torch.Tensor, index: torch.Tensor, seed: int) -> torch.Tensor:
    """Labels drawn from ``probs`` [B, C] by inverse CDF at :func:`sample_uniforms` (the true Fisher's targets).

    Args:
        probs: predicted class probabilities, one row per sample.
        index: the samples' dataset indices [B].
        seed: the sampling seed.

    Returns:
        int64 labels [B].
    """
    cdf = probs.double().cumsum(-1)
    u = sample_uniforms(index, seed) * cdf[:, -1]
    return torch.searchsorted(cdf, u[:, None], right=True).squeeze(1).clamp_max(probs.shape[1] - 1)


# -- the factors -----------------------------------------------------------------------------------------------

@dataclass
class LayerFactors:
    """Eigendecomposed Kronecker factors of one layer.

    The layer's gradient as a matrix is ``[out, in]`` (``in`` includes the bias column, last, when ``bias`` is set);
    ``weight``/``bias`` name the selected parameters it covers and ``layout`` how the weight is flattened in the
    gradient vector (``"out_in"``: nn.Linear / nn.Conv2d, ``"in_out"``: transformers' Conv1D).
    """

    module: str
    weight: str
    bias: str | None
    layout: str
    a_vecs: np.ndarray  # [in, in] eigenvectors of A (columns)
    a_vals: np.ndarray  # [in]
    s_vecs: np.ndarray  # [out, out] eigenvectors of S
    s_vals: np.ndarray  # [out]
    lam: np.ndarray | None = None  # [out, in] EK-FAC eigen-corrected diagonal; None for K-FAC factors

    @property
    def shape(self) -> tuple[int, int]:
        """``(out, in)`` of the layer's gradient matrix (``in`` with the bias column)."""
        return len(self.s_vals), len(self.a_vals)


@dataclass
class KroneckerFactors:
    """Per-layer factors plus the uncompressed parameter ``blocks`` (engine order) they refer to.

    ``reference_gradient``: the mean per-sample-loss gradient of the reference split in that uncompressed space
    (gathered when a reference loader is given), which influence on compressed gradients needs (``scoring/kfac.py``).
    """

    layers: list[LayerFactors]
    blocks: list[Block]
    strategy: str
    empirical_fisher: bool
    n_samples: int
    reference_gradient: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        """Width of the uncompressed gradient vector the factors refer to."""
        return self.blocks[-1].stop if self.blocks else 0

    def block(self, name: str) -> Block:
        """The uncompressed block of parameter ``name``.

        Args:
            name: a parameter name of ``blocks``.

        Returns:
            Its column range.
        """
        for b in self.blocks:
            if b.name == name:
                return b
        raise KeyError(name)

    def save(self, path: str) -> None:
        """Write one ``.npz`` with every array (no pickles).

        Args:
            path: the file to write.
        """
        arrays: dict[str, np.ndarray] = {
            "block_names": np.array([b.name for b in self.blocks]),
            "block_bounds": np.array([[b.start, b.stop] for b in self.blocks], dtype=np.int64).reshape(-1, 2),
            "header": np.array([self.strategy, str(int(self.empirical_fisher)), str(self.n_samples)]),
            "layer_names": np.array([[f.module, f.weight, f.bias or "", f.layout] for f in self.layers]).reshape(-1, 4),
        }
        for i, f in enumerate(self.layers):
            for key in ("a_vecs", "a_vals", "s_vecs", "s_vals", "lam"):
                if getattr(f, key) is not None:
                    arrays[f"{i}.{key}"] = getattr(f, key)
        if self.reference_gradient is not None:
            arrays["reference_gradient"] = self.reference_gradient
        np.savez(path, **arrays)

    @classmethod
    def load(cls, path: str) -> "KroneckerFactors":
        """Read what :meth:`save` wrote.

        Args:
            path: the ``.npz`` file.

        Returns:
            The factors.
        """
        with np.load(path, allow_pickle=False) as z:
            blocks = [Block(str(n), int(s), int(e)) for n, (s, e) in zip(z["block_names"], z["block_bounds"])]
            strategy, empirical, n = (str(x) for x in z["header"])
            layers = []
            for i, (module, weight, bias, layout) in enumerate(z["layer_names"]):
                arr = {k: z[f"{i}.{k}"] if f"{i}.{k}" in z else None for k in ("a_vecs", "a_vals", "s_vecs", "s_vals", "lam")}
                layers.append(LayerFactors(str(module), str(weight), str(bias) or None, str(layout), **arr))
            ref = z["reference_gradient"] if "reference_gradient" in z else None
        return cls(layers, blocks, strategy, empirical == "1", int(n), ref)


# -- the gatherer ----------------------------------------------------------------------------------------------

@dataclass
class _Layer:
    """One covered module while gathering: its parameters' names and the running sums."""

    module: nn.Module
    name: str
    rule: str
    weight: str
    bias: str | None
    a_sum: torch.Tensor | None = None
    s_sum: torch.Tensor | None = None
    a_count: float = 0.0
    s_count: float = 0.0
    lam_sum: torch.Tensor | None = None
    q_a: torch.Tensor | None = None
    q_s: torch.Tensor | None = None
    calls: int = 0  # most calls of the module in one batch (first pass); > 1 = shared across the forward
    rotated: torch.Tensor | None = None  # a shared module's per-sample gradients in the eigenbasis [B, out, in]

    @property
    def layout(self) -> str:
        return "in_out" if self.rule == "conv1d" else "out_in"


class KroneckerFactorGatherer:
    """Gather K-FAC / EK-FAC factors of the layers whose weights ``parameters`` selects (the engine's spec).

    Every selected parameter must be the weight or bias of an nn.Linear (peft's LoRA adapters are nn.Linear),
    transformers' Conv1D or an nn.Conv2d with groups=1, and a selected bias needs its layer's weight selected too.
    ``dtype`` is the covariance accumulation dtype (kronfluence: float32); eigendecompositions run in float64.
    """

    def __init__(self, parameters: str | list[str] = "all", strategy: str = "ekfac", empirical_fisher: bool = False,
                 seed: int = 0, dtype: str = "float32", device: str | None = None, progress: bool = True,
                 max_chunk_bytes: int = 1 << 28):
        if strategy not in STRATEGIES:
            raise ValueError(f"kfac.strategy must be one of {STRATEGIES}, got {strategy!r}")
        if not isinstance(empirical_fisher, bool):
            raise ValueError(f"empirical_fisher must be true or false (kronfluence's use_empirical_fisher), got "
                             f"{empirical_fisher!r}")
        if dtype not in _DTYPES:
            raise ValueError(f"kfac.dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        self.parameters, self.strategy, self.empirical_fisher, self.seed = parameters, strategy, empirical_fisher, int(seed)
        self.dtype, self.device, self.progress = _DTYPES[dtype], device, progress
        self.max_chunk_bytes = int(max_chunk_bytes)

    # ---- planning -------------------------------------------------------------------------------------
    def plan(self, module: nn.Module) -> tuple[list[_Layer], list[Block]]:
        """The covered layers and the uncompressed blocks of the selected parameters (engine order)."""
        params = select_parameters(module, self.parameters)
        blocks, start = [], 0
        for name, p in params.items():
            blocks.append(Block(name, start, start + p.numel()))
            start += p.numel()
        by_id = {id(p): name for name, p in params.items()}
        layers, covered = [], set()
        for mname, m in module.named_modules():
            rule = hook_rule(m)
            weight = getattr(m, "weight", None)
            if rule not in ("linear", "conv1d", "conv2d") or not isinstance(weight, nn.Parameter) or id(weight) not in by_id:
                continue
            bias = getattr(m, "bias", None)
            bias_name = by_id.get(id(bias)) if isinstance(bias, nn.Parameter) else None
            layers.append(_Layer(m, mname, rule, by_id[id(weight)], bias_name))
            covered.update(x for x in (by_id[id(weight)], bias_name) if x)
        missing = [n for n in params if n not in covered]
        if missing:
            raise ValueError(f"K-FAC covers weights (and their biases) of nn.Linear, transformers' Conv1D and nn.Conv2d "
                             f"(groups=1) only, but attribution.gradients.parameters={self.parameters!r} also selects "
                             f"{missing[:10]}; select only those layers' parameters (a name pattern)")
        if len({id(lay.module) for lay in layers}) != len(layers) or len({lay.weight for lay in layers}) != len(layers):
            raise ValueError("K-FAC needs every covered weight to belong to one module (tied weights are not supported)")
        return layers, blocks

    # ---- hooks ----------------------------------------------------------------------------------------
    @staticmethod
    def _rows(lay: _Layer, inp: torch.Tensor, gout: torch.Tensor, batch: dict, dtype: torch.dtype
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``acts [B, T, in(+1)]``, ``gout [B, T, out]`` and kronfluence's row mask ``[B, T]`` (None: all rows)."""
        m, B = lay.module, gout.shape[0]
        if lay.rule == "conv2d":
            acts = F.unfold(inp, m.kernel_size, m.dilation, m.padding, m.stride).transpose(1, 2)
            gout = gout.reshape(B, gout.shape[1], -1).transpose(1, 2)
        else:
            acts = inp.reshape(B, -1, inp.shape[-1])
            gout = gout.reshape(B, -1, gout.shape[-1])
        acts, gout = acts.to(dtype), gout.to(dtype)
        if lay.bias is not None:
            acts = torch.cat([acts, acts.new_ones(*acts.shape[:2], 1)], dim=-1)
        mask = batch.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.ndim == 2 and mask.shape == acts.shape[:2] and lay.rule != "conv2d":
            mask = mask.to(acts.device, dtype)
            return acts * mask[..., None], gout, mask
        return acts, gout, None

    def _covariances(self, lay: _Layer, acts: torch.Tensor, gout: torch.Tensor, mask: torch.Tensor | None) -> None:
        a, g = acts.reshape(-1, acts.shape[-1]), gout.reshape(-1, gout.shape[-1])
        count = float(mask.sum()) if mask is not None else float(a.shape[0])
        lay.a_sum = a.T @ a if lay.a_sum is None else lay.a_sum.addmm_(a.T, a)
        lay.s_sum = g.T @ g if lay.s_sum is None else lay.s_sum.addmm_(g.T, g)
        lay.a_count += count
        lay.s_count += count

    def _diagonal(self, lay: _Layer, acts: torch.Tensor, gout: torch.Tensor) -> None:
        """Add this call's part of EK-FAC's diagonal.

        ``sum_k (Q_S^T G_k Q_A)^2`` goes to ``lay.lam_sum`` for a module called once per batch; a shared module adds
        its rotated per-sample gradients to ``lay.rotated``, squared at batch end.
        """
        ra, rg = acts @ lay.q_a, gout @ lay.q_s  # [B, T, in], [B, T, out]
        B, T = ra.shape[:2]
        if lay.calls == 1 and T == 1:  # (g a^T)^2 = g^2 (a^2)^T: no per-sample matrix at all
            self._add_lam(lay, rg[:, 0].square().T @ ra[:, 0].square())
            return
        step = max(1, self.max_chunk_bytes // max(1, ra.element_size() * ra.shape[-1] * rg.shape[-1]))
        parts = []
        for s in range(0, B, step):
            part = torch.einsum("bto,bti->boi", rg[s:s + step], ra[s:s + step])
            if lay.calls == 1:
                self._add_lam(lay, part.square().sum(0))
            else:
                parts.append(part)
        if parts:
            part = torch.cat(parts)
            lay.rotated = part if lay.rotated is None else lay.rotated + part

    @staticmethod
    def _add_lam(lay: _Layer, sq: torch.Tensor) -> None:
        lay.lam_sum = sq if lay.lam_sum is None else lay.lam_sum.add_(sq)

    def _pass(self, module: nn.Module, loader: Iterable[dict], layers: list[_Layer], second: bool, desc: str) -> int:
        """One forward/backward over ``loader``: covariances (first pass) or the EK-FAC diagonal (second)."""
        device = torch.device(self.device) if self.device else next(module.parameters()).device
        by_module = {lay.module: lay for lay in layers}
        targets = [lay.module.weight for lay in layers]
        state: dict = {}
        n = 0

        def fwd_hook(m: nn.Module, args: tuple, out: torch.Tensor) -> None:
            if not (isinstance(out, torch.Tensor) and out.requires_grad):
                return
            inp = args[0].detach()

            def bwd(g: torch.Tensor, lay: _Layer = by_module[m], inp: torch.Tensor = inp) -> None:
                acts, gout, mask = self._rows(lay, inp, g.detach(), state["batch"], self.dtype)
                if second:
                    self._diagonal(lay, acts, gout)
                else:
                    self._covariances(lay, acts, gout, mask)
                    state["calls"][lay.name] = state["calls"].get(lay.name, 0) + 1

            out.register_hook(bwd)

        handles = [m.register_forward_hook(fwd_hook) for m in by_module]
        try:
            for batch in progress_bar(loader, desc, self.progress):
                batch = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
                batch = self._pseudo_labelled(module, batch)
                state["batch"], state["calls"] = batch, {}
                with torch.enable_grad():
                    loss = module.per_sample_loss(batch)
                    if loss.ndim != 1:
                        raise ValueError(f"{type(module).__name__}.per_sample_loss must return shape [B], got "
                                         f"{tuple(loss.shape)}")
                    torch.autograd.grad(loss.float().sum(), targets, allow_unused=True)
                n += int(loss.shape[0])
                for lay in layers:
                    lay.calls = max(lay.calls, state["calls"].get(lay.name, 0))
                    if lay.rotated is not None:
                        self._add_lam(lay, lay.rotated.square().sum(0))
                        lay.rotated = None
        finally:
            for h in handles:
                h.remove()
        return n

    def _pseudo_labelled(self, module: nn.Module, batch: dict) -> dict:
        """The batch with labels sampled from the model (true Fisher), or unchanged (empirical Fisher)."""
        if self.empirical_fisher:
            return batch
        if not callable(getattr(module, "logits", None)):
            raise ValueError(f"the true Fisher samples labels from module.logits(batch), which {type(module).__name__} "
                             "does not have; use the empirical Fisher (scorer.empirical_fisher=true)")
        with torch.no_grad():
            probs = module.logits(batch).float().softmax(-1)
        return {**batch, "label": sampled_labels(probs, batch["index"], self.seed).to(batch["label"].device)}

    # ---- the whole loader -----------------------------------------------------------------------------
    @torch.no_grad()
    def gather(self, module: nn.Module, loader: Iterable[dict], reference: Iterable[dict] | None = None
               ) -> KroneckerFactors:
        """Factors of every covered layer over ``loader`` (the training split, unshuffled), eval mode.

        Args:
            module: an attributable module (``per_sample_loss(batch)``; ``logits(batch)`` for the true Fisher).
            loader: the training batches the factors average over.
            reference: batches of the reference split; when given, their mean loss gradient is stored as
                ``reference_gradient`` (needed to score compressed gradients).

        Returns:
            The factors, eigendecomposed (and eigen-corrected for ``strategy="ekfac"``).
        """
        if not callable(getattr(module, "per_sample_loss", None)):
            raise TypeError(f"{type(module).__name__} has no per_sample_loss(batch) -> Tensor[B]; see gradsift.models.base")
        was_training = module.training
        module.eval()
        try:
            layers, blocks = self.plan(module)
            n = self._pass(module, loader, layers, second=False, desc="kronecker factors")
            if n == 0:
                raise ValueError("KroneckerFactorGatherer.gather got an empty loader")
            eig = {}
            for lay in layers:
                if lay.a_sum is None:
                    raise ValueError(f"layer {lay.name!r} (parameter {lay.weight}) was never used by "
                                     f"{type(module).__name__}.per_sample_loss, so it has no Kronecker factors; "
                                     "leave it out of attribution.gradients.parameters")
                a_vals, a_vecs = _eigh(lay.a_sum / lay.a_count)
                s_vals, s_vecs = _eigh(lay.s_sum / lay.s_count)
                eig[lay.name] = (a_vals, a_vecs, s_vals, s_vecs)
                lay.q_a, lay.q_s = a_vecs.to(self.dtype), s_vecs.to(self.dtype)
                lay.a_sum = lay.s_sum = None
            if self.strategy == "ekfac":
                self._pass(module, loader, layers, second=True, desc="eigen-corrected diagonal")
            out = []
            for lay in layers:
                a_vals, a_vecs, s_vals, s_vecs = (t.cpu().numpy() for t in eig[lay.name])
                lam = None
                if self.strategy == "ekfac":
                    lam = (lay.lam_sum.double() / n).cpu().numpy() if lay.lam_sum is not None \
                        else np.zeros((len(s_vals), len(a_vals)))
                out.append(LayerFactors(lay.name, lay.weight, lay.bias, lay.layout, a_vecs, a_vals, s_vecs, s_vals, lam))
            ref = mean_gradient(module, reference, self.parameters, self.device) if reference is not None else None
        finally:
            module.train(was_training)
        return KroneckerFactors(out, blocks, self.strategy, self.empirical_fisher, n, ref,
                                meta={"parameters": [b.name for b in blocks], "seed": self.seed})


def _eigh(cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues and eigenvectors of a symmetrised covariance, in float64 (kronfluence's eigendecomposition_dtype)."""
    c = cov.double()
    return torch.linalg.eigh((c + c.T) / 2)


def mean_gradient(module: nn.Module, loader: Iterable[dict], parameters: str | list[str] = "all",
                  device: str | None = None) -> np.ndarray:
    """Mean per-sample-loss gradient over ``loader`` w.r.t. the selected parameters, flattened in engine order.

    Args:
        module: an attributable module.
        loader: the batches to average over.
        parameters: the engine's parameter spec.
        device: where to compute (default: the module's device).

    Returns:
        float64 vector [d] (uncompressed).
    """
    params = select_parameters(module, parameters)
    dev = torch.device(device) if device else next(module.parameters()).device
    total = [torch.zeros(p.numel(), dtype=torch.float64, device=dev) for p in params.values()]
    n = 0
    was_training = module.training
    module.eval()
    try:
        for batch in loader:
            batch = {k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
            with torch.enable_grad():
                loss = module.per_sample_loss(batch)
                grads = torch.autograd.grad(loss.float().sum(), list(params.values()), allow_unused=True)
            for t, g in zip(total, grads):
                if g is not None:
                    t += g.reshape(-1).double()
            n += int(loss.shape[0])
    finally:
        module.train(was_training)
    if n == 0:
        raise ValueError("mean_gradient got an empty loader")
    return (torch.cat(total) / n).cpu().numpy()


def weight_matrix(vector: np.ndarray, factors: KroneckerFactors, layer: LayerFactors) -> np.ndarray:
    """The layer's part of an uncompressed gradient vector as its ``[out, in(+1)]`` matrix (bias column last)."""
    wb = factors.block(layer.weight)
    out, fan_in = layer.shape[0], layer.shape[1] - (layer.bias is not None)
    w = vector[..., wb.start:wb.stop]
    if layer.layout == "in_out":
        w = np.swapaxes(w.reshape(*w.shape[:-1], fan_in, out), -1, -2)
    else:
        w = w.reshape(*w.shape[:-1], out, fan_in)
    if layer.bias is None:
        return w
    bb = factors.block(layer.bias)
    return np.concatenate([w, vector[..., bb.start:bb.stop, None]], axis=-1)


def put_weight_matrix(vector: np.ndarray, factors: KroneckerFactors, layer: LayerFactors, mat: np.ndarray) -> None:
    """Write a layer's ``[out, in(+1)]`` matrix back into an uncompressed gradient vector.

    The inverse of :func:`weight_matrix`.

    Args:
        vector: the uncompressed vector(s) ``[..., d]`` to write into.
        factors: the factors whose blocks locate the layer's columns.
        layer: the layer.
        mat: its matrix ``[..., out, in(+1)]``.
    """
    wb = factors.block(layer.weight)
    w = mat[..., :-1] if layer.bias is not None else mat
    if layer.layout == "in_out":
        w = np.swapaxes(w, -1, -2)
    vector[..., wb.start:wb.stop] = w.reshape(*w.shape[:-2], -1)
    if layer.bias is not None:
        bb = factors.block(layer.bias)
        vector[..., bb.start:bb.stop] = mat[..., -1]


__all__ = ["KroneckerFactorGatherer", "KroneckerFactors", "LayerFactors", "sampled_labels", "sample_uniforms",
           "mean_gradient", "weight_matrix", "put_weight_matrix", "STRATEGIES"]
