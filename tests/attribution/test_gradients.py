"""Hook-based per-sample gradients against an independent torch.func (vmap(grad)) reference, in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from gradsift.attribution.compressors import DropoutCompressor, IdentityCompressor, LoGraCompressor
from gradsift.attribution.gradients import PerSampleGradients, hook_rule, select_parameters

B, T, C = 6, 5, 3


@pytest.fixture(autouse=True)
def _float64():
    """Models and references in float64 for these tests only (GradientSet rows are float32)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


class _Seq(nn.Module):
    """Token ids -> embedding -> Linear [B,T,*] -> Conv1D -> LayerNorm -> mean over T -> head."""

    def __init__(self):
        super().__init__()
        from transformers.pytorch_utils import Conv1D

        self.emb = nn.Embedding(11, 4, padding_idx=0)
        self.fc = nn.Linear(4, 6)
        self.c1 = Conv1D(5, 6)  # weight stored [in=6, out=5]
        self.ln = nn.LayerNorm(5)
        self.head = nn.Linear(5, C)

    def per_sample_loss(self, batch: dict) -> torch.Tensor:
        h = self.ln(self.c1(torch.tanh(self.fc(self.emb(batch["x"])))))
        return F.cross_entropy(self.head(torch.tanh(h).mean(1)), batch["label"], reduction="none")


class _Img(nn.Module):
    """Conv2d (stride, padding) -> ReLU(inplace) -> Linear; plus a parameter no hook rule covers."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, stride=2, padding=1)
        self.scale = nn.Parameter(torch.tensor([1.5, -0.5, 2.0]))
        self.head = nn.Linear(3 * 4 * 4, C)

    def per_sample_loss(self, batch: dict) -> torch.Tensor:
        h = torch.relu_(self.conv(batch["x"])) * self.scale.view(1, 3, 1, 1)
        return F.cross_entropy(self.head(h.flatten(1)), batch["label"], reduction="none")


def _seq_batch(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 11, (B, T), generator=g)
    x[0, :2] = 0  # padding tokens get no gradient
    return {"x": x, "label": torch.randint(0, C, (B,), generator=g), "index": torch.arange(B)}


def _img_batch(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(B, 2, 8, 8, generator=g), "label": torch.randint(0, C, (B,), generator=g),
            "index": torch.arange(B)}


def reference(model: nn.Module, batch: dict, names: list[str]) -> torch.Tensor:
    """[B, d] per-sample gradients by vmap(grad) of the single-sample loss (independent of the engine)."""
    model.eval()  # the engine gathers in eval mode (LoRA dropout off)
    params = {n: p.detach() for n, p in model.named_parameters() if n in names}

    def one(p, sample):
        return _loss(model, p, {k: v.unsqueeze(0) for k, v in sample.items()})

    g = vmap(grad(one), in_dims=(None, 0))(params, batch)
    return torch.cat([g[n].reshape(B, -1) for n in names], 1).detach()


def _loss(model, p, b):
    class W(nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, b):
            return self.m.per_sample_loss(b).sum()

    return functional_call(W(), {f"m.{n}": t for n, t in p.items()}, (b,), strict=False)


def _gather(model, batch, parameters, compressor=None):
    eng = PerSampleGradients(parameters, compressor or IdentityCompressor(), progress=False)
    gs = eng.gather(model, [batch])
    return torch.from_numpy(gs.grads).double(), gs, eng


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-5) -> None:
    a, b = a.detach(), b.detach()
    assert a.shape == b.shape
    assert (a - b).abs().max() <= rtol * b.abs().max() + 1e-12, float((a - b).abs().max())


@pytest.mark.parametrize("spec,rule", [(r"^fc\.", "linear"), (r"^c1\.", "conv1d"), (r"^emb\.", "embedding"),
                                       (r"^ln\.", "layernorm"), ("all", None)])
def test_hooks_match_torch_func_sequence_model(spec, rule):
    torch.manual_seed(0)
    model, batch = _Seq(), _seq_batch()
    names = list(select_parameters(model, spec))
    if rule:
        assert hook_rule(dict(model.named_modules())[names[0].split(".")[0]]) == rule
    got, gs, _ = _gather(model, batch, spec)
    # GradientSet rows are float32 even when the model is float64
    _close(got, reference(model, batch, names), rtol=1e-5)
    assert gs.blocks[-1].stop == got.shape[1] and gs.index.tolist() == list(range(B))


def test_hooks_match_torch_func_conv2d_inplace_relu_and_fallback():
    torch.manual_seed(1)
    model, batch = _Img(), _img_batch()
    names = list(select_parameters(model, ["conv", "scale", "head.weight"]))
    assert names == ["scale", "conv.weight", "conv.bias", "head.weight"]  # registration order
    eng = PerSampleGradients(names, progress=False)
    params, plan = eng.prepare(model)
    assert plan[1] == ["scale"]  # no hook rule for a bare parameter: torch.func fallback
    got = torch.from_numpy(eng.gather(model, [batch]).grads).double()
    _close(got, reference(model, batch, names))


def test_lora_wrapped_linear_matches_torch_func():
    peft = pytest.importorskip("peft")
    torch.manual_seed(2)

    class Mlp(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, C)

        def per_sample_loss(self, batch):
            return F.cross_entropy(self.fc2(torch.tanh(self.fc1(batch["x"]))), batch["label"], reduction="none")

    model = peft.get_peft_model(Mlp(), peft.LoraConfig(r=2, lora_alpha=4, target_modules=["fc1"], lora_dropout=0.1))
    for n, p in model.named_parameters():
        if "lora_B" in n:
            nn.init.normal_(p)  # lora_B starts at zero; make lora_A's gradient non-trivial
    model.per_sample_loss = model.base_model.model.per_sample_loss
    batch = {"x": torch.randn(B, 4), "label": torch.randint(0, C, (B,)), "index": torch.arange(B)}
    names = list(select_parameters(model, "lora"))
    assert len(names) == 2
    got, _, eng = _gather(model, batch, "lora")
    assert eng.prepare(model)[1][1] == []  # both adapters hooked, no fallback
    _close(got, reference(model, batch, names))


def test_dropout_from_factors_equals_kept_coordinates_of_full_gradient():
    torch.manual_seed(3)
    model, batch = _Seq(), _seq_batch(1)
    names = list(select_parameters(model, "all"))
    full = reference(model, batch, names)
    comp = DropoutCompressor(r=40, seed=7)
    got, gs, _ = _gather(model, batch, "all", comp)
    _close(got, full[:, torch.from_numpy(comp.indices)])
    assert sum(b.size for b in gs.blocks) == 40 and gs.meta["compressor"]["indices"] == comp.indices.tolist()


def test_logra_from_factors_equals_logra_of_full_gradient():
    torch.manual_seed(4)
    model, batch = _Seq(), _seq_batch(2)
    spec = [r"^fc\.weight", r"^c1\.weight", r"^head\.bias"]
    names = list(select_parameters(model, spec))
    full = reference(model, batch, names)
    comp = LoGraCompressor(r=9, seed=3)
    got, _, _ = _gather(model, batch, spec, comp)
    _close(got, comp.compress(full).double())


def test_sample_chunking_and_bf16_autocast_shape():
    torch.manual_seed(5)
    model, batch = _Img(), _img_batch(1)
    eng = PerSampleGradients(["conv.weight", "head.weight"], progress=False, max_chunk_bytes=1)  # one sample a chunk
    got = torch.from_numpy(eng.gather(model, [batch]).grads).double()
    _close(got, reference(model, batch, ["conv.weight", "head.weight"]))
    with pytest.raises(ValueError, match="autocast"):
        PerSampleGradients(autocast="int8")
