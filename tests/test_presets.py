"""Every vision experiment preset runs end to end through the pipeline on a tiny slice of real CIFAR-N data
(CPU, fast_dev_run). The full runs need a GPU; see docs/STATUS.md."""

import pytest
from hydra import compose, initialize_config_dir

from gradsift import pipeline
from tests.test_config import CONF

VISION = ["table2_cifar10n_fast", "table2_cifar10n_authors", "table5_budget_cifar10n_fast", "table8_iforest_estimators", "table9_resnet18",
          "dropout_table2_resnet9"]


@pytest.mark.parametrize("experiment", VISION)
def test_vision_preset_runs_end_to_end_on_cpu(experiment, tmp_path, shared_data):
    tiny = ["data=cifar10n_5k", "data.subset=60", "data.test_size=20", "data.device=null", "data.batch_size=20",
            "data.eval_batch_size=30", "+trainer.fast_dev_run=true", "trainer.precision=32", "torch_threads=1",
            f"paths.data_dir={shared_data}", f"paths.cache_dir={tmp_path / 'cache'}"]
    if experiment != "dropout_table2_resnet9":
        tiny.append("data.val_size=10")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={experiment}", *tiny])
    res = pipeline.run(cfg, tmp_path / "run", choices={"scorer": "preset"})
    assert res["status"] == "ok" and res["paper_table"] == cfg.paper_table
    assert res["metrics"]["n_trimmed"] == round(cfg.trim.budget * 60) if cfg.trim.selection == "budget" else True
    # dropout Table 2 trains on the clean labels: no noise mask, so no label-noise detection metrics
    assert ("precision" in res["metrics"]) == (cfg.data.noise != "clean")
