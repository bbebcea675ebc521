"""experiment=recipe_r_cifar10n_5k (issue #15, part 6) builds recipe R exactly, its `nearest` sibling differs in the
three augmentation / normalisation settings only, and both run end to end on CPU on a tiny slice of CIFAR-10N-5k."""

from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from gradsift import pipeline
from gradsift.models.optim import build_optimizer, build_scheduler
from tests.test_config import CONF


def _cfg(experiment, *overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=[f"experiment={experiment}", *overrides])


def test_recipe_r_preset_is_recipe_r():
    cfg = _cfg("recipe_r_cifar10n_5k")
    assert cfg.data.dataset == "cifar10n_5k" and cfg.data.noise == "worst" and cfg.data.val_size == 0
    assert cfg.model.backbone._target_.endswith("resnet18") and not cfg.model.backbone.pretrained
    assert cfg.trainer.max_epochs == 40 and cfg.trainer.precision == "bf16-mixed" and cfg.data.batch_size == 256
    assert OmegaConf.to_container(cfg.data.augment) == {"padding": 4, "pad_mode": "reflect", "crop": "per_batch",
                                                        "flip": True}
    assert cfg.data.normalize == "dataset" and cfg.data.shuffle
    assert cfg.gradients.parameters == "last_layer" and cfg.scorer._target_.endswith("NormScorer") and cfg.scorer.ord == 2
    assert cfg.trim.fraction == 0.05 and cfg.retrain
    # the optimizer and schedule torch builds from it: SGD nesterov 0.9, wd 5e-4 on every parameter, OneCycleLR with
    # max_lr 0.1, pct_start 0.25 and torch's defaults otherwise, stepped per batch
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 2))
    opt = build_optimizer(net, instantiate(cfg.model.optimizer), cfg.model.no_weight_decay)
    (group,) = opt.param_groups
    assert isinstance(opt, torch.optim.SGD) and group["nesterov"] and group["weight_decay"] == 5e-4
    built = build_scheduler(opt, instantiate(cfg.model.scheduler), cfg.model.scheduler_interval,
                            SimpleNamespace(estimated_stepping_batches=400, max_epochs=40))
    sched, interval = built["scheduler"], built["interval"]
    ref_opt = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.1, momentum=0.9, nesterov=True)
    ref = torch.optim.lr_scheduler.OneCycleLR(ref_opt, max_lr=0.1, total_steps=400, pct_start=0.25)
    assert interval == "step"
    for _ in range(399):
        assert opt.param_groups[0]["lr"] == pytest.approx(ref_opt.param_groups[0]["lr"])
        assert opt.param_groups[0]["momentum"] == pytest.approx(ref_opt.param_groups[0]["momentum"])
        opt.step(), sched.step(), ref_opt.step(), ref.step()


def test_nearest_recipe_differs_in_the_three_settings_only():
    r = OmegaConf.to_container(_cfg("recipe_r_cifar10n_5k"), resolve=False)
    near = OmegaConf.to_container(_cfg("recipe_r_nearest_cifar10n_5k"), resolve=False)
    assert near["data"].pop("augment") == {"padding": 4, "pad_mode": "zeros", "crop": "per_sample", "flip": True}
    assert near["data"].pop("normalize") == "cifar_n"
    r["data"].pop("augment"), r["data"].pop("normalize")
    assert near.pop("experiment_name") == "recipe_r_nearest_cifar10n_5k"
    r.pop("experiment_name")
    assert near == r


TINY = ["data.subset=60", "data.test_size=20", "data.device=null", "data.batch_size=20", "data.eval_batch_size=30",
        "trainer.max_epochs=1", "trainer.precision=32", "torch_threads=1", "trainer.enable_progress_bar=false"]


@pytest.mark.parametrize("experiment", ["recipe_r_cifar10n_5k", "recipe_r_nearest_cifar10n_5k"])
def test_recipe_r_presets_run_on_cpu(experiment, tmp_path, shared_data):
    cfg = _cfg(experiment, *TINY, f"paths.data_dir={shared_data}", f"paths.cache_dir={tmp_path / 'cache'}")
    res = pipeline.run(cfg, tmp_path / "run", choices={"scorer": "l2"})
    m = res["metrics"]
    assert res["status"] == "ok" and m["n_trimmed"] == 3
    assert {"detection_auc", "precision", "test_acc", "base_test_acc"} <= set(m)
