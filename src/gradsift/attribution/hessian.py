"""Exact loss Hessian of the chosen parameters, for influence scorers that set ``needs_hessian``.

Eq. 1 of the dropout paper with the true H rather than the Gauss-Newton/Fisher form.

``loss_hessian`` is ``torch.func.hessian`` of the mean of ``module.per_sample_loss`` over a loader, w.r.t. the
selected parameters flattened in the same order as :class:`PerSampleGradients` (parameter order, each
row-major), so row/column i matches gradient column i. Cost: one d x d Hessian per batch (forward-over-reverse),
so it is meant for small parameter sets such as a classifier head (d up to a few thousand).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, hessian

from gradsift.attribution.gradients import select_parameters


class _SummedLoss(nn.Module):
    """Makes ``module.per_sample_loss(batch).sum()`` a forward, so ``functional_call`` can swap parameters."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.m = module

    def forward(self, batch: dict) -> torch.Tensor:
        return self.m.per_sample_loss(batch).sum()


def loss_hessian(module: nn.Module, loader: Iterable[dict],
                 params: dict[str, nn.Parameter] | str | list[str] = "last_layer",
                 device: str | torch.device | None = None) -> np.ndarray:
    """``[d, d]`` float64 Hessian of the mean per-sample loss over ``loader`` w.r.t. ``params`` (eval mode).

    ``params`` is a dict from :func:`select_parameters` or a spec it accepts (``"last_layer"``, ``"all"``, ...).
    """
    if not callable(getattr(module, "per_sample_loss", None)):
        raise TypeError(f"{type(module).__name__} has no per_sample_loss(batch) -> Tensor[B]; see gradsift.models.base")
    if not isinstance(params, dict):
        params = select_parameters(module, params)
    device = torch.device(device) if device else next(module.parameters()).device
    names = list(params)
    shapes = [p.shape for p in params.values()]
    sizes = [p.numel() for p in params.values()]
    flat = torch.cat([p.detach().reshape(-1) for p in params.values()]).to(device)
    wrapper = _SummedLoss(module)

    def summed_loss(theta: torch.Tensor, batch: dict) -> torch.Tensor:
        parts = {f"m.{n}": t.reshape(s) for n, t, s in zip(names, torch.split(theta, sizes), shapes)}
        return functional_call(wrapper, parts, (batch,), strict=False)

    was_training = module.training
    module.eval()
    total, count = torch.zeros(len(flat), len(flat), dtype=torch.float64, device=device), 0
    try:
        for batch in loader:
            tensors = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
            with torch.no_grad():  # torch.func ignores an outer no_grad; this keeps unselected parameters' graph out
                total += hessian(summed_loss)(flat, tensors).to(torch.float64)
            count += len(tensors["index"] if "index" in tensors else tensors["label"])
    finally:
        module.train(was_training)
    if count == 0:
        raise ValueError("loss_hessian got an empty loader")
    return (total / count).cpu().numpy()
