"""A real Lightning ``strategy="ddp"`` run on 2 CPU processes (gloo) with the AttributionCallback.

    python tests/attribution/ddp_lightning.py OUT_DIR

Lightning re-launches this script for rank 1; each rank saves its gathered sets to OUT_DIR/lightning-rank{r}.npz.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

sys.path.insert(0, str(Path(__file__).parent))
from ddp_worker import TinyData, TinyModel, gathered, make_attributor  # noqa: E402

from gradsift.callback import AttributionCallback  # noqa: E402


class LitTiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = TinyModel()

    def per_sample_loss(self, batch):
        return self.net.per_sample_loss(batch)

    def training_step(self, batch, _):
        return self.per_sample_loss(batch).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)  # lr 0: every rank keeps the initial weights


class LitData(pl.LightningDataModule):
    def __init__(self):
        super().__init__()
        self.data = TinyData()
        self.train_set, self.val_set = self.data.train_set, self.data.val_set

    def train_dataloader(self):
        return self.data.attribution_dataloader("train")

    def attribution_dataloader(self, split="train"):
        return self.data.attribution_dataloader(split)


def main(out: str) -> None:
    torch.set_num_threads(1)
    cb = AttributionCallback(make_attributor())
    trainer = pl.Trainer(strategy="ddp", accelerator="cpu", devices=2, max_epochs=1, callbacks=[cb], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(LitTiny(), datamodule=LitData())
    np.savez(f"{out}/lightning-rank{trainer.global_rank}.npz",
             **{f"{s}_{k}": np.asarray(getattr(gs, k)) for s, gs in gathered(cb.inputs).items()
                for k in ("grads", "index", "labels")})


if __name__ == "__main__":
    main(sys.argv[1])
