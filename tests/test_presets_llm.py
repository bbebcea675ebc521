"""The language-model presets compose and run end to end on tiny data (CPU): OGA Table 3 identification
(tiny GPT-2 from config + a BPE trained on generated DataInf prompts) and the dropout paper's WikiText
removal-retrain (tiny GPT-2 fully fine-tuned on a few real WikiText-2 chunks). The real runs use SmolLM2-135M
on a GPU; see docs/results/llm.md."""

import pytest
import yaml
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
    assert cfg.model.lora_rank is None and cfg.model.optimizer.lr == 5e-5 and cfg.data.n_train == 2000
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
    # text has no class labels: no label-noise metrics (they read precision 0.0, recall NaN before)
    assert not {"precision", "recall", "detection_acc", "detection_auc", "n_noisy"} & set(m)


OWT_PRESETS = {"dropout_table4_pythia_owt_retrain": ("EleutherAI/pythia-1.4b", "tiny_gpt_neox", 4),
               "dropout_table5_llama_owt_retrain": ("meta-llama/Llama-3.2-1B", "tiny_llama", 7)}


@pytest.mark.parametrize("experiment", list(OWT_PRESETS))
def test_owt_presets_compose_with_the_papers_recipe(experiment):
    cfg = _cfg(experiment, [])
    hub_name, _, _ = OWT_PRESETS[experiment]
    assert cfg.model.model == hub_name and cfg.model.lora_rank is None
    assert cfg.model.optimizer.lr == 2e-5 and cfg.model.optimizer.weight_decay == 0.01 and cfg.trainer.max_epochs == 1
    assert cfg.data.corpus == "openwebtext" and cfg.data.n_train == 2000 and cfg.data.seq_len == 128
    assert cfg.data.batch_size == 16 and cfg.compressor.r == 512 and cfg.trim.remove == "beneficial"
    assert cfg.attribution.reference == "test"


def _owt_files(tmp_path):
    # a small local "OpenWebText": offline users point data.train_file / data.test_file at text files
    rng = __import__("random").Random(0)
    words = "the a model data sample gradient training test web text page news story people city year".split()
    for name, n in (("train.txt", 400), ("test.txt", 60)):
        (tmp_path / name).write_text("\n".join(" ".join(rng.choice(words) for _ in range(12)) for _ in range(n)))
    return [f"data.train_file={tmp_path / 'train.txt'}", f"data.test_file={tmp_path / 'test.txt'}"]


@pytest.mark.parametrize("experiment", list(OWT_PRESETS))
@pytest.mark.parametrize("rows", ["dropout", "logra"])
def test_owt_presets_run_end_to_end_on_tiny_models(experiment, rows, tmp_path):
    _, tiny, per_layer = OWT_PRESETS[experiment]
    extra = ["compressor.r=16"] if rows == "dropout" else ["compressor=logra", "compressor.r=4", "scorer=orig"]
    cfg = _cfg(experiment, [f"model={tiny}", "data.n_train=24", "data.n_test=4", "data.seq_len=32",
                            "data.batch_size=8", "trainer=default", "trainer.max_epochs=1", "trim.budget=0.25",
                            "torch_threads=1", *_owt_files(tmp_path), *extra, f"paths.cache_dir={tmp_path / 'cache'}"])
    res = pipeline.run(cfg, tmp_path / "run", choices={"compressor": rows})
    assert res["status"] == "ok", res.get("error")
    assert res["budget"] == {"kind": "fraction", "value": 0.25} and res["metrics"]["n_trimmed"] == 6
    assert res["metrics"]["test_perplexity"] > 1 and res["metrics"]["base_test_perplexity"] > 1
    # the preset's gradient pattern picks every Linear weight of both tiny decoder layers (and nothing else)
    from hydra.utils import instantiate

    from gradsift.attribution.gradients import select_parameters

    chosen = select_parameters(instantiate(cfg.model), cfg.gradients.parameters)
    assert len(chosen) == 2 * per_layer and all(".layers." in n and n.endswith(".weight") for n in chosen), chosen


def test_table3_paper_recipe_composes_with_b23():
    cfg = _cfg("table3_datainf_paper_recipe", [])
    # OGA B.2.3: LoRA r=8 on query and value, lr 3e-4, batch 32, 25 epochs
    assert cfg.model.model == "smollm2_135m" and cfg.model.lora_rank == 8
    assert list(cfg.model.target_modules) == ["q_proj", "v_proj"] and cfg.model.optimizer.lr == 3e-4
    assert cfg.data.batch_size == 32 and cfg.trainer.max_epochs == 25 and cfg.eval_every_epoch
    assert cfg.flow == "identification" and cfg.attribution.reference == "test"
    assert cfg.identification.scoring == "ours" and cfg.identification.features == "all"
    assert cfg.scorer.calibration == "none"
    sweep = yaml.safe_load((CONF / "experiment" / "table3_datainf_paper_recipe.yaml").read_text())["hydra"]["sweeper"]
    sweep = sweep["params"]
    assert sweep["seed"] == "0,1,2" and sweep["scorer"] == "iforest,tracin,datainf"
    assert sweep["data"].count("datainf_") == 3


def test_table3_paper_recipe_runs_both_conventions_on_tiny_data(tmp_path):
    tiny = ["model=tiny_gpt2", "data.generate=true", "data.num_classes=3", "data.train_per_class=4",
            "data.test_per_class=2", "data.max_length=96", "trainer=default", "trainer.max_epochs=2", "torch_threads=1",
            "identification.heatmap=false", f"paths.cache_dir={tmp_path / 'cache'}"]
    ours = pipeline.run(_cfg("table3_datainf_paper_recipe", tiny), tmp_path / "ours", choices={"scorer": "iforest"})
    authors = pipeline.run(_cfg("table3_datainf_paper_recipe", [
        *tiny, "identification.features=last_layer", "identification.projection=srp",
        "identification.projection_components=8", "identification.scoring=authors", "+scorer.seed=42",
        "scorer.calibration=zscore"]), tmp_path / "authors", choices={"scorer": "iforest"})
    assert ours["status"] == "ok" and authors["status"] == "ok", (ours.get("error"), authors.get("error"))
    assert ours["method"] == "Outlier Gradient"
    assert authors["method"] == "Outlier Gradient (last layer, SRP, zscore-calibrated, authors' metrics)"
    # one fine-tune for both conventions; the response perplexity it reaches and its per-epoch test loss
    assert authors["cache_hit"] and authors["base_key"] == ours["base_key"]
    m, a = ours["metrics"], authors["metrics"]
    assert m["base_test_perplexity"] > 1 and len(m["base_test_curve"]) == 2
    assert a["grad_dim"] == 8 and a["grad_dim_full"] == m["grad_dim"] and 0 <= a["detection_auc"] <= 1
    assert authors["identification"] == {
        "scoring": "authors", "auc_on": "signed", "recall_on": "signed", "features": "last_layer",
        "projection": "srp", "projection_components": 8, "projection_seed": None, "calibration": "zscore"}
