"""Training recipes (gradsift.models.optim): each schedule against a hand computation, the trainer-dependent
arguments gradsift fills in, parameter groups without weight decay, errors that name the key, Lightning stepping."""

from __future__ import annotations

import math
import pickle
from functools import partial
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch import nn
from torch.optim.lr_scheduler import (CosineAnnealingLR, LinearLR, MultiStepLR, OneCycleLR, SequentialLR,
                                      StepLR)

from gradsift.data.synthetic import MoonsDataModule
from gradsift.models.optim import build_optimizer, build_scheduler, linear_warmup_decay, parameter_groups
from gradsift.models.tabular import MLP

from gradsift import CONFIG_DIR as CONF


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def _trainer(epochs: int, batches: int) -> SimpleNamespace:
    return SimpleNamespace(max_epochs=epochs, estimated_stepping_batches=epochs * batches)


def _lrs(scheduler_factory, interval: str, epochs: int, batches: int = 1, lr: float = 0.1,
         key: str = "lr") -> list[float]:
    """The value of param group 0's ``key`` at every optimizer step (Lightning's stepping order)."""
    opt = build_optimizer(_net(), partial(torch.optim.SGD, lr=lr, momentum=0.9))
    conf = build_scheduler(opt, scheduler_factory, interval, _trainer(epochs, batches))
    assert conf["interval"] == interval
    out = []
    for _ in range(epochs):
        for _ in range(batches):
            out.append(opt.param_groups[0][key])
            opt.step()
            if interval == "step":
                conf["scheduler"].step()
        if interval == "epoch":
            conf["scheduler"].step()
    return out


def test_multistep_fraction_of_epochs_is_the_oga_authors_plan():
    """milestones [0.6] of 100 epochs at interval epoch: lr 0.1 for epochs 0-59, 0.01 for 60-99 (alpha_plan of
    the authors' cifar-10-100n/OD-experiment.py), with several batches per epoch."""
    lrs = _lrs(partial(MultiStepLR, milestones=[0.6], gamma=0.1), "epoch", epochs=100, batches=3)
    per_epoch = lrs[::3]
    assert all(lrs[3 * e:3 * e + 3] == [per_epoch[e]] * 3 for e in range(100))
    assert per_epoch == pytest.approx([0.1] * 60 + [0.01] * 40, rel=1e-12)


def test_multistep_integer_epochs_exactly_as_given():
    assert _lrs(partial(MultiStepLR, milestones=[60], gamma=0.1), "epoch", epochs=100) == pytest.approx(
        [0.1] * 60 + [0.01] * 40, rel=1e-12)


def test_multistep_fraction_of_steps():
    """The fractions of the shorter presets: [0.6] of 250 steps is step 150; two milestones compound."""
    lrs = _lrs(partial(MultiStepLR, milestones=[0.5, 0.75], gamma=0.5), "step", epochs=5, batches=50)
    assert lrs == pytest.approx([0.1] * 125 + [0.05] * 62 + [0.025] * 63, rel=1e-12)


def test_onecycle_over_n_steps_with_torch_defaults():
    """OneCycleLR(max_lr=0.1, pct_start=0.25), torch's defaults otherwise (cos, div 25, final div 1e4), total_steps
    and max_lr (the optimizer's lr) filled in: two cosine phases meeting at step 0.25 * N - 1."""
    n, peak = 200, 0.1
    lrs = _lrs(partial(OneCycleLR, pct_start=0.25), "step", epochs=4, batches=50, lr=peak)
    momenta = _lrs(partial(OneCycleLR, pct_start=0.25), "step", epochs=4, batches=50, lr=peak, key="momentum")
    start, low, turn = peak / 25, peak / 25 / 1e4, 0.25 * n - 1

    def cos(a: float, b: float, pct: float) -> float:
        return b + (a - b) / 2 * (math.cos(math.pi * pct) + 1)

    expect = [cos(start, peak, s / turn) if s <= turn else cos(peak, low, (s - turn) / (n - 1 - turn))
              for s in range(n)]
    expect_m = [cos(0.95, 0.85, s / turn) if s <= turn else cos(0.85, 0.95, (s - turn) / (n - 1 - turn))
                for s in range(n)]
    assert lrs == pytest.approx(expect, rel=1e-9)
    assert momenta == pytest.approx(expect_m, rel=1e-9)
    assert max(lrs) == pytest.approx(peak) and lrs[-1] == pytest.approx(low, rel=1e-6)


def test_onecycle_given_max_lr_and_epochs_is_left_alone():
    opt = build_optimizer(_net(), partial(torch.optim.SGD, lr=1.0, momentum=0.9))
    sched = build_scheduler(opt, partial(OneCycleLR, max_lr=0.3, epochs=2, steps_per_epoch=5), "step",
                            _trainer(7, 11))["scheduler"]
    assert sched.total_steps == 10 and opt.param_groups[0]["max_lr"] == 0.3


@pytest.mark.parametrize("warmup,steps", [(0.2, 20), (20, 20)])
def test_linear_warmup_decay_is_the_resnet9_triangle(warmup, steps):
    """0 -> 0.4 over the first 20 of 100 steps, then linearly back to 0 (warm-up as a fraction or a count)."""
    lrs = _lrs(partial(linear_warmup_decay, warmup=warmup), "step", epochs=4, batches=25, lr=0.4)
    expect = [0.4 * s / 20 if s < 20 else 0.4 * (100 - s) / 80 for s in range(100)]
    assert lrs == pytest.approx(expect, rel=1e-12, abs=1e-15)


def test_linear_warmup_decay_equals_transformers():
    from transformers import get_linear_schedule_with_warmup

    ours = _lrs(partial(linear_warmup_decay, warmup=0.06), "step", epochs=10, batches=17, lr=3e-4)
    opt = torch.optim.AdamW(_net().parameters(), lr=3e-4)
    ref = get_linear_schedule_with_warmup(opt, num_warmup_steps=int(0.06 * 170), num_training_steps=170)
    theirs = []
    for _ in range(170):
        theirs.append(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()
    assert ours == theirs


def test_warmup_under_one_step_starts_at_the_peak():
    """A warm-up fraction that rounds to 0 steps starts at the peak (transformers' rule). The ResNet-9 code before
    issue #15 forced one step at lr 0 instead, which differs only in runs of fewer than 5 steps in all."""
    assert _lrs(partial(linear_warmup_decay, warmup=0.2), "step", epochs=1, batches=4, lr=0.4) == pytest.approx(
        [0.4, 0.3, 0.2, 0.1])


def test_cosine_fills_t_max():
    lrs = _lrs(partial(CosineAnnealingLR, eta_min=0.0), "step", epochs=3, batches=20)
    assert lrs == pytest.approx([0.1 * (1 + math.cos(math.pi * s / 60)) / 2 for s in range(60)], rel=1e-9, abs=1e-12)


def test_linear_warmup_then_cosine_through_sequential_lr():
    """SequentialLR(LinearLR from 0.01 x lr over the first 10% of 200 steps, then cosine to 0 over the other 180):
    the milestone fraction and both parts' lengths are filled in."""
    factory = partial(SequentialLR, milestones=[0.1], schedulers=[partial(LinearLR, start_factor=0.01, end_factor=1.0),
                                                                  partial(CosineAnnealingLR, eta_min=0.0)])
    lrs = _lrs(factory, "step", epochs=4, batches=50)
    expect = [0.1 * (0.01 + 0.99 * s / 20) if s < 20 else 0.1 * (1 + math.cos(math.pi * (s - 20) / 180)) / 2
              for s in range(200)]
    assert lrs == pytest.approx(expect, rel=1e-9, abs=1e-12)


def test_step_lr_fraction_and_linear_lr_total_iters():
    assert _lrs(partial(StepLR, step_size=0.25, gamma=0.5), "epoch", epochs=8) == pytest.approx(
        [0.1, 0.1, 0.05, 0.05, 0.025, 0.025, 0.0125, 0.0125])
    assert _lrs(partial(LinearLR, start_factor=1.0, end_factor=0.5), "epoch", epochs=5) == pytest.approx(
        [0.1, 0.09, 0.08, 0.07, 0.06])


def test_plain_counts_need_no_finite_training():
    opt = build_optimizer(_net(), partial(torch.optim.SGD, lr=0.1))
    trainer = SimpleNamespace(max_epochs=-1, estimated_stepping_batches=float("inf"))
    assert build_scheduler(opt, partial(MultiStepLR, milestones=[3]), "epoch", trainer)["scheduler"].milestones
    with pytest.raises(ValueError, match="model.scheduler needs a finite training length in epochs.*max_epochs"):
        build_scheduler(opt, partial(MultiStepLR, milestones=[0.5]), "epoch", trainer)
    with pytest.raises(ValueError, match="model.scheduler needs a finite training length in steps"):
        build_scheduler(opt, partial(CosineAnnealingLR), "step", trainer)


def test_tensor_lrs_are_updated_in_place():
    """A 1-element tensor lr (what CUDA-graph training needs) stays the same tensor: the schedulers fill_ it."""
    for factory in (partial(MultiStepLR, milestones=[0.5]), partial(OneCycleLR, pct_start=0.25),
                    partial(linear_warmup_decay, warmup=0.2)):
        opt = build_optimizer(_net(), partial(torch.optim.SGD, lr=torch.tensor(0.1), momentum=0.9, foreach=False))
        lr = opt.param_groups[0]["lr"]
        sched = build_scheduler(opt, factory, "step", _trainer(2, 5))["scheduler"]
        seen = []
        for _ in range(10):
            seen.append(float(opt.param_groups[0]["lr"]))
            opt.step()
            sched.step()
        assert opt.param_groups[0]["lr"] is lr and len(set(seen)) > 1


def test_no_weight_decay_puts_norms_and_biases_in_a_group_without_decay():
    class FancyRMSNorm(nn.Module):  # a norm layer from another library (transformers' LlamaRMSNorm and the like)
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(4))

    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.LayerNorm(4), FancyRMSNorm(),
                        nn.Linear(4, 2, bias=False))
    names = {id(p): n for n, p in net.named_parameters()}
    opt = build_optimizer(net, partial(torch.optim.SGD, lr=0.1, weight_decay=5e-4), no_weight_decay=["norm", "bias"])
    decayed, exempt = opt.param_groups
    assert sorted(names[id(p)] for p in decayed["params"]) == ["0.weight", "4.weight"]
    assert sorted(names[id(p)] for p in exempt["params"]) == ["0.bias", "1.bias", "1.weight", "2.bias", "2.weight",
                                                              "3.weight"]
    assert decayed["weight_decay"] == 5e-4 and exempt["weight_decay"] == 0.0
    only_bias = [sorted(names[id(p)] for p in g["params"]) for g in parameter_groups(net, ["bias"])]
    assert only_bias == [["0.weight", "1.weight", "2.weight", "3.weight", "4.weight"], ["0.bias", "1.bias", "2.bias"]]
    # one SGD step on zero gradients: only the decayed group shrinks (w <- w - lr * wd * w)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in net.named_parameters():
        factor = 1 - 0.1 * 5e-4 if n in ("0.weight", "4.weight") else 1.0
        torch.testing.assert_close(p.detach(), before[n] * factor)


def test_frozen_parameters_are_left_out():
    net = _net()
    net[0].weight.requires_grad_(False)
    opt = build_optimizer(net, partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.01))
    assert len(opt.param_groups) == 1 and len(opt.param_groups[0]["params"]) == 5


def test_a_model_of_only_exempt_parameters_keeps_weight_decay_zero():
    opt = build_optimizer(nn.LayerNorm(4), partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.01),
                          no_weight_decay=["norm"])
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0]


@pytest.mark.parametrize("call,match", [
    (lambda o: build_scheduler(o, partial(MultiStepLR, milestones=[0.6]), "batch", _trainer(2, 2)),
     "model.scheduler_interval='batch'"),
    (lambda o: build_scheduler(o, partial(MultiStepLR, milestones=[1.5]), "step", _trainer(2, 2)),
     r"model.scheduler.milestones=1.5: a float is a fraction"),
    (lambda o: build_scheduler(o, partial(MultiStepLR, milestones=["60"]), "step", _trainer(2, 2)),
     "model.scheduler.milestones='60'"),
    (lambda o: build_scheduler(o, partial(SequentialLR, milestones=[0.5], schedulers=[partial(StepLR, step_size=1)]),
                               "step", _trainer(2, 2)), "one scheduler more than milestones"),
    (lambda o: build_scheduler(o, "cosine", "step", _trainer(2, 2)), "model.scheduler must be null or a Hydra"),
    (lambda o: build_optimizer(_net(), partial(torch.optim.SGD, lr=0.1), no_weight_decay=["embedding"]),
     r"model.no_weight_decay=\['embedding'\]"),
])
def test_bad_recipes_name_the_key(call, match):
    opt = torch.optim.SGD(_net().parameters(), lr=0.1)
    with pytest.raises((ValueError, TypeError), match=match):
        call(opt)


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=overrides)


@pytest.mark.parametrize("option", sorted(p.stem for p in (CONF / "model" / "scheduler").glob("*.yaml")))
def test_every_scheduler_option_composes_and_builds(option):
    cfg = _compose(["model=mlp", f"model/scheduler={option}", "trainer.max_epochs=100"])
    model = instantiate(cfg.model)
    model.trainer = _trainer(100, 3)
    conf = model.configure_optimizers()
    assert conf["lr_scheduler"]["interval"] == cfg.model.scheduler_interval
    pickle.dumps(conf["lr_scheduler"]["scheduler"].state_dict())


@pytest.mark.parametrize("option", sorted(p.stem for p in (CONF / "model" / "optimizer").glob("*.yaml")
                                           if p.stem != "lbfgs"))
def test_every_optimizer_option_composes_and_builds(option):
    cfg = _compose(["model=resnet9", "data=cifar10n_5k", f"model/optimizer={option}", "model.optimizer.lr=0.05",
                    "model.no_weight_decay=[norm,bias]"])
    model = instantiate(cfg.model)
    model.trainer = _trainer(2, 3)
    opt = model.configure_optimizers()["optimizer"]
    # the triangular schedule of resnet9 starts at lr 0; the peak is the optimizer's lr
    assert type(opt).__name__.lower() == option and [g["initial_lr"] for g in opt.param_groups] == [0.05, 0.05]
    assert [g["weight_decay"] for g in opt.param_groups] == [5e-4, 0.0]
    assert pickle.loads(pickle.dumps(model.hparams))["optimizer"].keywords["lr"] == 0.05


def test_lbfgs_option_trains_the_logistic_regression():
    cfg = _compose(["model=logistic", "model/optimizer=lbfgs", "~model.optimizer.weight_decay",
                    "model.optimizer.lr=1.0"])
    model = instantiate(cfg.model)
    dm = MoonsDataModule(n_train=60, n_test=10, flips_per_class=2, seed=1)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    before = float(model.per_sample_loss(batch).mean())
    pl.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False).fit(model, datamodule=dm)
    assert type(model.trainer.optimizers[0]) is torch.optim.LBFGS
    assert float(model.per_sample_loss(batch).mean()) < before


def test_fused_and_foreach_are_plain_keys():
    cfg = _compose(["model=mlp", "model.optimizer.foreach=false", "model.optimizer.fused=false"])
    model = instantiate(cfg.model)
    group = model.configure_optimizers().param_groups[0]
    assert group["foreach"] is False and group["fused"] is False


def test_lightning_steps_an_epoch_schedule_once_per_epoch():
    """Through a real Trainer: MultiStepLR milestones [0.5] of 4 epochs at interval epoch, 3 batches per epoch."""
    dm = MoonsDataModule(n_train=60, n_test=10, flips_per_class=2, seed=1, batch_size=20)
    model = MLP(optimizer=partial(torch.optim.SGD, lr=0.1), scheduler=partial(MultiStepLR, milestones=[0.5]),
                scheduler_interval="epoch")
    seen = []

    class Record(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            seen.append(trainer.optimizers[0].param_groups[0]["lr"])

    pl.Trainer(max_epochs=4, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, callbacks=[Record()]).fit(model, datamodule=dm)
    assert seen == pytest.approx([0.1] * 6 + [0.01] * 6)
