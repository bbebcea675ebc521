"""TorchModule: any nn.Module + loss -> the per_sample_loss / logits contract, and plain state dicts load."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from gradsift.attribution.gradients import PerSampleGradients
from gradsift.models.wrapper import TorchModule


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3))


def _batch() -> dict:
    g = torch.Generator().manual_seed(1)
    return {"x": torch.randn(6, 3, generator=g), "label": torch.tensor([0, 1, 2, 2, 1, 0]),
            "clean_label": torch.tensor([0, 1, 2, 1, 1, 0]), "index": torch.arange(6)}


def test_per_sample_loss_equals_a_hand_computation() -> None:
    net, batch = _net(), _batch()
    model = TorchModule(net)
    z = net(batch["x"])
    by_hand = torch.stack([torch.logsumexp(z[i], 0) - z[i, batch["label"][i]] for i in range(6)])
    torch.testing.assert_close(model.per_sample_loss(batch), by_hand)
    torch.testing.assert_close(model.logits(batch), z)
    # any callable keeping one loss per sample; keyword inputs
    smooth = TorchModule(net, loss=nn.CrossEntropyLoss(reduction="none", label_smoothing=0.1), inputs={"input": "x"})
    expected = nn.functional.cross_entropy(z, batch["label"], reduction="none", label_smoothing=0.1)
    torch.testing.assert_close(smooth.per_sample_loss(batch), expected)


def test_a_reducing_loss_is_refused() -> None:
    with pytest.raises(ValueError, match="reduction='none'"):
        TorchModule(_net(), loss=nn.CrossEntropyLoss()).per_sample_loss(_batch())
    with pytest.raises(ValueError, match="model.loss='hinge'"):
        TorchModule(_net(), loss="hinge")


def test_state_dicts_load_with_the_modules_own_keys_and_with_the_wrappers() -> None:
    trained = _net()
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(1.0)
    plain = trained.state_dict()  # keys 0.weight, 0.bias, 2.weight, 2.bias: what torch.save(net.state_dict()) wrote
    assert set(plain) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    a = TorchModule(_net())
    a.load_state_dict(plain)
    torch.testing.assert_close(a.net[0].weight, trained[0].weight)
    b = TorchModule(_net())
    b.load_state_dict(a.state_dict())  # net.0.weight ... (the pipeline's model.pt)
    assert set(a.state_dict()) == {f"net.{k}" for k in plain}
    torch.testing.assert_close(b.net[2].bias, trained[2].bias)
    with pytest.raises(RuntimeError, match="Missing key"):
        TorchModule(_net()).load_state_dict({"0.weight": plain["0.weight"], "9.bias": plain["2.bias"]})


def test_engine_gradients_of_the_wrapper_equal_autograd_per_row() -> None:
    model, batch = TorchModule(_net()).double(), _batch()
    batch["x"] = batch["x"].double()
    gs = PerSampleGradients(parameters="all", progress=False).gather(model, [batch])
    params = [p for p in model.parameters()]
    rows = []
    for i in range(6):
        one = {k: v[i: i + 1] for k, v in batch.items()}
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(model.per_sample_loss(one).sum(), params)]))
    np.testing.assert_allclose(gs.grads, torch.stack(rows).numpy(), rtol=1e-6, atol=1e-9)
