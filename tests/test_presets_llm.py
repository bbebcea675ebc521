"""The language-model presets compose and run end to end on tiny data (CPU): OGA Table 3 identification
(tiny GPT-2 from config + a BPE trained on generated DataInf prompts) and the dropout paper's WikiText
removal-retrain (tiny GPT-2 fully fine-tuned on a few real WikiText-2 chunks). The real runs use SmolLM2-135M
on a GPU; see docs/results/llm.md."""

import pytest
from hydra import compose, initialize_config_dir

from gradsift import pipeline
from tests.test_config import CONF


def _cfg(experiment, overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=[f"experiment={experiment}", *overrides])


def test_table3_preset_composes_for_the_gpu():
    cfg = _cfg("table3_datainf_identification", [])
    assert cfg.flow == "identification" and cfg.attribution.reference == "test"
    assert cfg.model.model == "smollm2_135m" and cfg.model.lora_rank == 8
    assert list(cfg.model.target_modules) == ["q_proj", "v_proj"] and cfg.gradients.parameters == "lora"


@pytest.mark.parametrize("scorer", ["datainf"])
def test_table3_preset_runs_end_to_end_on_tiny_data(scorer, tmp_path):
    cfg = _cfg("table3_datainf_identification", [
        f"scorer={scorer}", "data=datainf_math_with_reason", "model=tiny_gpt2", "data.generate=true",
        "data.num_classes=2", "data.train_per_class=4", "data.test_per_class=2", "data.max_length=128",
        "trainer=default", "trainer.max_epochs=1", "torch_threads=1", f"paths.cache_dir={tmp_path / 'cache'}"])
    res = pipeline.run(cfg, tmp_path / "run", choices={"scorer": scorer})
    assert res["status"] == "ok" and res["method"] == "DataInf" and res["dataset"] == "math_with_reason"
    assert res["metrics"]["n_train"] == 8 and 0 <= res["metrics"]["detection_auc"] <= 1


def test_wikitext_preset_composes_for_the_gpu(shared_data):
    cfg = _cfg("dropout_table3_wikitext_retrain", [f"paths.data_dir={shared_data}"])
    assert cfg.model.lora_rank is None and cfg.model.lr == 5e-5 and cfg.data.n_train == 2000
    assert cfg.trim.remove == "beneficial" and cfg.attribution.reference == "test" and cfg.trainer.max_epochs == 3


# (extra overrides, choices): the compressed rows, and the uncompressed one-layer rows (Hessian-Free / DataInf)
VARIANTS = [(["compressor.r=16", r"gradients.parameters=['h\.\d+\.(attn|mlp)\.c_\w+\.weight']"],
             {"scorer": "compressed_influence", "compressor": "dropout"}),
            (["compressor=identity", "~compressor.r", "scorer=tracin",
              r"gradients.parameters=[h\.1\.attn\.c_proj\.weight]"], {"scorer": "tracin", "compressor": "identity"})]


@pytest.mark.parametrize("extra,choices", VARIANTS, ids=["dropout", "hessian_free"])
def test_wikitext_preset_runs_end_to_end_on_tiny_data(extra, choices, tmp_path, shared_data):
    cfg = _cfg("dropout_table3_wikitext_retrain", [
        "model=tiny_gpt2", "data.n_train=24", "data.n_test=4", "data.seq_len=32", "data.batch_size=8",
        "data.eval_batch_size=8", "trainer=default", "trainer.max_epochs=1", "trim.budget=5", "torch_threads=1",
        *extra, f"paths.data_dir={shared_data}", f"paths.cache_dir={tmp_path / 'cache'}"])
    res = pipeline.run(cfg, tmp_path / "run", choices=choices)
    assert res["status"] == "ok" and res["budget"] == {"kind": "count", "value": 5}
    m = res["metrics"]
    assert m["n_trimmed"] == 5 and m["test_perplexity"] > 1 and m["base_test_perplexity"] > 1
