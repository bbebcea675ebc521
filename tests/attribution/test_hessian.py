"""loss_hessian against the closed-form Hessian of softmax regression."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from gradsift.attribution.gradients import PerSampleGradients
from gradsift.attribution.hessian import loss_hessian


class Head(nn.Module):
    def __init__(self, bias: bool):
        super().__init__()
        self.body = nn.Linear(4, 4, dtype=torch.float64)
        self.head = nn.Linear(4, 3, bias=bias, dtype=torch.float64)

    def per_sample_loss(self, batch: dict) -> torch.Tensor:
        return nn.functional.cross_entropy(self.head(torch.tanh(self.body(batch["x"]))), batch["label"],
                                           reduction="none")


def _batches(n: int, size: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)
    return [{"x": x[s:s + size], "label": y[s:s + size], "index": torch.arange(s, min(n, s + size))}
            for s in range(0, n, size)]


@pytest.mark.parametrize("batch_size", [50, 7])
def test_last_layer_hessian_matches_closed_form(batch_size: int) -> None:
    """Softmax regression on features h: H = mean_i (diag(p_i) - p_i p_i^T) kron h_i h_i^T (weight, row-major)."""
    torch.manual_seed(0)
    model = Head(bias=False)
    batches = _batches(50, batch_size)
    got = loss_hessian(model, batches, "last_layer")
    ref = np.zeros((12, 12))
    with torch.no_grad():
        for b in batches:
            h = torch.tanh(model.body(b["x"])).numpy()
            p = model.head(torch.tensor(h)).softmax(-1).numpy()
            for hi, pi in zip(h, p):
                ref += np.kron(np.diag(pi) - np.outer(pi, pi), np.outer(hi, hi))
    np.testing.assert_allclose(got, ref / 50, rtol=1e-10, atol=1e-12)


def test_hessian_columns_follow_the_gradient_engine() -> None:
    """Same parameter order as PerSampleGradients: H ~= (1/n) G^T G is not exact, but the mean gradient's
    directional derivative is: H @ u == d/dt mean_grad(theta + t u) (finite difference along u)."""
    torch.manual_seed(0)
    model = Head(bias=True)
    batches = _batches(40, 16)
    h = loss_hessian(model, batches, "last_layer")
    engine = PerSampleGradients(parameters="last_layer", progress=False)
    u = np.random.default_rng(0).standard_normal(h.shape[0])
    params = [model.head.weight, model.head.bias]
    eps = 1e-3  # gradients come back as float32

    def mean_grad(t: float) -> np.ndarray:
        with torch.no_grad():
            torch.nn.utils.vector_to_parameters(base + t * torch.tensor(u), params)
        return engine.gather(model, batches).grads.astype(np.float64).mean(0)

    base = torch.nn.utils.parameters_to_vector(params).detach().clone()
    fd = (mean_grad(eps) - mean_grad(-eps)) / (2 * eps)
    np.testing.assert_allclose(h @ u, fd, rtol=1e-3, atol=1e-4)
