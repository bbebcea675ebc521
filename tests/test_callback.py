"""AttributionCallback: at fit end it runs its Attributor on the trained module and writes flagged.csv."""

from __future__ import annotations

import pandas as pd
import pytorch_lightning as pl

from gradsift.attribution.gradients import PerSampleGradients
from gradsift.attributor import Attributor
from gradsift.callback import AttributionCallback
from gradsift.data.synthetic import MoonsDataModule
from gradsift.models.tabular import MLP
from gradsift.scoring.outliers import IsolationForestScorer
from gradsift.trim import Trim


def test_fit_end_scores_the_trained_module_and_writes_flagged_csv(tmp_path):
    dm = MoonsDataModule(n_train=60, n_test=20, flips_per_class=3, seed=0)
    attributor = Attributor(PerSampleGradients("last_layer", progress=False), IsolationForestScorer(),
                            Trim(budget=0.05), reference="train")
    cb = AttributionCallback(attributor, output_dir=tmp_path)
    pl.seed_everything(0, verbose=False)
    model = MLP()
    pl.Trainer(max_epochs=2, accelerator="cpu", callbacks=[cb], logger=False, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False).fit(model, datamodule=dm)
    assert cb.inputs.train.n == 60 and cb.inputs.reference is cb.inputs.train
    on_disk = pd.read_csv(tmp_path / "flagged.csv")
    assert on_disk["flagged"].sum() == 3 and on_disk["score"].is_monotonic_decreasing
    pd.testing.assert_frame_equal(on_disk, cb.attribution.flagged.reset_index(drop=True), check_dtype=False)
    again = attributor.attribute(model, dm)  # the same trained module, no Trainer
    assert (again.scores == cb.attribution.scores).all()
