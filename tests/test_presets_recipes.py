"""Every preset builds the same optimizer and learning-rate schedule as before the recipe became Hydra objects
(issue #15). The old hand-written formulas of the four model classes are frozen here as the reference (the package
no longer has them) and fed with the flat keys each config had at commit 6384c7f (``HEAD_RECIPES``, read from conf/
at that commit) or that the committed result.json files record; what ``TrainingRecipe.configure_optimizers``
builds from today's config must have the same optimizer class and the same param-group hyper-parameters (lr,
momentum, weight decay, ... and the scheduler's own entries) before the first step and after every step."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import get_class, instantiate
from pytorch_lightning.utilities.parsing import AttributeDict
from torch import nn
from transformers import get_scheduler

from gradsift.models.optim import TrainingRecipe
from tests.test_config import COMPANION, CONF

ROOT = Path(__file__).resolve().parents[1]
IMAGE = "gradsift.models.image_classifier.ImageClassifier"
SEQ = "gradsift.models.sequence_classifier.SequenceClassifier"
LM = "gradsift.models.causal_lm.CausalLM"
LOGISTIC, MLP = "gradsift.models.tabular.LogisticRegression", "gradsift.models.tabular.MLP"


# ------------------------------------------------------------------ the formulas before issue #15 (reference only)
def _old_image_classifier(params, hp: dict, stepping_batches: int):
    """models/image_classifier.py ImageClassifier.configure_optimizers at 6384c7f."""
    opt = torch.optim.SGD(params, lr=hp["lr"], momentum=hp["momentum"], weight_decay=hp["weight_decay"],
                          nesterov=hp["nesterov"])
    if hp["schedule"] == "constant":
        return opt, None
    total = max(1, int(stepping_batches))
    if hp["schedule"] == "multistep":
        steps = [max(1, int(m * total)) for m in hp["milestones"]]
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, steps, gamma=hp["gamma"])
    elif hp["schedule"] == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=hp["lr"], total_steps=total,
                                                    pct_start=hp["warmup_fraction"])
    elif hp["schedule"] == "linear":
        peak = max(1, int(hp["warmup_fraction"] * total))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: s / peak if s < peak else max(0.0, (total - s) / max(1, total - peak)))
    else:
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    return opt, sched


def _old_tabular(params, hp: dict, stepping_batches: int):
    """models/tabular.py _TabularClassifier.configure_optimizers at 6384c7f."""
    opts = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD, "lbfgs": torch.optim.LBFGS}
    if hp["optimizer"] == "lbfgs":
        return torch.optim.LBFGS(params, lr=hp["lr"]), None
    return opts[hp["optimizer"]](params, lr=hp["lr"], weight_decay=hp["weight_decay"]), None


def _old_sequence_classifier(params, hp: dict, stepping_batches: int):
    """models/sequence_classifier.py SequenceClassifier.configure_optimizers at 6384c7f."""
    optimizer = torch.optim.AdamW(params, lr=hp["lr"], weight_decay=hp["weight_decay"])
    if hp["scheduler"] is None:
        return optimizer, None
    total = int(stepping_batches)
    return optimizer, get_scheduler("linear", optimizer, num_warmup_steps=int(hp["warmup_ratio"] * total),
                                    num_training_steps=total)


def _old_causal_lm(params, hp: dict, stepping_batches: int):
    """models/causal_lm.py CausalLM.configure_optimizers at 6384c7f."""
    return torch.optim.AdamW(params, lr=hp["lr"], weight_decay=hp["weight_decay"]), None


OLD = {IMAGE: _old_image_classifier, LOGISTIC: _old_tabular, MLP: _old_tabular, SEQ: _old_sequence_classifier,
       LM: _old_causal_lm}

# ------------------------------------------------------------------ the flat keys of every config at 6384c7f
_RESNET = dict(lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=False, schedule="multistep", milestones=[0.6],
               gamma=0.1, warmup_fraction=0.25)
_RESNET9 = dict(_RESNET, lr=0.4, schedule="linear", warmup_fraction=0.2)
_ONECYCLE = dict(_RESNET, schedule="onecycle")
_GLUE = dict(lr=3e-4, weight_decay=0.0, scheduler="linear", warmup_ratio=0.06)
#: config (``experiment/<name>`` or ``model/<name>``) -> (model class, flat recipe keys, trainer.max_epochs)
HEAD_RECIPES: dict[str, tuple[str, dict, int]] = {
    "experiment/dropout_figure1_cola_stability": (SEQ, _GLUE, 10),
    "experiment/dropout_table1_glue_detection": (SEQ, _GLUE, 10),
    "experiment/dropout_table2_resnet9": (IMAGE, _RESNET9, 24),
    "experiment/dropout_table3_wikitext_retrain": (LM, dict(lr=5e-5, weight_decay=0.01), 3),
    "experiment/dropout_table4_pythia_owt_retrain": (LM, dict(lr=2e-5, weight_decay=0.01), 1),
    "experiment/dropout_table5_llama_owt_retrain": (LM, dict(lr=2e-5, weight_decay=0.01), 1),
    "experiment/figure1_blobs": (LOGISTIC, dict(lr=0.1, weight_decay=0.01, optimizer="adam"), 300),
    "experiment/figure3_glue_selection": (SEQ, _GLUE, 10),
    "experiment/table1_moons": (MLP, dict(lr=0.01, weight_decay=0.001, optimizer="adam"), 300),
    "experiment/table1_moons_detector": (MLP, dict(lr=0.01, weight_decay=0.001, optimizer="adam"), 300),
    "experiment/table2_cifar100n_fast": (IMAGE, _ONECYCLE, 18),
    "experiment/table2_cifar10n_fast": (IMAGE, _ONECYCLE, 18),
    "experiment/table3_datainf_identification": (LM, dict(lr=3e-4, weight_decay=0.0), 5),
    "experiment/table5_budget_cifar10n_fast": (IMAGE, _ONECYCLE, 18),
    "experiment/table8_iforest_estimators": (IMAGE, _ONECYCLE, 18),
    "experiment/table9_resnet18": (IMAGE, _ONECYCLE, 18),
    "model/gpt2": (LM, dict(lr=5e-5, weight_decay=0.01), 300),
    "model/llama2_13b_chat_lora": (LM, dict(lr=3e-4, weight_decay=0.0), 300),
    "model/llama3_2_1b": (LM, dict(lr=2e-5, weight_decay=0.01), 300),
    "model/logistic": (LOGISTIC, dict(lr=0.1, weight_decay=0.01, optimizer="adam"), 300),
    "model/minilm_lora": (SEQ, _GLUE, 300),
    "model/mlp": (MLP, dict(lr=0.01, weight_decay=0.001, optimizer="adam"), 300),
    "model/pythia_1b4": (LM, dict(lr=2e-5, weight_decay=0.01), 300),
    "model/resnet18": (IMAGE, _RESNET, 300),
    "model/resnet34": (IMAGE, _RESNET, 300),
    "model/resnet9": (IMAGE, _RESNET9, 300),
    "model/roberta_base_lora": (SEQ, _GLUE, 300),
    "model/roberta_large_lora": (SEQ, _GLUE, 300),
    "model/smollm2_135m": (LM, dict(lr=3e-4, weight_decay=0.0), 300),
    "model/tiny_gpt2": (LM, dict(lr=1e-3, weight_decay=0.0), 300),
    "model/tiny_gpt_neox": (LM, dict(lr=1e-3, weight_decay=0.0), 300),
    "model/tiny_llama": (LM, dict(lr=1e-3, weight_decay=0.0), 300),
}


# ------------------------------------------------------------------ stand-ins and the comparison
def _stand_in_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.LayerNorm(8), nn.Linear(8, 3))


class _StandIn(TrainingRecipe, nn.Module):
    """A module with the model's recipe hyper-parameters and a stand-in trainer, run through the shared
    ``configure_optimizers``."""

    def __init__(self, hparams: dict, trainer: SimpleNamespace):
        super().__init__()
        self.net, self.hparams, self.trainer = _stand_in_net(), AttributeDict(hparams), trainer


def _trainer(epochs: int, batches: int) -> SimpleNamespace:
    return SimpleNamespace(max_epochs=epochs, num_training_batches=batches, estimated_stepping_batches=epochs * batches)


#: kernel choices, not the recipe: the same update up to rounding (tests/models/test_train_step.py,
#: test_fused_sgd_trains_like_foreach_sgd); a preset may turn them on for speed (dropout_table2_resnet9)
KERNEL_OPTIONS = ("fused", "foreach")


def _groups(opt: torch.optim.Optimizer) -> list[dict]:
    return [{k: v for k, v in g.items() if k != "params" and k not in KERNEL_OPTIONS} for g in opt.param_groups]


def _trace(opt, sched, interval: str, epochs: int, batches: int) -> list[list[dict]]:
    """The param groups' hyper-parameters before every optimizer step and at the end, Lightning's stepping order."""
    out = []
    for _ in range(epochs):
        for _ in range(batches):
            out.append(_groups(opt))
            opt.step()
            if sched is not None and interval == "step":
                sched.step()
        if sched is not None and interval == "epoch":
            sched.step()
    return out + [_groups(opt)]


def _new(cfg, trainer) -> tuple[torch.optim.Optimizer, object, str]:
    m = cfg.model
    model_cls = get_class(m._target_)
    assert model_cls.configure_optimizers is TrainingRecipe.configure_optimizers
    assert {"optimizer", "scheduler", "scheduler_interval", "no_weight_decay"} <= set(
        inspect.signature(model_cls).parameters)
    hp = {"optimizer": instantiate(m.optimizer), "scheduler": None if m.scheduler is None else instantiate(m.scheduler),
          "scheduler_interval": m.scheduler_interval, "no_weight_decay": list(m.no_weight_decay)}
    conf = _StandIn(hp, trainer).configure_optimizers()
    if isinstance(conf, torch.optim.Optimizer):
        return conf, None, "step"
    return conf["optimizer"], conf["lr_scheduler"]["scheduler"], conf["lr_scheduler"]["interval"]


def _assert_same_recipe(cfg, target: str, flat: dict, epochs: int, batches: int) -> None:
    trainer = _trainer(epochs, batches)
    assert cfg.model._target_ == target
    new_opt, new_sched, interval = _new(cfg, trainer)
    old_opt, old_sched = OLD[target](list(_stand_in_net().parameters()), flat, trainer.estimated_stepping_batches)
    assert type(new_opt) is type(old_opt) and type(new_sched) is type(old_sched)
    assert len(new_opt.param_groups) == len(old_opt.param_groups) == 1
    new_trace = _trace(new_opt, new_sched, interval, epochs, batches)
    old_trace = _trace(old_opt, old_sched, "step", epochs, batches)
    first_difference = next((i for i, (a, b) in enumerate(zip(new_trace, old_trace)) if a != b), None)
    assert first_difference is None, (first_difference, new_trace[first_difference], old_trace[first_difference])


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=overrides)


def _overrides(key: str) -> list[str]:
    group, name = key.split("/")
    extra = [v for k, v in COMPANION.items() if group == "model" and name.startswith(k)]
    return [f"{group}={name}", *extra]


def test_the_reference_covers_every_config_of_that_commit():
    for key in HEAD_RECIPES:
        assert (CONF / f"{key}.yaml").is_file(), key


# (epochs, batches per epoch): the preset's own epochs, a short and a long run. Every total is >= 5 steps, where
# ResNet-9's 20% warm-up is at least one step (below, the old code forced one step at lr 0; see tests/models/test_optim)
@pytest.mark.parametrize("key", sorted(HEAD_RECIPES))
@pytest.mark.parametrize("epochs,batches", [(None, 7), (3, 50), (100, 20)])
def test_preset_builds_the_same_optimizer_and_schedule_as_before(key, epochs, batches):
    target, flat, max_epochs = HEAD_RECIPES[key]
    cfg = _compose(_overrides(key))
    assert cfg.trainer.max_epochs == max_epochs
    _assert_same_recipe(cfg, target, flat, epochs or max_epochs, batches)


def _committed_recipes() -> list[dict]:
    """The distinct (model recipe, max_epochs) of the committed result.json files (old layout)."""
    keys = ("_target_", "lr", "momentum", "weight_decay", "nesterov", "schedule", "milestones", "gamma",
            "warmup_fraction", "optimizer", "scheduler", "warmup_ratio")
    seen = {}
    for path in sorted((ROOT / "multirun_summaries" / "runs").rglob("result.json")):
        config = json.loads(path.read_text()).get("config") or {}
        if "model" not in config or isinstance(config["model"].get("optimizer"), dict):
            continue  # no model, or a run of today's layout (model.optimizer is an object): nothing to translate
        recipe = {k: config["model"][k] for k in keys if k in config["model"]}
        recipe["max_epochs"] = config["trainer"]["max_epochs"]
        seen.setdefault(json.dumps(recipe, sort_keys=True), recipe)
    return list(seen.values())


def _todays_command(old: dict) -> list[str]:
    """Today's spelling of the command that ran a committed recipe (model.lr -> model.optimizer.lr)."""
    image = {"onecycle": "table2_cifar10n_fast", "linear": "dropout_table2_resnet9"}.get(old.get("schedule"))
    experiment = {IMAGE: image, SEQ: "dropout_table1_glue_detection",
                  LM: "dropout_table3_wikitext_retrain"}[old["_target_"]]
    return [f"experiment={experiment}", f"model.optimizer.lr={old['lr']}",
            f"model.optimizer.weight_decay={old['weight_decay']}", f"trainer.max_epochs={old['max_epochs']}"]


@pytest.mark.parametrize("old", _committed_recipes(), ids=lambda r: f"{r['_target_'].rsplit('.', 1)[-1]}-lr{r['lr']}"
                                                                  f"-{r.get('schedule', r.get('scheduler'))}")
def test_committed_runs_recipe_is_rebuilt_by_todays_command(old):
    """The recipes behind the committed tables (result.json, old layout) come out of today's spelling unchanged."""
    assert old["_target_"] in OLD
    cfg = _compose(_todays_command(old))
    _assert_same_recipe(cfg, old["_target_"], old, old["max_epochs"], 20)


def test_committed_runs_have_recipes():
    recipes = _committed_recipes()
    assert len(recipes) >= 5 and {r["_target_"] for r in recipes} == {IMAGE, SEQ, LM}
