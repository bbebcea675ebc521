"""Does a short last training batch cost a BatchNorm model test accuracy? The same rows trained with and without it.

``experiment=methods_cifar10n_5k`` retrains on 4,585 - 229 = 34 x 128 + 4 rows, so without ``data.drop_last`` every
epoch ends on a step over 4 images. This probe trains the preset's ResNet-9 (its recipe, lr 0.4, triangular schedule,
fp32 on CPU) on a training split of ``--rows`` rows (default 1,924 = 15 x 128 + 4) twice per seed, once with
``data.drop_last=false`` (the short batch) and once with ``true`` (the same rows, the short batch left out each
epoch), and prints one JSON line per fit and a summary line with the paired differences.

    python benchmarks/probe_last_batch.py --seeds 0 1 2 --epochs 8 --out docs/benchmarks/last_batch_cpu.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from gradsift import training
from gradsift.parallel import CONFIG_DIR


def fit(seed: int, drop_last: bool, rows: int, epochs: int, data_dir: str) -> dict:
    overrides = ["experiment=methods_cifar10n_5k", "data.noise=worst", f"seed={seed}", "data.device=null",
                 "trainer.precision=32-true", f"data.subset={rows}", "data.val_size=100", "data.test_size=null",
                 f"trainer.max_epochs={epochs}", "attribution.checkpoints=null", f"data.data_dir={data_dir}",
                 f"data.drop_last={str(drop_last).lower()}", "trainer.enable_progress_bar=false"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    dm = instantiate(cfg.data)
    dm.setup()
    last = len(dm.train_set) % dm.batch_size
    t0 = time.perf_counter()
    _, test, _ = training.fit_and_evaluate(cfg, dm)
    return {"seed": seed, "drop_last": drop_last, "rows": len(dm.train_set), "batch_size": dm.batch_size,
            "last_batch": 0 if drop_last else last, "epochs": epochs, "test_acc": test["acc"],
            "test_loss": test["loss"], "seconds": round(time.perf_counter() - t0, 1)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--rows", type=int, default=1924, help="training rows (a class-balanced subset of CIFAR-10N-5k)")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--data-dir", default="../shared/data", help="holds cifar10-partial/ and cifar-n/")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, help="append the JSON lines here too")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    lines, gains = [], []
    for seed in args.seeds:
        pair = [fit(seed, drop, args.rows, args.epochs, args.data_dir) for drop in (False, True)]
        gains.append(pair[1]["test_acc"] - pair[0]["test_acc"])
        lines += pair
        for line in pair:
            print(json.dumps(line), flush=True)
    summary = {"summary": "test_acc(drop_last) - test_acc(short last batch), per seed",
               "gains": [round(g, 4) for g in gains], "mean": round(float(np.mean(gains)), 4),
               "torch": torch.__version__, "threads": args.threads}
    print(json.dumps(summary))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as f:
            f.writelines(json.dumps(x) + "\n" for x in [*lines, summary])


if __name__ == "__main__":
    main()
