"""Audit YOUR model: attach ``AttributionCallback`` to a plain LightningModule + LightningDataModule.

    python examples/audit_my_model.py --n 400 --epochs 30 --out audit/flagged.csv

Nothing here uses gradsift's model or datamodule base classes; this is the minimal contract an ``Attributor`` (and
the callback that runs it at fit end) needs:

model (any ``pl.LightningModule``)
    ``per_sample_loss(batch) -> Tensor[B]``: the unreduced loss, sample i depending only on sample i (the engine
    takes per-sample gradients of it with ``torch.func``, in eval mode). ``logits(batch)`` is only needed by
    probability-based scorers (cleanlab label-quality scores).
datamodule (any ``pl.LightningDataModule``)
    * batches are dicts with ``index`` (a stable sample id) and ``label`` (the label you trained on);
    * ``attribution_dataloader(split)``: an UNSHUFFLED loader over ``"train"`` (and ``"val"`` when the scorer
      uses validation gradients), without augmentation;
    * ``train_set.index`` and ``train_set.columns["clean_label"]``: the callback writes a ``clean_label`` column;
      when you do not know the true labels, give it your labels (as here: we know them because we flip some).

At the end of ``trainer.fit`` the callback writes ``<output_dir>/flagged.csv`` (index, label, clean_label, score,
flagged), most detrimental first (OGA, arXiv 2405.03869: detrimental samples are outliers in gradient space).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from sklearn.datasets import make_classification
from torch import nn
from torch.utils.data import DataLoader, Dataset

from gradsift import AttributionCallback, Attributor, Trim
from gradsift.attribution import PerSampleGradients
from gradsift.scoring import IsolationForestScorer


class TableDataset(Dataset):
    """Rows of a feature matrix as dict items; ``index`` and ``columns`` are what the callback reads."""

    def __init__(self, x: np.ndarray, label: np.ndarray, clean_label: np.ndarray):
        self.index = np.arange(len(x))
        self.columns = {"x": x.astype(np.float32), "label": label, "clean_label": clean_label}

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        return {"x": torch.from_numpy(self.columns["x"][i]), "label": int(self.columns["label"][i]),
                "clean_label": int(self.columns["clean_label"][i]), "index": int(self.index[i])}


class MyDataModule(pl.LightningDataModule):
    """A 3-class tabular problem with 5 % of the training labels flipped to another class."""

    def __init__(self, n: int = 400, flip: float = 0.05, seed: int = 0):
        super().__init__()
        x, y = make_classification(n_samples=n, n_features=8, n_informative=5, n_classes=3, random_state=seed)
        rng = np.random.default_rng(seed)
        noisy = y.copy()
        flipped = rng.choice(n, size=int(round(flip * n)), replace=False)
        noisy[flipped] = (y[flipped] + rng.integers(1, 3, size=len(flipped))) % 3
        self.train_set = TableDataset(x, noisy, y)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=64, shuffle=True)

    def attribution_dataloader(self, split: str = "train") -> DataLoader:
        if split != "train":
            raise ValueError(f"MyDataModule has only a 'train' split, not {split!r}")
        return DataLoader(self.train_set, batch_size=256, shuffle=False)


class MyClassifier(pl.LightningModule):
    """Any architecture; the only gradsift-specific method is ``per_sample_loss``."""

    def __init__(self, in_features: int = 8, num_classes: int = 3, lr: float = 1e-2):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, 32), nn.ReLU(), nn.Linear(32, num_classes))
        self.lr = lr

    def logits(self, batch: dict) -> torch.Tensor:
        return self.net(batch["x"])

    def per_sample_loss(self, batch: dict) -> torch.Tensor:
        return F.cross_entropy(self.logits(batch), batch["label"], reduction="none")

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self.per_sample_loss(batch).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def main() -> pd.DataFrame:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=400, help="training samples")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--budget", type=float, default=0.05, help="fraction of samples to flag")
    p.add_argument("--out", type=Path, default=Path("audit/flagged.csv"))
    args = p.parse_args()

    pl.seed_everything(0, verbose=False)
    dm, model = MyDataModule(n=args.n), MyClassifier()
    # gradients of the last linear layer; score them with Isolation Forest; flag the budget's top scores.
    # reference="train": there is no validation split here.
    attributor = Attributor(PerSampleGradients(parameters="last_layer"), IsolationForestScorer(),
                            Trim(budget=args.budget), reference="train")
    cb = AttributionCallback(attributor, output_dir=args.out.parent)
    trainer = pl.Trainer(max_epochs=args.epochs, callbacks=[cb], accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=dm)  # at fit end: gradients -> scores -> trim -> flagged.csv

    flagged = cb.attribution.flagged  # attributor.attribute(model, dm) gives the same without a Trainer
    if args.out.name != "flagged.csv":
        flagged.to_csv(args.out, index=False)
    hits = int((flagged["flagged"] & (flagged["label"] != flagged["clean_label"])).sum())
    print(flagged.head(10).to_string(index=False))
    print(f"flagged {int(flagged['flagged'].sum())} of {len(flagged)}; {hits} of them are flipped labels "
          f"-> {args.out}")
    return flagged


if __name__ == "__main__":
    main()
