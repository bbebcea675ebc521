"""One training step (forward, backward, optimizer step) that can be captured once as a CUDA graph and replayed.

At batch 128 a CIFAR ResNet's eager step is bound by the host launching its ~1,000 kernels one by one, not by the
GPU; replaying a CUDA graph launches the whole step at once. :class:`TrainStep` follows PyTorch's whole-network
capture recipe (``torch.cuda.graphs``): the first :attr:`TrainStep.WARMUP` steps run eagerly on a side stream (lazy
kernel set-up, the optimizer's momentum buffers), the next one is captured with the batch in static buffers and the
gradients set to None (so backward allocates them in the graph's memory) and then replayed, and every later batch
of the same shapes is copied into the static buffers and replayed. Autocast runs with ``cache_enabled=False`` (a
cached cast would outlive the capture). The learning rate is read from a device tensor that the graph captured,
refilled from the optimizer's float value before each replay, so schedulers step as they always do. A batch of
other shapes (an epoch's short last batch) runs eagerly, zeroing the graph's gradient buffers in place. When a
hyperparameter other than the learning rate changes after the capture (``OneCycleLR`` cycles the momentum, which
fused SGD bakes into the graph), the graph is dropped with a warning and the remaining steps run eagerly.

Off CUDA (``graph=False``) the same step runs eagerly, which is what the CPU tests compare with Lightning's own
automatic optimization.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Callable, Iterator

import torch
from torch.optim import Optimizer

_NOT_HYPERPARAMETERS = ("params", "lr")
#: one capture at a time in a process: several trainings in threads of one process (gradsift.parallel) each capture
#: their own graph, on their own stream, with CUDA's thread-local capture mode (the other threads keep training)
_CAPTURE_LOCK = threading.Lock()


def check_graph_optimizer(optimizer: Optimizer) -> None:
    """Raise unless ``optimizer`` steps on the device with a device-tensor lr (what a CUDA graph can replay).

    That is SGD with ``fused=True``, or an optimizer with a ``capturable`` option (Adam, AdamW, ...) set to True.
    """
    key = "capturable" if "capturable" in optimizer.defaults else "fused"
    bad = [i for i, g in enumerate(optimizer.param_groups) if not g.get(key)]
    if bad:
        raise ValueError(f"model.cuda_graph=true needs an optimizer that steps inside a CUDA graph: "
                         f"{type(optimizer).__name__}({key}=True) (for the image classifier's SGD: model.optimizer.fused=true); "
                         f"param groups {bad} have {key}={optimizer.param_groups[bad[0]].get(key)!r}")


def _same(a: object, b: object) -> bool:
    """Hyperparameter equality that never reads a tensor's value (that would wait for the device)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return a is b
    return a == b


class TrainStep:
    """``step(batch) -> loss``: zero the gradients, ``loss_fn(batch)``, backward, ``optimizer.step()``.

    With ``graph=True`` (CUDA only) the step is captured and replayed as described in the module docstring;
    ``counts`` says how many steps ran which way, ``dropped`` why a graph was given up (None if it was not).
    """

    #: eager steps before the capture (the number PyTorch's whole-network capture example uses)
    WARMUP = 3

    def __init__(self, loss_fn: Callable[[dict], torch.Tensor], optimizer: Optimizer, device: torch.device,
                 graph: bool = False):
        if graph and device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, not {device}")
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        self.loss_fn, self.optimizer, self.device, self.graph = loss_fn, optimizer, device, graph
        self.counts = {"eager": 0, "warmup": 0, "capture": 0, "replay": 0}
        self.dropped: str | None = None
        self._static: dict[str, torch.Tensor] | None = None
        self._signature: tuple | None = None
        self._replay: Callable[[], torch.Tensor] | None = None
        self._graph_handle: object | None = None
        self._lr: list[torch.Tensor] = []
        self._lr_values: list[float] = []
        self._hyper: list[dict] = []
        self._side: torch.cuda.Stream | None = None

    # -- the step ---------------------------------------------------------------------------------------
    def __call__(self, batch: dict) -> torch.Tensor:
        """One optimizer step on ``batch``; returns its loss (detached)."""
        autocast = (self.device.type, torch.get_autocast_dtype(self.device.type),
                    torch.is_autocast_enabled(self.device.type))
        if not self._graphable(batch):
            return self._eager(batch, autocast)
        if self._replay is None:
            if self.counts["warmup"] < self.WARMUP:
                return self._warmup(batch, autocast)
            return self._capture(batch, autocast)
        changed = [k for g, h in zip(self.optimizer.param_groups, self._hyper) for k in h if not _same(g.get(k), h[k])]
        if changed:
            self.drop(f"optimizer hyperparameters {sorted(set(changed))} changed after the capture (a CUDA graph "
                      "replays them as captured; only the learning rate is read from the device)")
            return self._eager(batch, autocast)
        return self._replay_with(batch)

    def _run(self, batch: dict, autocast: tuple) -> torch.Tensor:
        device_type, dtype, enabled = autocast
        with torch.autocast(device_type, dtype=dtype, enabled=enabled, cache_enabled=False):
            loss = self.loss_fn(batch)
        with torch.autocast(device_type, dtype=dtype, enabled=False):  # backward and step outside autocast
            loss.backward()
            self.optimizer.step()
        return loss.detach()

    def _eager(self, batch: dict, autocast: tuple) -> torch.Tensor:
        # after a capture the gradients live in the graph's memory: zero them in place so that replays keep them
        self.optimizer.zero_grad(set_to_none=self._replay is None)
        self.counts["eager"] += 1
        return self._run(batch, autocast)

    # -- graph ------------------------------------------------------------------------------------------
    def _graphable(self, batch: dict) -> bool:
        if not self.graph or self.dropped is not None:
            return False
        if not all(isinstance(v, torch.Tensor) and v.device == self.device for v in batch.values()):
            return False
        signature = tuple((k, tuple(v.shape), v.dtype) for k, v in batch.items())
        if self._signature is None:
            self._signature = signature
        return signature == self._signature

    def _copy_in(self, batch: dict) -> None:
        if self._static is None:
            self._static = {k: torch.empty_like(v) for k, v in batch.items()}
        for k, v in batch.items():
            self._static[k].copy_(v)

    def _warmup(self, batch: dict, autocast: tuple) -> torch.Tensor:
        self._copy_in(batch)
        self.optimizer.zero_grad(set_to_none=True)
        with self._side_stream():
            loss = self._run(self._static, autocast)
        self.counts["warmup"] += 1
        return loss

    def _capture(self, batch: dict, autocast: tuple) -> torch.Tensor:
        groups = self.optimizer.param_groups
        # fused CUDA kernels read a float32 lr; elsewhere (the CPU tests) float64 keeps the float lr's exact value
        dtype = torch.float32 if self.device.type == "cuda" else torch.float64
        self._lr = [torch.tensor(float(g["lr"]), dtype=dtype, device=self.device) for g in groups]
        self._lr_values = [float(g["lr"]) for g in groups]
        self._hyper = [{k: v for k, v in g.items() if k not in _NOT_HYPERPARAMETERS} for g in groups]
        self._copy_in(batch)
        self.optimizer.zero_grad(set_to_none=True)  # backward then allocates the gradients in the graph's memory
        self._replay = self._record(lambda: self._run(self._static, autocast))
        self.counts["capture"] += 1
        return self._replay().clone()

    def _record(self, step: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
        """Capture ``step`` (which reads only the static buffers) as a CUDA graph; returns replay -> loss."""
        graph = torch.cuda.CUDAGraph()
        # this step's own capture stream (torch's default one is shared by every graph of the process)
        self._side = self._side or torch.cuda.Stream(self.device)
        with _CAPTURE_LOCK, self._lr_on_device(), torch.cuda.graph(graph, stream=self._side,
                                                                   capture_error_mode="thread_local"):
            loss = step()
        self._graph_handle = graph

        def replay() -> torch.Tensor:
            graph.replay()
            return loss

        return replay

    def _replay_with(self, batch: dict) -> torch.Tensor:
        self._copy_in(batch)
        for i, g in enumerate(self.optimizer.param_groups):
            if float(g["lr"]) != self._lr_values[i]:
                self._lr[i].fill_(float(g["lr"]))
                self._lr_values[i] = float(g["lr"])
        self.counts["replay"] += 1
        return self._replay().clone()  # the graph's loss tensor is overwritten by the next replay

    @contextlib.contextmanager
    def _lr_on_device(self) -> Iterator[None]:
        """The optimizer's param groups hold the device lr tensors (instead of their floats) inside the block."""
        groups = self.optimizer.param_groups
        floats = [g["lr"] for g in groups]
        for g, t in zip(groups, self._lr):
            g["lr"] = t
        try:
            yield
        finally:
            for g, v in zip(groups, floats):
                g["lr"] = v

    @contextlib.contextmanager
    def _side_stream(self) -> Iterator[None]:
        if self.device.type != "cuda":
            yield
            return
        self._side = self._side or torch.cuda.Stream(self.device)
        self._side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self._side):
            yield
        torch.cuda.current_stream(self.device).wait_stream(self._side)

    def drop(self, reason: str) -> None:
        """Give the graph up (its memory too); the remaining steps run eagerly."""
        warnings.warn(f"model.cuda_graph: {reason}; the remaining training steps run eagerly", stacklevel=3)
        self.dropped = reason
        self.release()

    def release(self) -> None:
        """Free the graph, its static buffers and the gradients it owns (end of training)."""
        if self._replay is not None:
            self.optimizer.zero_grad(set_to_none=True)
        self._replay, self._graph_handle, self._static = None, None, None
