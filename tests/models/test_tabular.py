"""Per-sample gradients from the engine equal per-sample torch.autograd.grad on the synthetic models."""

import numpy as np
import pytest
import torch

from gradsift.attribution.gradients import PerSampleGradients, select_parameters
from gradsift.data.synthetic import MoonsDataModule
from gradsift.models.tabular import MLP, LogisticRegression


def _autograd_rows(model, batch, params):
    rows = []
    for i in range(len(batch["label"])):
        one = {k: v[i : i + 1] for k, v in batch.items()}
        g = torch.autograd.grad(model.per_sample_loss(one).sum(), list(params.values()))
        rows.append(torch.cat([t.reshape(-1) for t in g]))
    return torch.stack(rows).numpy()


@pytest.mark.parametrize("model_cls", [LogisticRegression, MLP])
@pytest.mark.parametrize("spec", ["all", "last_layer"])
def test_per_sample_gradients_equal_autograd(model_cls, spec):
    torch.manual_seed(0)
    model = model_cls().double()
    dm = MoonsDataModule(n_train=40, n_test=10, flips_per_class=2, seed=1)
    dm.setup()
    batch = next(iter(dm.attribution_dataloader("train")))
    batch["x"] = batch["x"].double()
    params = select_parameters(model, spec)
    gs = PerSampleGradients(parameters=spec, progress=False).gather(model, [batch])
    ref = _autograd_rows(model, batch, params)
    np.testing.assert_allclose(gs.grads, ref, rtol=1e-5, atol=1e-7)
    assert [b.name for b in gs.blocks] == list(params)
    np.testing.assert_array_equal(gs.index, batch["index"].numpy())


def test_last_layer_is_the_head():
    names = list(select_parameters(MLP(hidden=(8, 4)), "last_layer"))
    assert names == ["net.4.weight", "net.4.bias"]


def test_unknown_parameter_pattern_names_the_key():
    with pytest.raises(ValueError, match="attribution.gradients.parameters"):
        select_parameters(MLP(), "no_such_layer")


def test_sigmoid_mlp_is_the_authors_model():
    # synthetic/deep_model.py: 2 -> 2 -> 2 -> 1, ReLU, bias-free output, sigmoid + BCE; 14 parameters
    from gradsift.models.tabular import SigmoidMLP

    torch.manual_seed(0)
    model = SigmoidMLP().double()
    assert sum(p.numel() for p in model.parameters()) == 14
    assert list(select_parameters(model, "last_layer")) == ["net.4.weight"]
    dm = MoonsDataModule(n_train=40, n_test=10, flips_per_class=2, seed=1)
    dm.setup()
    batch = next(iter(dm.attribution_dataloader("train")))
    batch["x"] = batch["x"].double()
    y = batch["label"].double()
    with torch.no_grad():
        h2 = model.net[:4](batch["x"])
        p = torch.sigmoid(model.net[4](h2)).squeeze(1)
        bce = torch.nn.functional.binary_cross_entropy(p, y, reduction="none")
        torch.testing.assert_close(model.per_sample_loss(batch), bce)
        # the logits [0, z]: softmax = [1 - p, p] (cleanlab's pred_probs), cross entropy = BCE, argmax = p > 0.5
        probs = model.logits(batch).softmax(-1)
        torch.testing.assert_close(probs, torch.stack([1 - p, p], 1))
        ce = torch.nn.functional.cross_entropy(model.logits(batch), batch["label"], reduction="none")
        torch.testing.assert_close(ce, bce)
    # the per-sample gradient of the last weight, the authors' 2-d gradient space: (p - y) h2
    gs = PerSampleGradients(parameters="last_layer", progress=False).gather(model, [batch])
    np.testing.assert_allclose(gs.grads, ((p - y)[:, None] * h2).numpy(), rtol=1e-6, atol=1e-9)
    assert gs.dim == 2


@pytest.mark.parametrize("kwargs,match", [
    ({"hidden": 64}, r"model.hidden=64: expected a list of hidden-layer widths, e.g. model.hidden=\[64\]"),
    ({"hidden": [64, 0]}, r"model.hidden\[1\]=0: expected a positive integer"),
    ({"in_features": 2.5}, r"model.in_features=2.5: expected a positive integer"),
    ({"num_classes": 0}, r"model.num_classes=0: expected a positive integer"),
])
def test_mlp_arguments_are_checked_by_name(kwargs, match):
    """model.hidden=64 gave "'int' object is not iterable" (issue #19 item 9)."""
    with pytest.raises(ValueError, match=match):
        MLP(**kwargs)
    assert [m.out_features for m in MLP(hidden=[8]).net if isinstance(m, torch.nn.Linear)] == [8, 2]
