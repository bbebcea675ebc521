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


class _ConvNet(nn.Module):
    """Conv -> BatchNorm -> ReLU -> pool -> two linear layers; a classifier with per_sample_loss."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.mid, self.head = nn.Linear(4, 5), nn.Linear(5, C)

    def per_sample_loss(self, batch: dict) -> torch.Tensor:
        h = F.relu(self.bn(self.conv(batch["x"]))).mean((2, 3))
        return F.cross_entropy(self.head(torch.tanh(self.mid(h))), batch["label"], reduction="none")


class _Loader:
    """Prebuilt batches with a dataset length, as a DataLoader has."""

    def __init__(self, batches: list[dict], n: int):
        self.batches, self.dataset = batches, range(n)

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _batches(n_batches: int = 3, b: int = 4) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    return [{"x": torch.randn(b, 3, 5, 5, generator=g), "label": torch.randint(0, C, (b,), generator=g),
             "index": torch.arange(i * b, (i + 1) * b)} for i in range(n_batches)]


@pytest.mark.parametrize("spec", ["last_layer", r"^mid\.", "all"])
def test_gather_equals_the_per_batch_loop_bit_for_bit(spec):
    """gather() freezes the unselected parameters and reads batches one late; the rows are the same bits as
    compress_batch on the unfrozen model, batch by batch, and every parameter requires grad again afterwards."""
    torch.manual_seed(0)
    model = _ConvNet().eval()
    batches = _batches()
    eng = PerSampleGradients(spec, progress=False)
    params, plan = eng.prepare(model)
    with torch.no_grad():  # as gather() before issue #16: one compress_batch per batch, nothing frozen
        ref = torch.cat([eng.compress_batch(model, b, params, plan) for b in batches]).float().numpy()
    for loader in (batches, _Loader(batches, 12), _Loader(batches, 5)):  # no length, exact length, too short
        got = eng.gather(model, loader)
        assert (got.grads == ref).all() and got.grads.dtype == ref.dtype
        assert got.index.tolist() == list(range(12)) and got.labels.tolist() == torch.cat(
            [b["label"] for b in batches]).tolist()
    assert all(p.requires_grad for p in model.parameters())


def test_gather_restores_requires_grad_after_an_error():
    model = _ConvNet().eval()
    model.head.weight.requires_grad_(False)  # a frozen parameter stays frozen
    bad = [{"x": torch.randn(2, 3, 5, 5), "label": torch.tensor([0, 99]), "index": torch.arange(2)}]
    with pytest.raises((IndexError, RuntimeError)):
        PerSampleGradients(r"^mid\.", progress=False).gather(model, bad)
    assert [p.requires_grad for p in model.parameters()] == [True, True, True, True, True, True, False, True]


def test_gather_of_an_empty_loader_is_an_empty_set():
    got = PerSampleGradients("last_layer", progress=False).gather(_ConvNet().eval(), _Loader([], 0))
    assert got.grads.shape == (0, 5 * C + C) and len(got.index) == 0
