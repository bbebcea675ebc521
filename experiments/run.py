"""One gradsift run: compose the config, call the pipeline, print and return the metrics.

    python experiments/run.py scorer=l2 seed=3
    python experiments/run.py -m experiment=table1_moons
"""

from __future__ import annotations

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from gradsift.pipeline import run
from gradsift.report import print_result


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    hc = HydraConfig.get()
    result = run(cfg, hc.runtime.output_dir, choices=dict(hc.runtime.choices))
    print_result(result)
    return result.get("metrics", {}).get("test_acc", float("nan"))


if __name__ == "__main__":
    main()
