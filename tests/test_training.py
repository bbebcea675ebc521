"""Fit and evaluate from the config: seeded, test metrics by the names the module logs, per-epoch curves, load."""

import pytest
import torch
from hydra.utils import instantiate

from gradsift import paired, training
from tests.test_pipeline import _cfg


def test_fit_and_evaluate_is_seeded_and_records_a_curve_per_epoch(tmp_path):
    cfg = _cfg(tmp_path, "eval_every_epoch=true", "trainer.max_epochs=3")
    dm = instantiate(cfg.data)
    dm.setup()
    model, metrics, seconds = training.fit_and_evaluate(cfg, dm)
    assert {"acc", "loss", "curve"} <= set(metrics) and len(metrics["curve"]) == 3 and seconds > 0
    assert metrics["curve"][-1] == pytest.approx(metrics["acc"], abs=1e-6)  # the final model, as trainer.test
    # the even / odd index halves, counted by hand from the final model's predictions
    index = torch.as_tensor(dm.test_set.index if hasattr(dm.test_set, "index") else range(len(dm.test_set)))
    assert len(metrics["curve_halves"]) == 3 and "cross_acc" in metrics and len(metrics["cross_epochs"]) == 2
    model.eval()
    right, by_index = {0: [], 1: []}, {}
    with torch.no_grad():
        for batch in dm.test_dataloader():
            ok = model.logits(batch).argmax(-1) == batch.get("clean_label", batch["label"])
            for i, k in zip(torch.as_tensor(batch["index"]).tolist(), ok.tolist()):
                right[i % 2].append(k)
                by_index[i] = k
    # which samples the final model gets right, in index order (the paired test's vector, gradsift.paired)
    assert paired.unpack(metrics["correct"]).tolist() == [by_index[i] for i in sorted(by_index)]
    assert paired.unpack(metrics["best_correct"]).mean() == pytest.approx(metrics["best_acc"])
    assert "curve_correct" not in metrics
    assert metrics["curve_halves"][-1] == pytest.approx([sum(right[0]) / len(right[0]), sum(right[1]) / len(right[1])])
    n_even = int((index % 2 == 0).sum())
    mean = (metrics["curve_halves"][-1][0] * n_even + metrics["curve_halves"][-1][1] * (len(index) - n_even)) / len(index)
    assert mean == pytest.approx(metrics["curve"][-1])  # the halves make up the whole split
    again, same, _ = training.fit_and_evaluate(cfg, dm)
    assert same == metrics
    torch.save(model.state_dict(), tmp_path / "model.pt")
    loaded = training.load_model(cfg, tmp_path)
    assert not loaded.training
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), again.state_dict().values()))


def test_gradsift_fits_leave_out_lightning_chatter_but_user_trainers_keep_it(tmp_path, caplog):
    """`make run` printed 59 Lightning 'Tip' / 'GPU available' blocks and 19 deprecation warnings (issue #19)."""
    import logging
    import warnings

    import pytorch_lightning as pl

    from gradsift import training

    with caplog.at_level(logging.INFO, logger="pytorch_lightning"), warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with training.quiet_lightning():
            pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
            warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning)
        quiet = [r.getMessage() for r in caplog.records]
        assert not [m for m in quiet if m.startswith(("GPU available", "TPU available"))] and not seen
        pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)  # user code: untouched
    assert any(r.getMessage().startswith("GPU available") for r in caplog.records)
