"""The per-sample gradient engine shared by every method: a scorer never computes gradients itself.

``PerSampleGradients(parameters=..., compressor=...)`` selects parameters by name, then streams a dataloader
through ``module.per_sample_loss`` and returns a :class:`GradientSet` of (compressed) per-sample gradients.

One batch costs one forward and one backward of ``per_sample_loss(batch).sum()`` (a sum, so row b of every
output gradient is exactly sample b's). Hooks record each layer's input and output gradient; per-sample
parameter gradients follow in closed form: Linear / transformers' Conv1D / Conv2d (after ``unfold``) give
``sum_t outer(grad_out_t, a_t)`` for the weight and ``sum_t grad_out_t`` for the bias; Embedding scatters
output gradients into the used rows; LayerNorm gives ``sum_t grad_out_t * xhat_t``. peft's LoRA adapters are
plain Linear modules, so the Linear rule covers them. Parameters of any other module fall back to
``torch.func`` (``vmap(grad)``). Gradients are compressed per layer as soon as they exist, from the factors
where the compressor supports it, so no [B, d] matrix is formed unless the compressor is the identity.
"""

from __future__ import annotations

import contextlib
import re
import sys
import threading
from collections import deque
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from gradsift.attribution.compressors import Compressor, IdentityCompressor, ParamInfo
from gradsift.attribution.gradient_set import Block, GradientSet

PARAMETER_PRESETS = ("last_layer", "last_layer_weight", "all", "lora")


def select_parameters(module: nn.Module, spec: str | Iterable[str] = "last_layer") -> dict[str, nn.Parameter]:
    """Trainable parameters chosen by ``spec``.

    ``"all"``: every trainable parameter; ``"last_layer"``: the parameters of the last module (in registration
    order) that owns trainable parameters directly (e.g. the classifier head); ``"last_layer_weight"``: that
    module's ``weight`` only, no bias (the OGA authors' ``autograd.grad(loss, model.linear.weight)``,
    ``cifar-10-100n/OD-experiment.py``: 512 x 10 = 5,120 numbers for the CIFAR ResNet-34); ``"lora"``: parameters whose
    name contains ``lora_``; otherwise a regex or a list of regexes matched (``re.search``) against names.
    """
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError(f"{type(module).__name__} has no trainable parameters")
    if spec == "all":
        chosen = named
    elif spec in ("last_layer", "last_layer_weight"):
        owners = [(mn, m) for mn, m in module.named_modules()
                  if any(p.requires_grad for p in m.parameters(recurse=False))]
        last_name, last = owners[-1]
        prefix = f"{last_name}." if last_name else ""
        chosen = [(prefix + n, p) for n, p in last.named_parameters(recurse=False) if p.requires_grad
                  and (spec == "last_layer" or n == "weight")]
    elif spec == "lora":
        chosen = [(n, p) for n, p in named if "lora_" in n]
    else:
        patterns = [spec] if isinstance(spec, str) else list(spec)
        chosen = [(n, p) for n, p in named if any(re.search(pt, n) for pt in patterns)]
    if not chosen:
        names = [n for n, _ in named][:20]
        raise ValueError(f"attribution.gradients.parameters={spec!r} matched no trainable parameter; "
                         f"available names start with {names}")
    return dict(chosen)


def _is_hf_conv1d(m: nn.Module) -> bool:
    # transformers is optional and slow to import: a Conv1D instance can only exist once its module is imported
    mod = sys.modules.get("transformers.pytorch_utils")
    return mod is not None and isinstance(m, mod.Conv1D)


def hook_rule(m: nn.Module) -> str | None:
    """Name of the closed-form per-sample rule for ``m``'s own parameters, or None (torch.func fallback)."""
    if isinstance(m, nn.Linear):
        return "linear"
    if _is_hf_conv1d(m):
        return "conv1d"
    if isinstance(m, nn.Conv2d) and m.groups == 1 and m.padding_mode == "zeros" and not isinstance(m.padding, str):
        return "conv2d"
    if isinstance(m, nn.Embedding) and m.max_norm is None and not m.scale_grad_by_freq:
        return "embedding"
    if isinstance(m, nn.LayerNorm) and m.elementwise_affine:
        return "layernorm"
    return None


_WEIGHT_LAYOUT = {"linear": "out_in", "conv2d": "out_in", "conv1d": "in_out"}


class PerSampleGradients:
    """Exact per-sample gradients of ``per_sample_loss`` w.r.t. the selected parameters, compressed on the fly.

    ``autocast``: ``"bf16"`` runs forward/backward under bfloat16 autocast (GPU speed; gradients are then
    approximate); ``None`` (default) keeps float32. ``max_chunk_bytes`` bounds any materialized per-sample
    weight-gradient temporary (samples are processed in chunks below it).
    """

    def __init__(self, parameters: str | list[str] = "last_layer", compressor: Compressor | None = None,
                 device: str | None = None, progress: bool = True, autocast: str | None = None,
                 max_chunk_bytes: int = 1 << 30):
        if autocast not in (None, "bf16", "fp16"):
            raise ValueError(f"attribution.gradients.autocast must be null, 'bf16' or 'fp16', got {autocast!r}")
        self.parameters = parameters
        self.compressor = compressor or IdentityCompressor()
        self.device = device
        self.progress = progress
        self.autocast = autocast
        self.max_chunk_bytes = int(max_chunk_bytes)

    def blocks(self, params: dict[str, nn.Parameter]) -> list[Block]:
        """One block per selected parameter, in selection order: the uncompressed column layout."""
        out, start = [], 0
        for name, p in params.items():
            out.append(Block(name, start, start + p.numel()))
            start += p.numel()
        return out

    # ---- planning -------------------------------------------------------------------------------------
    def _plan(self, module: nn.Module, params: dict[str, nn.Parameter]):
        """Which (module, attribute) uses of each selected parameter have a hook rule; the rest fall back."""
        owners: dict[int, list[tuple[nn.Module, str]]] = {}
        for m in module.modules():
            for attr, p in m.named_parameters(recurse=False):
                owners.setdefault(id(p), []).append((m, attr))
        hooked: dict[nn.Module, list[tuple[str, int]]] = {}
        fallback: list[str] = []
        infos: list[ParamInfo] = []
        for i, (name, p) in enumerate(params.items()):
            uses = owners.get(id(p), [])
            rules = [hook_rule(m) for m, _ in uses]
            ok = bool(uses) and all(r is not None and a in ("weight", "bias") for r, (_, a) in zip(rules, uses))
            if ok:
                for m, attr in uses:
                    hooked.setdefault(m, []).append((attr, i))
            else:
                fallback.append(name)
            # a weight used only by Linear-like layers of one storage layout can be compressed from its factors
            layouts = {_WEIGHT_LAYOUT.get(r) if a == "weight" else None for r, (_, a) in zip(rules, uses)}
            layout = layouts.pop() if ok and len(layouts) == 1 and None not in layouts else "other"
            infos.append(ParamInfo(name, tuple(p.shape), layout))
        return hooked, fallback, infos

    # ---- one batch ------------------------------------------------------------------------------------
    def _autocast(self, device: torch.device):
        if self.autocast is None:
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.autocast == "bf16" else torch.float16
        return torch.autocast(device_type=device.type, dtype=dtype)

    def compress_batch(self, module: nn.Module, batch: dict, params: dict[str, nn.Parameter], plan) -> torch.Tensor:
        """[B, r] compressed per-sample gradients of one batch (compressor already set up)."""
        hooked, fallback, _ = plan
        names = list(params)
        parts: list[torch.Tensor | None] = [None] * len(names)

        def add(i: int, part: torch.Tensor) -> None:
            parts[i] = part if parts[i] is None else parts[i] + part

        handles = []
        n_rows: list[int] = []

        def fwd_hook(m: nn.Module, args: tuple, out: torch.Tensor) -> None:
            if not (isinstance(out, torch.Tensor) and out.requires_grad):
                return
            inp = args[0].detach()
            out.register_hook(lambda g, m=m, inp=inp: self._contribute(m, hooked[m], inp, g, n_rows[0], add))

        try:
            for m in hooked:
                handles.append(m.register_forward_hook(fwd_hook))
            with torch.enable_grad():
                dev = next(iter(params.values())).device
                with self._autocast(dev):
                    loss = module.per_sample_loss(batch)
                if loss.ndim != 1:
                    raise ValueError(f"{type(module).__name__}.per_sample_loss must return shape [B], got {tuple(loss.shape)}")
                n_rows.append(loss.shape[0])
                targets = list({id(params[names[i]]): params[names[i]] for uses in hooked.values() for _, i in uses}.values())
                if targets:
                    torch.autograd.grad(loss.float().sum(), targets, allow_unused=True)
        finally:
            for h in handles:
                h.remove()
        if fallback:
            for name, g in self._torch_func(module, batch, {n: params[n] for n in fallback}).items():
                add(names.index(name), self.compressor.compress_block(names.index(name), g.reshape(g.shape[0], -1)))
        B = n_rows[0]
        for i, p in enumerate(parts):  # a parameter unused by this batch has zero gradient
            if p is None:
                parts[i] = self.compressor.compress_block(i, torch.zeros(B, params[names[i]].numel(), device=dev, dtype=torch.float32))
        return self.compressor.combine(parts)

    def _contribute(self, m: nn.Module, uses: list[tuple[str, int]], inp: torch.Tensor, g_out: torch.Tensor, B: int,
                    add) -> None:
        """Per-sample contributions of one call of ``m`` to each of its selected parameters, compressed."""
        rule = hook_rule(m)
        comp = self.compressor
        if rule in ("linear", "conv1d", "conv2d"):
            if rule == "conv2d":
                acts = F.unfold(inp, m.kernel_size, m.dilation, m.padding, m.stride).transpose(1, 2)
                gout = g_out.reshape(B, g_out.shape[1], -1).transpose(1, 2)
            else:
                acts = inp.reshape(B, -1, inp.shape[-1])
                gout = g_out.reshape(B, -1, g_out.shape[-1])
            for attr, i in uses:
                if attr == "bias":
                    add(i, comp.compress_block(i, gout.float().sum(1)))
                    continue
                part = comp.compress_factors(i, acts, gout)
                if part is None:
                    eq = "bti,bto->bio" if rule == "conv1d" else "bti,bto->boi"
                    part = self._chunked(i, B, acts.shape[-1] * gout.shape[-1],
                                         lambda s: torch.einsum(eq, acts[s].float(), gout[s].float()))
                add(i, part)
        elif rule == "embedding":
            idx = inp.reshape(B, -1)
            gout = g_out.reshape(B, -1, m.embedding_dim).float()
            if m.padding_idx is not None:
                gout = gout * (idx != m.padding_idx).unsqueeze(-1)
            for _, i in uses:
                add(i, self._chunked(i, B, m.num_embeddings * m.embedding_dim, lambda s: _embedding_grads(idx[s], gout[s], m.num_embeddings)))
        elif rule == "layernorm":
            nd = len(m.normalized_shape)
            xhat = F.layer_norm(inp.float(), m.normalized_shape, eps=m.eps)
            gout = g_out.float()
            for attr, i in uses:
                t = gout * xhat if attr == "weight" else gout
                add(i, comp.compress_block(i, t.reshape(B, -1, *t.shape[t.ndim - nd:]).sum(1).reshape(B, -1)))

    def _chunked(self, i: int, B: int, d: int, make) -> torch.Tensor:
        """Compress materialized per-sample gradients ``make(slice) -> [b, ...]`` in sample chunks under the budget."""
        step = max(1, self.max_chunk_bytes // max(1, 4 * d))
        out = [self.compressor.compress_block(i, make(slice(s, s + step)).reshape(-1, d)) for s in range(0, B, step)]
        return torch.cat(out) if len(out) > 1 else out[0]

    def _torch_func(self, module: nn.Module, batch: dict, params: dict[str, nn.Parameter]) -> dict[str, torch.Tensor]:
        tensors = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
        with torch.enable_grad(), self._autocast(next(iter(params.values())).device):
            return self._per_sample_fn(module)({n: p.detach() for n, p in params.items()}, tensors)

    def _per_sample_fn(self, module: nn.Module):
        wrapper = _LossOf(module)

        def loss_one(p: dict[str, torch.Tensor], sample: dict) -> torch.Tensor:
            batch = {k: v.unsqueeze(0) for k, v in sample.items()}
            return functional_call(wrapper, {f"m.{n}": t for n, t in p.items()}, (batch,), strict=False).float()

        return vmap(grad(loss_one), in_dims=(None, 0))

    def compute(self, module: nn.Module, batch: dict, params: dict[str, nn.Parameter]) -> torch.Tensor:
        """[B, d] flattened per-sample gradients of one batch by ``torch.func`` (uncompressed reference)."""
        g = self._torch_func(module, batch, params)
        return torch.cat([g[n].reshape(g[n].shape[0], -1) for n in params], dim=1)

    # ---- the whole loader -----------------------------------------------------------------------------
    def prepare(self, module: nn.Module, n_samples: int | None = None):
        """Select parameters, plan hooks and set the compressor up; returns ``(params, plan)``."""
        device = torch.device(self.device) if self.device else next(module.parameters()).device
        params = select_parameters(module, self.parameters)
        plan = self._plan(module, params)
        self.compressor.setup(self.blocks(params), device, params=plan[2], n_samples=n_samples)
        return params, plan

    @torch.no_grad()
    def gather(self, module: nn.Module, loader: Iterable[dict], desc: str = "gradients", store=None) -> GradientSet | None:
        """Stream ``loader`` and return the compressed per-sample gradients of every sample, in loader order.

        With ``store`` (a :class:`gradsift.attribution.store.GradientStore`) rows are written to disk shard by
        shard, batches already in complete shards are skipped (resume), and the stored set is returned; a store
        with ``world_size > 1`` returns None (merge with :func:`gradsift.attribution.distributed.gather_sharded`).
        """
        was_training = module.training
        module.eval()
        device = torch.device(self.device) if self.device else next(module.parameters()).device
        dataset = getattr(loader, "dataset", None)
        params, plan = self.prepare(module, n_samples=len(dataset) if dataset is not None else None)
        meta = {"compressor": self.compressor.state(), "parameters": list(params)}
        skip = 0
        if store is not None:
            skip = store.open(dim=self.compressor.out_blocks[-1].stop, blocks=self.compressor.out_blocks, meta=meta)
        rows = _Rows(len(dataset) if dataset is not None else None, dim=self.compressor.out_blocks[-1].stop)
        pending: deque[_HostCopy] = deque()
        buffers = _PinnedBuffers(depth=2)  # one batch in flight while the previous one is read

        def finish(copy: _HostCopy) -> None:
            g, ix, lb = copy.arrays()
            if store is not None:
                store.append(g.copy(), ix.copy(), lb.copy())
            else:
                rows.add(g, ix, lb)
            copy.release()  # its rows are copied out: the buffers may take another batch

        try:
            with _only_selected_require_grad(module, params):
                for b, batch in enumerate(progress_bar(loader, desc, self.progress)):
                    if b < skip:
                        continue
                    batch = {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v)
                             for k, v in batch.items()}
                    g = self.compress_batch(module, batch, params, plan).float()
                    pending.append(_HostCopy([g, batch["index"], batch["label"]], buffers))
                    # batch k is read on the host once batch k+1 is queued: its copy overlaps k+1's computation
                    while len(pending) > 1:
                        finish(pending.popleft())
                while pending:
                    finish(pending.popleft())
        finally:
            module.train(was_training)
        if store is not None:
            store.close()
            # under DDP the merged set exists only after every rank closed and rank 0 ran store.finalize()
            return store.gradient_set() if store.world_size == 1 else None
        return GradientSet(*rows.result(self.compressor.out_blocks[-1].stop), blocks=list(self.compressor.out_blocks),
                           meta=meta)


@contextlib.contextmanager
def _only_selected_require_grad(module: nn.Module, params: dict[str, nn.Parameter]):
    """Parameters outside ``params`` stop requiring gradients inside the block (restored after).

    The forward then records autograd history only from the first selected parameter on: for last-layer gradients
    the backbone runs as in inference (no saved activations). The values computed are the same.
    """
    chosen = {id(p) for p in params.values()}
    frozen = [p for p in module.parameters() if p.requires_grad and id(p) not in chosen]
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)


class _PinnedBuffers:
    """Page-locked host buffers for the device-to-host copies of a gather, handed out in ``depth`` turns.

    Each (turn, slot, row shape, dtype) keeps one buffer with as many rows as the largest batch seen so far; a
    smaller batch (the last, short one) gets a view of its first rows, so a gather allocates ``depth`` buffers
    per slot. A turn is handed out again only after the copy that used it was released (its rows read), which
    :meth:`next_turn` checks: with one batch in flight (:meth:`PerSampleGradients.gather`), ``depth`` 2 suffices.
    Torch's caching host allocator would reuse pinned blocks too; owning them skips its per-batch block lookup and
    event bookkeeping (docs/BENCHMARKS.md, "Last-layer gradient gathering vs inference", measures the gather).
    """

    def __init__(self, depth: int = 2, pin: bool = True):
        self.depth, self.pin, self.turn = depth, pin, depth - 1
        self.buffers: dict[tuple, torch.Tensor] = {}
        self.unread: set[int] = set()

    def stages(self, t: torch.Tensor) -> bool:
        """Whether ``t`` goes through a buffer of this pool (device tensors; host tensors pass through)."""
        return t.device.type == "cuda"

    def next_turn(self) -> int:
        """The next turn's number; raises if that turn's last copy was not released yet."""
        turn = (self.turn + 1) % self.depth
        if turn in self.unread:
            raise RuntimeError(f"pinned host buffers of turn {turn} handed out again before the batch copied into "
                               f"them was read: more than {self.depth - 1} batch(es) in flight")
        self.turn = turn
        self.unread.add(turn)
        return turn

    def release(self, turn: int) -> None:
        """The copy of ``turn`` was read: its buffers may be handed out again."""
        self.unread.discard(turn)

    def get(self, turn: int, slot: int, like: torch.Tensor) -> torch.Tensor:
        """A host tensor of ``like``'s shape and dtype: turn ``turn``'s buffer of ``slot`` (or its first rows)."""
        rows, rest = (like.shape[0], tuple(like.shape[1:])) if like.dim() else (None, ())
        key = (turn, slot, rest, like.dtype)
        buf = self.buffers.get(key)
        if buf is None or (rows is not None and buf.shape[0] < rows):
            buf = self.buffers[key] = torch.empty(like.shape, dtype=like.dtype, pin_memory=self.pin)
        return buf if rows is None else buf[:rows]


class _HostCopy:
    """Tensors copied to the host without waiting for the device: non-blocking copies into pinned buffers, one event.

    :meth:`arrays` waits for that event only; host tensors pass through. A blocking ``.cpu()`` per batch would
    instead stall the host until the device had finished everything queued, leaving the device idle meanwhile.
    Call :meth:`release` once the arrays are copied: the buffers then go back to ``buffers``.
    """

    def __init__(self, tensors: list[torch.Tensor], buffers: _PinnedBuffers):
        self.buffers, self.turn = buffers, buffers.next_turn()
        self.tensors: list[torch.Tensor] = []
        self.event = None
        for slot, t in enumerate(tensors):
            if buffers.stages(t):
                self.tensors.append(buffers.get(self.turn, slot, t).copy_(t, non_blocking=True))
            else:
                self.tensors.append(t.cpu())
            if t.device.type == "cuda" and self.event is None:
                self.event = torch.cuda.Event()
        if self.event is not None:
            self.event.record()

    def arrays(self) -> list[np.ndarray]:
        """The tensors as numpy arrays (views of the buffers until :meth:`release`: copy what you keep)."""
        if self.event is not None:
            self.event.synchronize()
        return [t.numpy() for t in self.tensors]

    def release(self) -> None:
        """Give the buffers back (after the arrays were copied)."""
        self.buffers.release(self.turn)


class _Rows:
    """Batches of (gradients, index, labels) joined in order.

    Gradients go into one preallocated array when the number of rows is known, so the whole matrix is not
    concatenated (copied once more) at the end. When the dimension is known too and the array is large, a
    background thread touches its pages ahead of the rows (:class:`_Prefault`): the kernel maps and zeroes each
    page while the GPU computes, instead of in the main thread's row copy (on an H200 this took ResNet-34's last-layer
    gather from 87% to 94% of inference speed; docs/BENCHMARKS.md, "Last-layer gradient gathering").
    """

    def __init__(self, n: int | None, dim: int | None = None, dtype=np.float32, prefault_bytes: int = 64 << 20):
        self.n, self.out, self.filled, self.prefault = n, None, 0, None
        self.parts: list[np.ndarray] = []
        self.index: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        if n is not None and dim is not None:
            self.out = np.empty((n, dim), dtype=dtype)
            if self.out.nbytes >= prefault_bytes:
                self.prefault = _Prefault(self.out)

    def add(self, g: np.ndarray, ix: np.ndarray, lb: np.ndarray) -> None:
        self.index.append(ix.copy())
        self.labels.append(lb.copy())
        if self.n is not None and self.out is None:
            self.out = np.empty((self.n, g.shape[1]), dtype=g.dtype)
        if (self.out is not None and not self.parts and self.filled + len(g) <= len(self.out)
                and g.shape[1:] == self.out.shape[1:]):
            if self.prefault is not None:
                self.prefault.wait_for(self.filled + len(g))
            self.out[self.filled:self.filled + len(g)] = g
            self.filled += len(g)
        else:  # more rows than the dataset has (e.g. a sampler with replacement): keep the batches, join at the end
            self.parts.append(g.copy())

    def result(self, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.prefault is not None:
            self.prefault.stop()
        parts = ([] if self.out is None or not self.filled else [self.out[:self.filled]]) + self.parts
        if not parts:
            return np.zeros((0, dim), dtype=np.float32), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        grads = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return grads, np.concatenate(self.index), np.concatenate(self.labels)


class _Prefault:
    """Touches one byte per page of a fresh array, row block by row block, in a daemon thread.

    The writer calls :meth:`wait_for` before it writes rows ``[.., stop)``; the thread only writes rows it has not
    handed over yet, so it never overwrites a written row. numpy releases the GIL for the strided assignment, so the
    main thread keeps launching GPU work meanwhile.
    """

    PAGE = 4096

    def __init__(self, out: np.ndarray, block_bytes: int = 8 << 20):
        self.out, self.done_rows, self.halt = out, 0, False
        self.rows_per_block = max(1, block_bytes // max(1, out.strides[0]))
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._run, name="gradsift-prefault", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        n = len(self.out)
        flat = self.out.reshape(-1).view(np.uint8)
        row_bytes = self.out.strides[0]
        start = 0
        while start < n and not self.halt:
            stop = min(n, start + self.rows_per_block)
            flat[start * row_bytes:stop * row_bytes:self.PAGE] = 0
            with self.cond:
                self.done_rows = stop
                self.cond.notify_all()
            start = stop
        with self.cond:  # done (done_rows == n) or stopped: a waiting writer goes on either way
            self.halt = True
            self.cond.notify_all()

    def wait_for(self, stop: int) -> None:
        """Block until rows ``[0, stop)`` are touched (or the thread has ended)."""
        with self.cond:
            while self.done_rows < stop and not self.halt:
                self.cond.wait()

    def stop(self) -> None:
        """End the thread (rows not yet touched stay untouched: the writer wrote them or never will)."""
        with self.cond:
            self.halt = True
        self.thread.join()


def _embedding_grads(idx: torch.Tensor, gout: torch.Tensor, vocab: int) -> torch.Tensor:
    """Per-sample embedding-table gradients [b, vocab, dim]: each sample's output gradients summed per token id."""
    b, t = idx.shape
    out = gout.new_zeros(b * vocab, gout.shape[-1])
    rows = (idx + vocab * torch.arange(b, device=idx.device).unsqueeze(1)).reshape(-1)
    return out.index_add_(0, rows, gout.reshape(b * t, -1)).view(b, vocab, -1)


class _LossOf(nn.Module):
    """Makes ``module.per_sample_loss`` the forward of a module, so ``functional_call`` can swap its parameters."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.m = module

    def forward(self, batch: dict) -> torch.Tensor:
        return self.m.per_sample_loss(batch).sum()


def progress_bar(it: Iterable, desc: str, enabled: bool) -> Iterable:
    """``it`` with a transient rich progress bar when ``enabled`` and it has a length, else ``it`` itself."""
    if not enabled:
        return it
    try:
        from rich.progress import track

        total = len(it)  # type: ignore[arg-type]
        return track(it, description=desc, total=total, transient=True)
    except TypeError:
        return it
