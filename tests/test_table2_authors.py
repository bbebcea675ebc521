"""The OGA authors' CIFAR-N conventions (issue #15), each against a hand computation on a tiny case, and the
table2_cifar10n_authors preset end to end on CPU.

Authors' files: anshuman23/outlier-gradient-analysis, cifar-10-100n/OD-experiment.py (best-epoch np.max, unshuffled
base loader, model.linear.weight gradients, IsolationForest(contamination=0.05) labels), baseline-experiment-*.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch import nn

from gradsift import pipeline
from gradsift.attribution.gradients import PerSampleGradients, select_parameters
from gradsift.data.augment import Normalize
from gradsift.models.resnet import resnet34
from gradsift.summarize import (BEST_EPOCH_NOTE, CROSS_NOTE, accuracy_table, best_epoch_table, load_runs, load_table,
                                paired_gains, summarize, write_summary)
from gradsift.training import with_best_epoch
from tests.data.test_resident import _dm, fake  # noqa: F401  (fake: the tiny CIFAR folder fixture)
from tests.test_config import CONF


# ---------------------------------------------------------------------------------------------- best epoch
def test_best_epoch_is_the_max_of_the_curve_and_the_first_epoch_reaching_it():
    got = with_best_epoch({"acc": 0.6, "curve": [0.5, 0.7, 0.7, 0.6]})
    assert got["acc"] == 0.6 and got["best_acc"] == 0.7 and got["best_epoch"] == 2
    assert with_best_epoch({"acc": 0.6}) == {"acc": 0.6}  # no curve: nothing to select
    assert "best_acc" not in with_best_epoch({"loss": 1.0, "curve": [2.0, 1.0]})  # a loss curve is not accuracy


def test_cross_selected_accuracy_chooses_on_one_half_and_reads_the_other():
    # epoch 2 is best on the even half (0.9), epoch 3 on the odd half (0.8): each is read on the other half
    halves = [[0.5, 0.5], [0.9, 0.6], [0.7, 0.8], [0.6, 0.6]]
    got = with_best_epoch({"acc": 0.6, "curve": [sum(h) / 2 for h in halves], "curve_halves": halves})
    assert got["cross_epochs"] == [2, 3]
    assert got["cross_acc"] == pytest.approx((0.6 + 0.7) / 2)  # odd half at epoch 2, even half at epoch 3
    assert got["best_acc"] == pytest.approx(0.75) and got["best_epoch"] == 2  # the test-selected max is higher
    assert "cross_acc" not in with_best_epoch({"acc": 0.6, "curve": [0.5, 0.6]})  # no halves recorded
    empty_half = [[0.5, float("nan")], [0.6, float("nan")]]  # all test indices even: no odd half to choose on
    assert "cross_acc" not in with_best_epoch({"acc": 0.6, "curve": [0.5, 0.6], "curve_halves": empty_half})


def _result(method: str, noise: str, seed: int, final: float, best: float, base_final: float, base_best: float,
            kind: str = "fraction") -> dict:
    return {"status": "ok", "method": method, "dataset": "cifar10n", "seed": seed, "experiment": "table2_cifar10n_authors",
            "budget": {"kind": kind, "value": 0.05 if kind == "fraction" else None},
            "config": {"seed": seed, "data": {"noise": noise}, "retrain": True,
                       "model": {"backbone": {"_target_": "gradsift.models.resnet.resnet34"}}},
            "metrics": {"test_acc": final, "test_best_acc": best, "base_test_acc": base_final,
                        "base_test_best_acc": base_best}}


def test_summary_shows_final_or_best_epoch_accuracy_and_marks_best_as_selected_on_test(tmp_path):
    for i, r in enumerate([_result("Outlier Gradient (L2)", "worst", 0, 0.80, 0.83, 0.79, 0.82),
                           _result("Outlier Gradient (iForest)", "worst", 0, 0.81, 0.84, 0.79, 0.82, "detector")]):
        (tmp_path / f"r{i}").mkdir()
        (tmp_path / f"r{i}" / "result.json").write_text(json.dumps(r))
    table = load_table("oga.table2_cifar_n_resnet34_authors")
    assert table.paper == load_table("oga.table2_cifar_n_resnet34").paper  # the same paper numbers
    best = best_epoch_table(table)
    assert best.value.paths == ("metrics.test_best_acc",)
    assert best.baseline_rows["Cross Entropy"][None].paths == ("metrics.base_test_best_acc",)
    assert BEST_EPOCH_NOTE in best.caption and "SELECTED ON THE TEST SET" in BEST_EPOCH_NOTE
    runs = load_runs([tmp_path])
    for t, l2, forest, ce in ((table, 80.0, 81.0, 79.0), (best, 83.0, 84.0, 82.0)):
        cells = summarize(runs, t).cells[""]
        assert cells["Outlier Gradient (L2)"]["c10n_worst"].mean == pytest.approx(l2)
        assert cells["Outlier Gradient (iForest)"]["c10n_worst"].mean == pytest.approx(forest)  # detector counts
        assert cells["Cross Entropy"]["c10n_worst"].mean == pytest.approx(ce)
    _, md = write_summary([tmp_path], "oga.table2_cifar_n_resnet34_authors", tmp_path / "out", accuracy="best")
    assert "SELECTED ON THE TEST SET" in md and "--accuracy best" in md
    with pytest.raises(ValueError, match="accuracy"):
        write_summary([tmp_path], "oga.table2_cifar_n_resnet34_authors", tmp_path / "out2", accuracy="median")


def test_summary_of_cross_selected_accuracy_reads_cross_acc_and_says_how_it_was_chosen(tmp_path):
    for i, (method, kind, cross, base_cross) in enumerate([("Outlier Gradient (L2)", "fraction", 0.815, 0.805),
                                                          ("Outlier Gradient (iForest)", "detector", 0.825, 0.805)]):
        r = _result(method, "worst", 0, 0.80, 0.83, 0.79, 0.82, kind)
        r["metrics"].update(test_cross_acc=cross, base_test_cross_acc=base_cross)
        (tmp_path / f"r{i}").mkdir()
        (tmp_path / f"r{i}" / "result.json").write_text(json.dumps(r))
    cross = accuracy_table(load_table("oga.table2_cifar_n_resnet34_authors"), "cross")
    assert cross.value.paths == ("metrics.test_cross_acc",) and CROSS_NOTE in cross.caption
    cells = summarize(load_runs([tmp_path]), cross).cells[""]
    assert cells["Outlier Gradient (L2)"]["c10n_worst"].mean == pytest.approx(81.5)
    assert cells["Outlier Gradient (iForest)"]["c10n_worst"].mean == pytest.approx(82.5)
    assert cells["Cross Entropy"]["c10n_worst"].mean == pytest.approx(80.5)
    _, md = write_summary([tmp_path], "oga.table2_cifar_n_resnet34_authors", tmp_path / "out", accuracy="cross")
    assert "--accuracy cross" in md and "other half" in md


def test_cross_summary_leaves_out_a_paper_row_variant_whose_runs_predate_cross_acc(tmp_path):
    # the authors' iForest runs ran before test_cross_acc was recorded: their row (renamed, compared with the paper's
    # iForest row through config.paper_row) has no cross value and must not break the table
    for i, (method, paper_row, cross) in enumerate([("Outlier Gradient (L2) [authors' recipe]", "Outlier Gradient (L2)", 0.815),
                                                    ("Outlier Gradient (iForest) [authors]", "Outlier Gradient (iForest)", None)]):
        r = _result(method, "worst", 0, 0.80, 0.83, 0.79, 0.82)
        r["config"]["paper_row"] = paper_row
        if cross is not None:
            r["metrics"].update(test_cross_acc=cross)
        (tmp_path / f"r{i}").mkdir()
        (tmp_path / f"r{i}" / "result.json").write_text(json.dumps(r))
    runs = load_runs([tmp_path])
    cross = summarize(runs, accuracy_table(load_table("oga.table2_cifar_n_resnet34_authors"), "cross")).cells[""]
    assert cross["Outlier Gradient (L2) [authors' recipe]"]["c10n_worst"].mean == pytest.approx(81.5)
    assert "Outlier Gradient (iForest) [authors]" not in cross
    best = summarize(runs, best_epoch_table(load_table("oga.table2_cifar_n_resnet34_authors"))).cells[""]
    assert best["Outlier Gradient (iForest) [authors]"]["c10n_worst"].mean == pytest.approx(83.0)  # still there
    _, md = write_summary([tmp_path], "oga.table2_cifar_n_resnet34_authors", tmp_path / "out", accuracy="cross")
    assert "[authors' recipe]" in md


# ---------------------------------------------------------------------------------------------- shuffling
def test_shuffle_base_unshuffled_retrain_shuffled(fake):  # noqa: F811
    dm = _dm(fake, shuffle={"base": False, "retrain": True}, device="cpu")
    for _ in range(2):  # every epoch in dataset order (the authors' shuffle=False)
        order = torch.cat([b["index"] for b in dm.train_dataloader()]).numpy()
        np.testing.assert_array_equal(order, dm.train_set.index)
    keep = np.sort(dm.train_set.index)[::2]
    kept = dm.with_keep(keep)
    loader = kept.train_dataloader()  # one loader per fit: its epochs draw fresh permutations
    orders = [torch.cat([b["index"] for b in loader]).numpy() for _ in range(2)]
    assert sorted(orders[0]) == sorted(keep) and not np.array_equal(orders[0], np.sort(keep))
    assert not np.array_equal(orders[0], orders[1])  # a fresh permutation each epoch, as a RandomSampler
    assert _dm(fake, shuffle=False).with_keep(keep).shuffle is False  # a bool still applies to both fits
    with pytest.raises(ValueError, match="data.shuffle"):
        _dm(fake, shuffle={"base": False})


def test_attribution_augment_gives_the_same_seeded_crop_flip_draws_every_call(fake):  # noqa: F811
    plain = _dm(fake)
    dm = _dm(fake, attribution_augment=True)
    a, b = (torch.cat([x["x"] for x in dm.attribution_dataloader("train")]) for _ in range(2))
    torch.testing.assert_close(a, b)  # deterministic: gradients and probabilities see the same images
    raw = plain.train_set.columns["x"]
    g, n = torch.Generator().manual_seed(dm.seed + 2), dm.eval_batch_size  # one generator over the unshuffled batches
    hand = torch.cat([dm.augment.apply(raw[i:i + n], *dm.augment.draw(len(raw[i:i + n]), g))
                      for i in range(0, len(raw), n)])
    torch.testing.assert_close(a, Normalize(dm.mean, dm.std)(hand).contiguous())
    base = torch.cat([x["x"] for x in plain.attribution_dataloader("train")])
    assert not torch.equal(a, base)  # off (the default): un-augmented
    torch.testing.assert_close(torch.cat([x["x"] for x in dm.attribution_dataloader("test")]),
                               torch.cat([x["x"] for x in plain.attribution_dataloader("test")]))  # test split: never


# ---------------------------------------------------------------------------------------------- gradients
class _Head(nn.Module):
    """x -> tanh(Linear) -> Linear head with bias; cross-entropy per sample."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(3, 4)
        self.linear = nn.Linear(4, 3)

    def per_sample_loss(self, batch: dict) -> torch.Tensor:
        return F.cross_entropy(self.linear(torch.tanh(self.body(batch["x"]))), batch["label"], reduction="none")


def test_last_layer_weight_is_the_hand_computed_per_sample_weight_gradient():
    torch.manual_seed(0)
    model = _Head().eval()
    x, y = torch.randn(5, 3), torch.tensor([0, 2, 1, 1, 0])
    got = PerSampleGradients("last_layer_weight", progress=False).gather(model, [{"x": x, "label": y,
                                                                                 "index": torch.arange(5)}])
    assert got.grads.shape == (5, 4 * 3)  # the weight only: no 3 bias numbers
    with torch.no_grad():  # dCE/dW = (softmax(z) - onehot(y)) outer h, row-major [out, in] as W.flatten()
        h = torch.tanh(model.body(x))
        p = torch.softmax(model.linear(h), -1)
        hand = torch.einsum("bo,bi->boi", p - F.one_hot(y, 3).float(), h).reshape(5, -1)
    np.testing.assert_allclose(got.grads, hand.numpy(), rtol=1e-5, atol=1e-6)


def test_last_layer_weight_of_resnet34_is_the_authors_5120_numbers():
    params = select_parameters(resnet34(num_classes=10), "last_layer_weight")
    assert list(params) == ["fc.weight"] and sum(p.numel() for p in params.values()) == 5120


# ---------------------------------------------------------------------------------------------- the preset
def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=["experiment=table2_cifar10n_authors", *overrides])


def test_preset_is_the_authors_recipe():
    cfg = _compose("+table2_authors=iforest")
    assert cfg.trainer.max_epochs == 100 and cfg.trainer.precision == "32-true"
    assert cfg.data.batch_size == 128 and dict(cfg.data.shuffle) == {"base": False, "retrain": True}
    assert dict(cfg.data.augment) == {"padding": 4, "pad_mode": "zeros", "crop": "per_sample", "flip": True}
    assert cfg.data.normalize == "cifar_n" and cfg.data.val_size == 0 and cfg.data.test_size is None
    assert cfg.data.attribution_augment is True
    opt = cfg.model.optimizer
    assert (opt._target_, opt.lr, opt.momentum, opt.weight_decay, opt.nesterov) == ("torch.optim.SGD", 0.1, 0.9,
                                                                                     5e-4, False)
    assert list(cfg.model.scheduler.milestones) == [60] and cfg.model.scheduler.gamma == 0.1
    assert cfg.model.scheduler_interval == "epoch" and cfg.model.backbone.pretrained is False
    assert cfg.eval_every_epoch is True and cfg.gradients.parameters == "last_layer_weight"
    assert cfg.scorer.contamination == 0.05 and cfg.trim.selection == "detector"
    assert cfg.paper_table == "oga.table2_cifar_n_resnet34_authors" and cfg.attribution.reference == "train"
    assert _compose("+table2_authors=self_confidence").scorer.labels == "predicted"
    assert _compose("+table2_authors=tracin").trim.remove == "beneficial"
    control = _compose("+table2_authors=random")  # ours, beyond the paper: any 5%, at random
    assert control.scorer._target_ == "gradsift.scoring.random.RandomScorer" and control.get("paper_row") is None
    assert (control.trim.selection, control.trim.budget) == ("budget", 0.05) and "control" in control.method
    keep_all = _compose("+table2_authors=none")  # ours: the retrain protocol alone (shuffled, nothing deleted)
    assert keep_all.scorer._target_ == "gradsift.scoring.random.RandomScorer" and keep_all.trim.count == 0
    assert instantiate(keep_all.trim).n_remove(50_000) == 0 and "nothing deleted" in keep_all.method
    assert dict(keep_all.data.shuffle) == {"base": False, "retrain": True}


def test_preset_runs_end_to_end_on_cpu_with_best_epoch_accuracy(tmp_path, shared_data):
    """2 epochs with the lr step after the first (the authors' [60] of 100, scaled), 20 images: base + iForest retrain."""
    method = "iforest"
    tiny = ["data=cifar10n_5k", "data.subset=20", "data.test_size=10", "data.batch_size=10", "data.eval_batch_size=20",
            "trainer.max_epochs=2", "trainer.accelerator=cpu", "model.scheduler.milestones=[1]", "torch_threads=1",
            "trainer.enable_progress_bar=false", "gallery=0", f"paths.data_dir={shared_data}",
            f"paths.cache_dir={tmp_path / 'cache'}", f"+table2_authors={method}"]
    cfg = _compose(*tiny)
    assert dict(cfg.data.shuffle) == {"base": False, "retrain": True}  # kept by the data= swap
    res = pipeline.run(cfg, tmp_path / "run", choices={"scorer": method})
    assert res["status"] == "ok"
    m = res["metrics"]
    for prefix in ("base_test_", "test_"):
        assert len(m[f"{prefix}curve"]) == 2
        assert m[f"{prefix}best_acc"] == max(m[f"{prefix}curve"])
        assert m[f"{prefix}acc"] == pytest.approx(m[f"{prefix}curve"][-1])  # the final epoch
    assert res["selection"] == "detector" and 0 < m["n_trimmed"] < 20
    for kind in ("", "best_", "cross_"):  # McNemar against the base model, from the same 10 test images
        t = m[f"test_{kind}vs_base"]
        assert t["n"] == 10 and 0 <= t["p"] <= 1
        assert t["gain"] == pytest.approx(m[f"test_{kind}acc"] - m[f"base_test_{kind}acc"])


def test_random_control_runs_through_the_preset_and_shows_as_an_extra_row(tmp_path, shared_data):
    tiny = ["data=cifar10n_5k", "data.subset=40", "data.test_size=10", "data.batch_size=20", "data.eval_batch_size=20",
            "trainer.max_epochs=2", "trainer.accelerator=cpu", "model.scheduler.milestones=[1]", "torch_threads=1",
            "trainer.enable_progress_bar=false", "gallery=0", f"paths.data_dir={shared_data}",
            f"paths.cache_dir={tmp_path / 'cache'}", "+table2_authors=random"]
    res = pipeline.run(_compose(*tiny), tmp_path / "run", choices={"scorer": "random"})
    assert res["status"] == "ok" and res["metrics"]["n_trimmed"] == 2  # 5% of 40, drawn from the seed
    flagged = np.load(tmp_path / "run" / "scores.npy")
    np.testing.assert_array_equal(flagged, np.random.default_rng(0).random(40))  # the seed's uniform draw
    _, md = write_summary([tmp_path / "run"], "oga.table2_cifar_n_resnet34_authors", tmp_path / "out", accuracy="best",
                          paired=True)
    row = next(x for x in md.splitlines() if x.startswith("| Random 5% [control, not in the paper] |"))
    cells = [c.strip() for c in row.split("|")[2:-1]]
    assert any(c[:1].isdigit() for c in cells) and not any(c.startswith("not run") for c in cells)  # ours, no paper
    gain = next(x for x in md.splitlines() if x.startswith("| Random 5% [control") and "/1 |" in x)
    assert gain.split("|")[1:3] == [" Random 5% [control, not in the paper] ", " — "]  # paired: no paper gain


def test_each_run_is_paired_with_its_own_base_model_when_a_seeds_base_was_trained_again(tmp_path):
    # seed 0: L2 retrained from a base at 82.0, L1 from the same seed's base trained again (a cold machine, other
    # code), at 81.0; each gain is over its own base, not over the seed's mean base (81.5)
    runs = [_result("Outlier Gradient (L2)", "worst", 0, 0.80, 0.83, 0.79, 0.82),
            _result("Outlier Gradient (L1)", "worst", 0, 0.80, 0.83, 0.79, 0.81)]
    for i, r in enumerate(runs):
        (tmp_path / f"r{i}").mkdir()
        (tmp_path / f"r{i}" / "result.json").write_text(json.dumps(r))
    s = summarize(load_runs([tmp_path]), best_epoch_table(load_table("oga.table2_cifar_n_resnet34_authors")))
    assert s.cells[""]["Cross Entropy"]["c10n_worst"].mean == pytest.approx(81.5)  # both bases, averaged
    gains = paired_gains(s)[""]
    assert gains["Outlier Gradient (L2)"]["c10n_worst"][0] == pytest.approx({"0": 1.0})
    assert gains["Outlier Gradient (L1)"]["c10n_worst"][0] == pytest.approx({"0": 2.0})


def test_paired_gains_subtract_the_untrimmed_model_of_the_same_seed(tmp_path):
    runs = [_result("Outlier Gradient (L2)", "worst", 0, 0.80, 0.83, 0.79, 0.82),
            _result("Outlier Gradient (L2)", "worst", 1, 0.70, 0.81, 0.75, 0.80),  # behind at seed 1
            _result("Outlier Gradient (iForest)", "worst", 0, 0.81, 0.84, 0.79, 0.82, "detector")]
    for i, r in enumerate(runs):
        (tmp_path / f"r{i}").mkdir()
        (tmp_path / f"r{i}" / "result.json").write_text(json.dumps(r))
    s = summarize(load_runs([tmp_path]), load_table("oga.table2_cifar_n_resnet34_authors"))
    gains = paired_gains(s)[""]
    l2, paper = gains["Outlier Gradient (L2)"]["c10n_worst"]
    assert l2 == pytest.approx({"0": 1.0, "1": -5.0}) and paper == pytest.approx(82.99 - 82.27)
    assert gains["Outlier Gradient (iForest)"]["c10n_worst"][0] == pytest.approx({"0": 2.0})  # only its seed
    assert "Cross Entropy" not in gains
    _, md = write_summary([tmp_path], "oga.table2_cifar_n_resnet34_authors", tmp_path / "out", paired=True)
    line = next(x for x in md.splitlines() if x.startswith("| Outlier Gradient (L2) |") and "ahead" not in x
                and "(+1.00, -5.00)" in x)
    assert "-2.00 (+1.00, -5.00) | 1/2" in line and "--paired" in md
    _, plain = write_summary([tmp_path], "oga.table2_cifar_n_resnet34_authors", tmp_path / "out2")
    assert "Paired gain" not in plain  # opt-in: the committed summaries without it stay as they are
