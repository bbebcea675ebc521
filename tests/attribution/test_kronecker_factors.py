"""Kronecker factors against brute force: A and S from explicit activations and logit gradients, EK-FAC's diagonal
from the engine's explicit per-sample gradients rotated into the Kronecker eigenbasis, for Linear (with and without
bias, tokens), transformers' Conv1D and Conv2d layers; the true Fisher's sampled labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradsift.attribution.gradients import PerSampleGradients
from gradsift.attribution.kfac import (KroneckerFactorGatherer, KroneckerFactors, sample_uniforms, sampled_labels,
                                       weight_matrix)

C = 3


class _MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, C, bias=False))

    def logits(self, batch: dict) -> torch.Tensor:
        return self.net(batch["x"])

    def per_sample_loss(self, batch: dict) -> torch.Tensor:
        return F.cross_entropy(self.logits(batch), batch["label"], reduction="none")


class _Mixed(nn.Module):
    """Tokens through a Linear and a Conv1D (mean over T), images through a Conv2d; one head."""

    def __init__(self):
        super().__init__()
        from transformers.pytorch_utils import Conv1D

        self.fc = nn.Linear(4, 6)
        self.c1 = Conv1D(5, 6)  # weight stored [in=6, out=5]
        self.conv = nn.Conv2d(2, 3, 3, stride=2, padding=1)
        self.head = nn.Linear(5 + 3 * 2 * 2, C)

    def logits(self, batch: dict) -> torch.Tensor:
        t = torch.tanh(self.c1(torch.tanh(self.fc(batch["tokens"])))).mean(1)
        i = torch.relu(self.conv(batch["x"])).flatten(1)
        return self.head(torch.cat([t, i], 1))

    def per_sample_loss(self, batch: dict) -> torch.Tensor:
        return F.cross_entropy(self.logits(batch), batch["label"], reduction="none")


def _batches(n: int, size: int, seed: int = 0, mixed: bool = False) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for s in range(0, n, size):
        b = {"label": torch.randint(0, C, (size,), generator=g), "index": torch.arange(s, s + size)}
        if mixed:
            b["tokens"] = torch.randn(size, 3, 4, generator=g, dtype=torch.float64)
            b["x"] = torch.randn(size, 2, 4, 4, generator=g, dtype=torch.float64)
        else:
            b["x"] = torch.randn(size, 4, generator=g, dtype=torch.float64)
        out.append(b)
    return out


def _gather(model: nn.Module, batches: list[dict], **kw) -> KroneckerFactors:
    kw = {"strategy": "ekfac", "empirical_fisher": True, "dtype": "float64", "progress": False, **kw}
    return KroneckerFactorGatherer("all", **kw).gather(model, batches)


def test_covariances_match_explicit_activations_and_logit_gradients() -> None:
    torch.manual_seed(0)
    model, batches = _MLP().double(), _batches(24, 8)
    f = _gather(model, batches)
    x = torch.cat([b["x"] for b in batches])
    y = torch.cat([b["label"] for b in batches])
    h = torch.tanh(model.net[0](x))
    a0 = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)  # first layer has a bias: trailing 1
    g1 = torch.softmax(model.net[2](h), -1) - F.one_hot(y, C)  # d CE / d logits, empirical Fisher
    for layer, a, g in [(f.layers[0], a0, None), (f.layers[1], h, g1)]:
        cov_a = layer.a_vecs @ np.diag(layer.a_vals) @ layer.a_vecs.T
        np.testing.assert_allclose(cov_a, (a.T @ a / len(a)).detach().numpy(), rtol=1e-10, atol=1e-12)
        if g is not None:
            cov_s = layer.s_vecs @ np.diag(layer.s_vals) @ layer.s_vecs.T
            np.testing.assert_allclose(cov_s, (g.T @ g / len(g)).detach().numpy(), rtol=1e-10, atol=1e-12)
    assert [(lay.weight, lay.bias) for lay in f.layers] == [("net.0.weight", "net.0.bias"), ("net.2.weight", None)]
    assert f.n_samples == 24


@pytest.mark.parametrize("mixed", [False, True], ids=["mlp", "linear_tokens_conv1d_conv2d"])
def test_ekfac_diagonal_is_the_rotated_per_sample_fisher_diagonal(mixed: bool) -> None:
    """Lambda[o, i] = (1/n) sum_k (Q_S^T G_k Q_A)[o, i]^2 with G_k from the engine's explicit per-sample gradients;
    this also checks how each layout (Linear/Conv2d [out, in], Conv1D [in, out], bias last) maps to the columns."""
    torch.manual_seed(1)
    model, batches = (_Mixed() if mixed else _MLP()).double(), _batches(20, 5, seed=2, mixed=mixed)
    f = _gather(model, batches)
    grads = PerSampleGradients("all", progress=False).gather(model, batches).grads.astype(np.float64)
    assert [b.name for b in f.blocks] == [n for n, _ in model.named_parameters()]
    for layer in f.layers:
        g = weight_matrix(grads, f, layer)  # [n, out, in]
        rot = np.einsum("so,nsi,ia->noa", layer.s_vecs, g, layer.a_vecs)
        np.testing.assert_allclose(layer.lam, (rot ** 2).mean(0), rtol=1e-5, atol=1e-7 * np.abs(layer.lam).max())
    if mixed:
        assert {lay.layout for lay in f.layers} == {"out_in", "in_out"}


def test_kfac_strategy_has_no_diagonal_and_factors_round_trip(tmp_path) -> None:
    torch.manual_seed(0)
    model, batches = _MLP().double(), _batches(16, 8)
    assert all(lay.lam is None for lay in _gather(model, batches, strategy="kfac").layers)
    f = KroneckerFactorGatherer("all", seed=4, progress=False).gather(model, batches, reference=batches[:1])
    f.save(str(tmp_path / "f.npz"))
    g = KroneckerFactors.load(str(tmp_path / "f.npz"))
    assert (g.strategy, g.empirical_fisher, g.n_samples, g.blocks) == (f.strategy, False, f.n_samples, f.blocks)
    for a, b in zip(f.layers, g.layers):
        assert (a.module, a.weight, a.bias, a.layout) == (b.module, b.weight, b.bias, b.layout)
        np.testing.assert_array_equal(a.lam, b.lam)
    np.testing.assert_array_equal(f.reference_gradient, g.reference_gradient)
    # the reference gradient is the mean loss gradient of the reference batch
    model.zero_grad()
    model.per_sample_loss(batches[0]).mean().backward()
    np.testing.assert_allclose(g.reference_gradient, torch.cat([p.grad.reshape(-1) for p in model.parameters()]),
                               rtol=1e-5, atol=1e-8)


def test_sampled_labels_are_a_function_of_seed_and_index_and_follow_the_probabilities() -> None:
    probs = torch.tensor([[0.7, 0.2, 0.1]]).repeat(20_000, 1)
    index = torch.arange(20_000)
    y = sampled_labels(probs, index, seed=0)
    np.testing.assert_allclose(np.bincount(y.numpy(), minlength=3) / 20_000, [0.7, 0.2, 0.1], atol=0.01)
    # batching and order do not matter; the seed does
    perm = torch.randperm(20_000)
    assert torch.equal(sampled_labels(probs[perm], index[perm], seed=0), y[perm])
    assert (sampled_labels(probs, index, seed=1) != y).float().mean() > 0.3
    u = sample_uniforms(index, seed=0)
    assert 0 <= float(u.min()) and float(u.max()) < 1 and abs(float(u.mean()) - 0.5) < 0.01


def test_true_fisher_uses_sampled_labels() -> None:
    torch.manual_seed(0)
    model, batches = _MLP().double(), _batches(16, 8)
    true, emp = _gather(model, batches, empirical_fisher=False, seed=0), _gather(model, batches)
    assert not np.allclose(true.layers[1].s_vals, emp.layers[1].s_vals)
    np.testing.assert_allclose(true.layers[0].a_vals, emp.layers[0].a_vals)  # activations do not depend on labels


def test_refuses_layers_it_cannot_factor_and_true_fisher_without_logits() -> None:
    class WithNorm(_MLP):
        def __init__(self):
            super().__init__()
            self.net.insert(1, nn.LayerNorm(5))

    with pytest.raises(ValueError, match=r"attribution.gradients.parameters=.*net\.1\.weight"):
        KroneckerFactorGatherer("all", progress=False).gather(WithNorm().double(), _batches(8, 8))

    class NoLogits(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, C)

        def per_sample_loss(self, batch: dict) -> torch.Tensor:
            return F.cross_entropy(self.fc(batch["x"]), batch["label"], reduction="none")

    with pytest.raises(ValueError, match="empirical_fisher=true"):
        KroneckerFactorGatherer("all", progress=False).gather(NoLogits().double(), _batches(8, 8))
    with pytest.raises(ValueError, match="use_empirical_fisher"):
        KroneckerFactorGatherer("all", empirical_fisher="yes")


def test_lora_adapters_are_linear_layers_it_covers() -> None:
    """peft's lora_A / lora_B are nn.Linear modules: each gets its own factors, checked like the layers above."""
    from peft import LoraConfig, inject_adapter_in_model

    torch.manual_seed(0)
    model = inject_adapter_in_model(LoraConfig(r=2, target_modules=["net.0", "net.2"], init_lora_weights=False),
                                    _MLP().double())
    batches = _batches(16, 8)
    f = KroneckerFactorGatherer("lora", empirical_fisher=True, dtype="float64", progress=False).gather(model, batches)
    assert [(lay.module, lay.shape) for lay in f.layers] == [
        ("net.0.lora_A.default", (2, 4)), ("net.0.lora_B.default", (5, 2)),
        ("net.2.lora_A.default", (2, 5)), ("net.2.lora_B.default", (C, 2))]
    grads = PerSampleGradients("lora", progress=False).gather(model, batches).grads.astype(np.float64)
    for layer in f.layers:
        rot = np.einsum("so,nsi,ia->noa", layer.s_vecs, weight_matrix(grads, f, layer), layer.a_vecs)
        np.testing.assert_allclose(layer.lam, (rot ** 2).mean(0), rtol=1e-5, atol=1e-7 * np.abs(layer.lam).max())
