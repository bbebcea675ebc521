"""Every packaged config (src/gradsift/conf) composes and instantiates; bad values fail with an error naming the key."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from gradsift import CONFIG_DIR

CONF = CONFIG_DIR
# groups whose options are instantiated on their own (data/model/... are constructed, not set up)
GROUPS = ["data", "model", "trainer", "gradients", "compressor", "scorer", "trim", "logger", "metric"]
# options that download weights from a hub when constructed: composed only, not instantiated offline
HUB_ONLY = {("model", "roberta_large_lora"), ("model", "roberta_base_lora"), ("model", "gpt2"),
            ("model", "pythia_1b4"), ("model", "llama3_2_1b"), ("model", "llama2_13b_chat_lora"),
            # loads the real 135M model from its pip package (20-40 s); covered by a slow test
            ("model", "smollm2_135m"),
            # loads all-mpnet-base-v2 (109M) from the folder make fetch-mpnet builds; the MPNet tests load it when
            # it is there and a tiny random MPNet through the same config always
            ("model", "mpnet_base_lora"),
            # Lightning refuses an FSDP strategy without a GPU; tests/models/test_causal_lm.py builds the strategy
            ("trainer", "fsdp")}
# data options whose config interpolates the model's tokenizer: composed together with a matching model
COMPANION = {"glue": "model=minilm_lora", "datainf": "model=tiny_gpt2", "wikitext": "model=tiny_gpt2",
             "cifar": "model=resnet18", "resnet": "data=cifar10n_5k", "minilm": "data=glue_sst2",
             "roberta": "data=glue_sst2"}


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml")) if (CONF / group).exists() else []


def _compose(overrides: list[str], hydra_runtime: Path | None = None):
    """Compose the root config; with ``hydra_runtime`` also set HydraConfig as a running job would
    (so ``${hydra:runtime.output_dir}`` in logger configs resolves)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=hydra_runtime is not None)
    if hydra_runtime is not None:
        from hydra.core.hydra_config import HydraConfig
        from omegaconf import open_dict

        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(hydra_runtime)
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg["hydra"]
    return cfg


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in _options(g)])
def test_every_group_option_composes_and_instantiates(group, option, tmp_path):
    extra = [v for k, v in COMPANION.items() if group in ("data", "model") and option.startswith(k)]
    cfg = _compose([f"{group}={option}", f"paths.cache_dir={tmp_path}", *extra], hydra_runtime=tmp_path)
    node = cfg.get(group)
    OmegaConf.to_container(cfg, resolve=True)
    if node is None or "_target_" not in node or (group, option) in HUB_ONLY:
        return
    if group == "gradients":
        obj = instantiate(node, compressor=instantiate(cfg.compressor))
    else:
        obj = instantiate(node)
    assert obj is not None


@pytest.mark.parametrize("experiment", _options("experiment"))
def test_every_experiment_preset_composes(experiment, tmp_path):
    cfg = _compose([f"experiment={experiment}", f"paths.cache_dir={tmp_path}"])
    OmegaConf.to_container(cfg, resolve=True)
    assert cfg.experiment_name


def test_unknown_scorer_names_the_group():
    with pytest.raises(ConfigCompositionException, match="scorer"):
        _compose(["scorer=no_such_method"])


def test_bad_trim_values_name_the_key():
    cfg = _compose(["trim.budget=-3"])
    with pytest.raises(Exception, match="trim.budget"):
        instantiate(cfg.trim)


def test_short_dirname_keeps_short_names_and_cuts_long_ones_uniquely():
    from gradsift.resolvers import short_dirname

    assert short_dirname("0_scorer=l2,seed=1") == "0_scorer=l2,seed=1"
    a, b = short_dirname("0_" + "x" * 300), short_dirname("1_" + "x" * 300)
    assert len(a) == len(b) == 150 and a != b and a.startswith("0_xxx")


@pytest.mark.parametrize("trainer", ["fast", "paper"])
def test_gpu_recipes_turn_on_deterministic_kernels_without_failing_on_missing_ones(trainer, tmp_path):
    """trainer=fast (and trainer=paper) must be reproducible by default: two benchmark=true processes of one seed differed by 2.6
    points on the GPU, deterministic ones gave the same bits (multirun_summaries/runs/gpu_repro)."""
    import torch

    cfg = _compose([f"trainer={trainer}", "trainer.accelerator=cpu", "trainer.precision=32", f"paths.root_dir={tmp_path}"])
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.benchmark)
    try:
        instantiate(cfg.trainer)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()  # "warn": a missing kernel warns, not fails
        assert torch.backends.cudnn.benchmark is False
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.benchmark = before[2]
