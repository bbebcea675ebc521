"""Does an encoder + LoRA recipe learn a GLUE task? Validation accuracy after every epoch, nothing else.

For choosing a fine-tuning recipe (lr, LoRA targets, rank) on the clean validation split that the detection preset
holds out of the training pool (``val_size`` samples, labels never flipped), never on the test split. CPU-friendly
(one torch thread); prints one JSON line per epoch.

    python benchmarks/probe_glue_recipe.py --task mrpc --lr 1e-3 --targets query value --rank 2 --epochs 5
    python benchmarks/probe_glue_recipe.py --task mrpc --pooling mean --epochs 5
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial

import numpy as np
import pytorch_lightning as pl
import torch

from gradsift.data.glue import GlueDataModule
from gradsift.models.sequence_classifier import SequenceClassifier


class EpochPrinter(pl.Callback):
    def __init__(self, info: dict, majority: float):
        self.info, self.majority, self.t0 = info, majority, time.time()

    def on_validation_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        m = trainer.callback_metrics
        print(json.dumps({**self.info, "epoch": trainer.current_epoch, "val_acc": round(float(m["val/acc"]), 4),
                          "val_majority": round(self.majority, 4), "seconds": round(time.time() - self.t0)}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="mrpc")
    p.add_argument("--data-dir", default="../shared/data/glue")
    p.add_argument("--model", default="minilm")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--targets", nargs="+", default=["value"])
    p.add_argument("--rank", type=int, default=2)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--val-size", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pooling", choices=["cls", "mean"], default="cls")
    args = p.parse_args()
    torch.set_num_threads(1)
    pl.seed_everything(args.seed)
    dm = GlueDataModule(task=args.task, data_dir=args.data_dir, source="local", tokenizer=args.model, max_length=128,
                        val_size=args.val_size, noise_fraction=0.2, batch_size=32, eval_batch_size=128, seed=args.seed)
    dm.setup()
    labels = np.asarray([dm.val_set[i]["label"] for i in range(len(dm.val_set))])
    majority = float(max(labels.mean(), 1 - labels.mean()))
    model = SequenceClassifier(model=args.model, lora_rank=args.rank, target_modules=args.targets,
                               optimizer=partial(torch.optim.AdamW, lr=args.lr, weight_decay=0.0),
                               pooling=args.pooling, seed=args.seed)
    info = {"task": args.task, "lr": args.lr, "targets": args.targets, "rank": args.rank, "pooling": args.pooling,
            "seed": args.seed}
    pl.Trainer(max_epochs=args.epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
               callbacks=[EpochPrinter(info, majority)]).fit(model, datamodule=dm)


if __name__ == "__main__":
    main()
