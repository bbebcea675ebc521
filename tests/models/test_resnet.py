"""CIFAR ResNets and the image classifier: shapes, parameter counts, per-sample gradients, a Lightning smoke run."""

from __future__ import annotations

import importlib.util
import pickle
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch.optim.lr_scheduler import MultiStepLR, OneCycleLR

from gradsift.attribution.gradients import PerSampleGradients, select_parameters
from gradsift.data.cifar_n import CIFARNDataModule
from gradsift.models.image_classifier import ImageClassifier
from gradsift.models.optim import linear_warmup_decay
from gradsift.models.resnet import resnet9, resnet18, resnet34


def _count(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("build,params", [(resnet18, 11_173_962), (resnet34, 21_282_122)])
def test_cifar_resnet_shapes_and_counts(build, params):
    """Counts of the CIFAR-N authors' ResNet-18/34 (3x3 stem, 512 -> 10 linear)."""
    model = build(num_classes=10).eval()
    assert _count(model) == params
    assert tuple(model.fc.weight.shape) == (10, 512) and tuple(model.fc.bias.shape) == (10,)
    assert tuple(model.conv1.weight.shape) == (64, 3, 3, 3)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert build(num_classes=100).fc.out_features == 100


@pytest.mark.parametrize("variant,params,width", [("trak", 2_274_880, 128), ("dawnbench", 6_573_120, 512)])
def test_resnet9_variants(variant, params, width):
    model = resnet9(num_classes=10, variant=variant).eval()
    assert _count(model) == params
    assert tuple(model.fc.weight.shape) == (10, width) and model.fc.bias is None
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="variant"):
        resnet9(variant="resnet9000")


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None, reason="torchvision is installed")
def test_pretrained_without_torchvision_says_how_to_fix():
    with pytest.raises(ImportError, match="gradsift\\[vision\\]"):
        resnet34(pretrained=True)


def test_last_layer_per_sample_gradients_match_loop():
    """The engine's last-layer gradients of the classifier (channels_last) equal per-sample backward passes."""
    torch.manual_seed(0)
    module = ImageClassifier(resnet9(num_classes=10), channels_last=True).eval()
    assert list(select_parameters(module, "last_layer")) == ["backbone.fc.weight"]
    assert list(select_parameters(ImageClassifier(resnet18()), "last_layer")) == ["backbone.fc.weight",
                                                                                 "backbone.fc.bias"]
    batch = {"x": torch.randn(3, 3, 32, 32), "label": torch.tensor([1, 4, 9]), "index": torch.arange(3)}
    grads = PerSampleGradients("last_layer", progress=False).gather(module, [batch])
    assert grads.grads.shape == (3, 128 * 10)
    for i in range(3):
        module.zero_grad()
        module.per_sample_loss({k: v[i:i + 1] for k, v in batch.items()}).sum().backward()
        np.testing.assert_allclose(grads.grads[i], module.backbone.fc.weight.grad.flatten().numpy(),
                                   rtol=1e-4, atol=1e-6)


SCHEDULES = {"multistep": partial(MultiStepLR, milestones=[0.5]), "onecycle": partial(OneCycleLR, pct_start=0.25),
             "linear": partial(linear_warmup_decay, warmup=0.25)}


@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_schedules_follow_training_length(schedule):
    module = ImageClassifier(resnet9(), optimizer=partial(torch.optim.SGD, lr=0.4, momentum=0.9),
                             scheduler=SCHEDULES[schedule])
    module.trainer = type("T", (), {"estimated_stepping_batches": 100})()
    conf = module.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    assert conf["lr_scheduler"]["interval"] == "step"
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    if schedule == "multistep":
        assert lrs[49] == pytest.approx(0.4) and lrs[50] == pytest.approx(0.04)
    else:
        assert max(lrs) == pytest.approx(0.4, rel=1e-3) and int(np.argmax(lrs)) in (24, 25) and lrs[-1] < 0.02


def _fake_cifar(root: Path) -> None:
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    labels = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        y = [int(v) for v in np.arange(8) % 10]
        with open(folder / name, "wb") as f:
            pickle.dump({b"labels": y, b"data": rng.integers(0, 256, (8, 3072), dtype=np.uint8)}, f, protocol=2)
        labels += y if name != "test_batch" else []
    clean = np.array(labels, dtype=np.int64)
    np.savez(root / "cifar10n_labels.npz", clean_label=clean, aggre_label=(clean + 1) % 10)


def test_fast_dev_run_on_fake_cifar(tmp_path):
    """One train/val/test step of ResNet-9 on a fake CIFAR folder through pytorch_lightning.Trainer (CPU)."""
    _fake_cifar(tmp_path)
    dm = CIFARNDataModule(data_dir=str(tmp_path), download=False, val_size=10, batch_size=8, eval_batch_size=8)
    model = ImageClassifier(resnet9(num_classes=10), optimizer=partial(torch.optim.SGD, lr=0.05, momentum=0.9),
                            scheduler=partial(OneCycleLR, pct_start=0.25), channels_last=True)
    trainer = pl.Trainer(fast_dev_run=True, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=str(tmp_path))
    trainer.fit(model, datamodule=dm)
    metrics = trainer.test(model, datamodule=dm, verbose=False)[0]
    assert np.isfinite(metrics["test/loss"]) and 0 <= metrics["test/acc"] <= 1


@pytest.mark.parametrize("data,model,trainer", [("cifar10n", "resnet34", "paper"), ("cifar10n_5k", "resnet9", "fast"),
                                                ("cifar100n", "resnet18", "fast")])
def test_configs_compose_and_instantiate(data, model, trainer, tmp_path):
    """conf/data, conf/model, conf/trainer compose with the root config; the head follows data.num_classes."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from gradsift import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"data={data}", f"model={model}", f"trainer={trainer}",
                                           f"paths.root_dir={tmp_path}"])
    dm = instantiate(cfg.data)
    module = instantiate(cfg.model)
    assert isinstance(dm, CIFARNDataModule) and dm.dataset == data
    assert module.backbone.fc.out_features == dm.num_classes
    assert cfg.trainer._target_ == "pytorch_lightning.Trainer"
    assert cfg.trainer.precision == ("bf16-mixed" if trainer == "fast" else "32-true")
