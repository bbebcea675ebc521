"""The manual / CUDA-graph training step, the compile and fused-SGD options (CPU: the graph replays eagerly here).

CUDA graphs cannot run on CPU, so :class:`EagerReplay` stands in for the capture: its "replay" runs the captured
step function eagerly on the static buffers, with the learning rate read from the device tensor as the graph
would. Everything else (warm-up count, static buffers, short batches, the lr refill, scheduler stepping, the
fallback when momentum changes, Lightning's step count) is the production code, and must give the parameters of
Lightning's automatic optimization bit for bit in fp32.
"""

from __future__ import annotations

import types
from functools import partial

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from gradsift.data.augment import Augment, Normalize
from gradsift.data.cifar_n import ImageDataset
from gradsift.data.resident import ResidentBatches
from gradsift.models.base import GradsiftModule
from gradsift.models.image_classifier import ImageClassifier
from gradsift.models.optim import linear_warmup_decay
from gradsift.models.resnet import resnet9
from gradsift.models.train_step import TrainStep, check_graph_optimizer


class EagerReplay(TrainStep):
    """TrainStep whose captured step is 'replayed' eagerly (zeroing in place what the graph would overwrite)."""

    def _record(self, step):
        def replay():
            self.optimizer.zero_grad(set_to_none=False)
            with self._lr_on_device():
                return step()

        return replay


@pytest.fixture()
def eager_replay(monkeypatch):
    """GradsiftModule builds an EagerReplay step with the graph path switched on."""
    def make(self, optimizer):
        step = EagerReplay(lambda b: self.per_sample_loss(b).mean(), optimizer, self.device)
        step.graph = True  # the graph path, which the constructor allows on CUDA only
        return step

    monkeypatch.setattr(GradsiftModule, "make_train_step", make)


def _loader(n: int = 70, batch: int = 16) -> ResidentBatches:
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen)
    y = torch.randint(0, 10, (n,), generator=gen)
    ds = ImageDataset({"x": x, "label": y, "clean_label": y}, index=np.arange(n))
    return ResidentBatches(ds, batch, True, torch.Generator().manual_seed(0), Normalize((0.5,) * 3, (0.25,) * 3),
                           Augment(), torch.Generator().manual_seed(1))


def _fit(model: pl.LightningModule, epochs: int = 2) -> pl.Trainer:
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(model, train_dataloaders=_loader())
    return trainer


SCHEDULERS = {"linear": partial(linear_warmup_decay, warmup=0.25),
              "multistep": partial(torch.optim.lr_scheduler.MultiStepLR, milestones=(0.5,), gamma=0.1),
              "onecycle": partial(torch.optim.lr_scheduler.OneCycleLR, pct_start=0.25), "constant": None}


def _model(seed: int = 0, schedule: str = "linear", fused: bool | None = None, foreach: bool | None = None,
           **kw) -> ImageClassifier:
    """ResNet-9 with SGD(lr 0.1, momentum 0.9, wd 5e-4) and one of :data:`SCHEDULERS`."""
    pl.seed_everything(seed, verbose=False)
    optimizer = partial(torch.optim.SGD, lr=0.1, momentum=0.9, weight_decay=5e-4, fused=fused, foreach=foreach)
    return ImageClassifier(resnet9(num_classes=10), optimizer=optimizer, scheduler=SCHEDULERS[schedule], **kw)


def _assert_same_parameters(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_manual_step_equals_automatic_optimization():
    auto = _model()
    t_auto = _fit(auto)
    manual = _model(cuda_graph=True)
    assert not manual.automatic_optimization
    with pytest.warns(UserWarning, match="cuda_graph=true: training on cpu"):
        t_manual = _fit(manual)
    _assert_same_parameters(auto, manual)
    assert t_manual.global_step == t_auto.global_step == 10
    assert manual.train_step_counts == {"eager": 10, "warmup": 0, "capture": 0, "replay": 0}
    assert manual._train_step is None  # released at the end of training


@pytest.mark.parametrize("schedule", ["linear", "multistep"])
def test_graph_path_equals_automatic_optimization(eager_replay, schedule):
    """70 images in batches of 16, 2 epochs: 3 warm-up steps, the capture, 4 replays, 2 short batches eagerly."""
    auto = _model(schedule=schedule)
    _fit(auto)
    graphed = _model(schedule=schedule, cuda_graph=True)
    trainer = _fit(graphed)
    _assert_same_parameters(auto, graphed)
    assert graphed.train_step_counts == {"eager": 2, "warmup": 3, "capture": 1, "replay": 4}
    assert graphed.train_step_dropped is None and trainer.global_step == 10


def test_momentum_schedule_drops_the_graph_and_stays_exact(eager_replay):
    """OneCycleLR cycles momentum, which a graph would replay as captured: the steps after the capture run eagerly."""
    auto = _model(schedule="onecycle")
    _fit(auto)
    graphed = _model(schedule="onecycle", cuda_graph=True)
    with pytest.warns(UserWarning, match=r"\['momentum'\] changed after the capture"):
        _fit(graphed)
    _assert_same_parameters(auto, graphed)
    assert graphed.train_step_counts == {"eager": 6, "warmup": 3, "capture": 1, "replay": 0}
    assert "momentum" in graphed.train_step_dropped


class _EpochScheduled(ImageClassifier):
    """A StepLR stepped once per epoch (Lightning's interval: epoch)."""

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.StepLR(opt, 1, 0.5),
                                                   "interval": "epoch"}}


def test_epoch_interval_schedulers_step_as_in_automatic_optimization(eager_replay):
    pl.seed_everything(0, verbose=False)
    auto = _EpochScheduled(resnet9(num_classes=10))
    _fit(auto, epochs=3)
    pl.seed_everything(0, verbose=False)
    graphed = _EpochScheduled(resnet9(num_classes=10), cuda_graph=True)
    trainer = _fit(graphed, epochs=3)
    _assert_same_parameters(auto, graphed)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.1 * 0.5 ** 3)


def test_train_step_lr_is_read_from_the_device_tensor_after_capture():
    """Changing the float lr after the capture refills the tensor the graph reads (here: the eager stand-in)."""
    lin = nn.Linear(3, 2)
    opt = torch.optim.SGD(lin.parameters(), lr=0.5)
    step = EagerReplay(lambda b: (lin(b["x"]) - b["y"]).pow(2).mean(), opt, torch.device("cpu"))
    step.graph = True
    batch = {"x": torch.ones(4, 3), "y": torch.zeros(4, 2)}
    for _ in range(TrainStep.WARMUP + 1):
        step(batch)
    opt.param_groups[0]["lr"] = 0.25
    seen = []
    original = opt.step

    def spy():
        seen.append(opt.param_groups[0]["lr"])
        original()

    opt.step = spy
    step(batch)
    assert isinstance(seen[0], torch.Tensor) and float(seen[0]) == 0.25
    assert opt.param_groups[0]["lr"] == 0.25  # the float is back after the replay
    assert step.counts == {"eager": 0, "warmup": 3, "capture": 1, "replay": 1}
    step(dict(batch, x=torch.ones(2, 3), y=torch.zeros(2, 2)))  # another shape: eagerly
    assert step.counts["eager"] == 1


def test_graph_needs_cuda_and_a_device_stepping_optimizer():
    lin = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        TrainStep(lambda b: lin(b["x"]).sum(), torch.optim.SGD(lin.parameters(), lr=0.1), torch.device("cpu"),
                  graph=True)
    with pytest.raises(ValueError, match=r"SGD\(fused=True\).*model.optimizer.fused=true"):
        check_graph_optimizer(torch.optim.SGD(lin.parameters(), lr=0.1))
    check_graph_optimizer(torch.optim.SGD(lin.parameters(), lr=0.1, fused=True))
    with pytest.raises(ValueError, match=r"Adam\(capturable=True\)"):
        check_graph_optimizer(torch.optim.Adam(lin.parameters()))
    check_graph_optimizer(torch.optim.Adam(lin.parameters(), capturable=True))


def test_cuda_graph_refuses_a_gradient_scaler_several_devices_and_plateau_schedulers():
    module = _model(cuda_graph=True)
    opt = torch.optim.SGD(module.parameters(), lr=0.1, fused=True)

    def trainer(**kw):
        base = {"precision_plugin": types.SimpleNamespace(scaler=None), "precision": "32-true", "world_size": 1,
                "lr_scheduler_configs": []}
        return types.SimpleNamespace(**{**base, **kw})

    module.trainer = trainer(precision_plugin=types.SimpleNamespace(scaler=object()), precision="16-mixed")
    with pytest.raises(ValueError, match="trainer.precision=16-mixed"):
        module.make_train_step(opt)
    module.trainer = trainer(world_size=2)
    with pytest.raises(ValueError, match="trains in one process"):
        module.make_train_step(opt)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)
    module.trainer = trainer(lr_scheduler_configs=[types.SimpleNamespace(scheduler=plateau)])
    with pytest.raises(ValueError, match="ReduceLROnPlateau"):
        module.make_train_step(opt)


def test_compile_runs_the_training_forward_compiled(monkeypatch):
    """model.compile: training forwards go through torch.compile (here its aot_eager backend, which compiles in
    seconds on CPU); evaluation stays eager; state_dict keys are unchanged; the result matches eager training."""
    calls = []
    real = torch.compile

    def compile_(model, mode=None):
        calls.append(mode)
        return real(model, backend="aot_eager")

    monkeypatch.setattr(torch, "compile", compile_)
    eager = _model()
    _fit(eager, epochs=1)
    compiled = _model(compile="max-autotune-no-cudagraphs")
    _fit(compiled, epochs=1)
    assert calls == ["max-autotune-no-cudagraphs"]
    assert list(compiled.state_dict()) == list(eager.state_dict())
    for k, v in eager.state_dict().items():
        torch.testing.assert_close(compiled.state_dict()[k], v, rtol=1e-4, atol=1e-5)
    compiled.eval()
    with torch.no_grad():
        x = torch.randn(2, 3, 32, 32)
        torch.testing.assert_close(compiled(x), compiled.backbone(x))


def test_compile_and_graph_options_are_checked():
    with pytest.raises(ValueError, match="model.compile"):
        ImageClassifier(resnet9(), compile="fastest")
    with pytest.raises(ValueError, match="makes CUDA graphs of its own"):
        ImageClassifier(resnet9(), compile="reduce-overhead", cuda_graph=True)
    ImageClassifier(resnet9(), compile=True, cuda_graph=True)


@pytest.mark.parametrize("fused,foreach", [(True, None), (None, True), (None, False)])
def test_sgd_kernel_options_reach_the_optimizer(fused, foreach):
    module = _model(fused=fused, foreach=foreach, schedule="constant")
    opt = module.configure_optimizers()
    assert (opt.defaults["fused"], opt.defaults["foreach"]) == (fused, foreach)


def test_fused_sgd_trains_like_foreach_sgd():
    fused, foreach = _model(fused=True), _model(foreach=True)
    _fit(fused, epochs=1)
    _fit(foreach, epochs=1)
    for k, v in foreach.state_dict().items():
        torch.testing.assert_close(fused.state_dict()[k], v, rtol=1e-5, atol=1e-6)


def test_configs_reach_the_speed_options(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from gradsift import CONFIG_DIR as conf
    for name in ("resnet34", "resnet18", "resnet9"):
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            cfg = compose("config", overrides=[f"model={name}", "data=cifar10n", f"paths.root_dir={tmp_path}",
                                               "model.optimizer.fused=true", "model.cuda_graph=true", "model.compile=true"])
        module = instantiate(cfg.model)
        assert module.cuda_graph and module.hparams.compile is True and module.hparams.optimizer.keywords["fused"]


def test_authors_multistep_per_epoch_lr_reaches_the_graph(eager_replay):
    """model/scheduler=multistep_epochs (experiment=table2_cifar10n_authors: lr / 10 at epoch 60 of 100), here at epoch
    1 of 2: the epoch-interval MultiStepLR changes only the lr, which the captured step reads from the device tensor
    refilled before each replay, so the graph is kept and the result equals automatic optimization."""
    sched = partial(torch.optim.lr_scheduler.MultiStepLR, milestones=[1], gamma=0.1)
    pl.seed_everything(0, verbose=False)
    optimizer = partial(torch.optim.SGD, lr=0.1, momentum=0.9, weight_decay=5e-4)
    auto = ImageClassifier(resnet9(num_classes=10), optimizer=optimizer, scheduler=sched, scheduler_interval="epoch")
    _fit(auto)
    pl.seed_everything(0, verbose=False)
    graphed = ImageClassifier(resnet9(num_classes=10), optimizer=optimizer, scheduler=sched,
                              scheduler_interval="epoch", cuda_graph=True)
    trainer = _fit(graphed)
    _assert_same_parameters(auto, graphed)
    assert graphed.train_step_dropped is None and graphed.train_step_counts["replay"] == 4
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.1 * 0.1)
