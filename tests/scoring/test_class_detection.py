
from functools import partial

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score

from gradsift.attribution.gradient_set import GradientSet
from gradsift.attribution.gradients import PerSampleGradients, select_parameters
from gradsift.data.llm_benchmarks import LLMBenchmarkDataModule
from gradsift.models.causal_lm import CausalLM
from gradsift.scoring.base import Scorer
from gradsift.scoring.class_detection import class_detection_metrics, influential_data_identification
from gradsift.scoring.influence import DataInfScorer, GradientTracingScorer
from gradsift.scoring.outliers import PerClassIsolationForest, expand_class_scores
from gradsift.viz.heatmap import influence_heatmap


def test_metrics_match_a_hand_computation():
    scores = np.array([[3.0, -2.0, 1.0, 0.5, 4.0, 0.0],
                       [0.1, 0.2, 0.3, -5.0, 6.0, 7.0]])
    train = np.array([0, 0, 0, 1, 1, 1])
    m = class_detection_metrics(scores, train, np.array([0, 1]))
    # row 0, |scores|: same-class {3, 2, 1} vs {0.5, 4, 0}: 6 of 9 pairs ordered -> AUC 2/3;
    # top-3 (= 6 train / 2 classes) are 4, 3, 2 -> 2 of 3 same-class; top-1 is 4 (other class)
    np.testing.assert_allclose(m["auc_per_test"], [6 / 9, 1.0])
    np.testing.assert_allclose(m["recall_per_test"], [2 / 3, 1.0])
    assert m["auc"] == pytest.approx((6 / 9 + 1) / 2)
    assert m["recall"] == pytest.approx((2 / 3 + 1) / 2)
    assert m["top1"] == 0.5
    assert class_detection_metrics(scores, train, np.array([0, 1]), top_k=1)["recall"] == 0.5
    # ties get half credit in the AUC
    assert class_detection_metrics(np.ones((1, 4)), np.array([0, 0, 1, 1]), np.array([0]))["auc"] == 0.5


def test_metric_errors():
    with pytest.raises(ValueError, match="shape"):
        class_detection_metrics(np.zeros((2, 3)), np.array([0, 1]), np.array([0, 1]))
    with pytest.raises(ValueError, match="some, but not all"):
        class_detection_metrics(np.zeros((1, 2)), np.array([0, 0]), np.array([0]))


def test_expand_class_scores():
    out = expand_class_scores(np.array([[0.1, 0.9], [0.7, 0.2]]), np.array([1, 0, 1]), np.array([0, 1]))
    np.testing.assert_array_equal(out, [[0.9, 0.1, 0.9], [0.2, 0.7, 0.2]])
    with pytest.raises(ValueError, match="no column"):
        expand_class_scores(np.zeros((1, 2)), np.array([2]), np.array([0, 1]))


def _clusters(n_per: int, seed: int) -> GradientSet:
    rng = np.random.default_rng(seed)
    centres = np.eye(3, 8) * 10
    labels = np.repeat(np.arange(3), n_per)
    return GradientSet(centres[labels] + rng.normal(size=(len(labels), 8)), np.arange(len(labels)), labels)


def test_per_class_iforest_on_separated_clusters():
    train, test = _clusters(30, 0), _clusters(4, 1)
    forest = PerClassIsolationForest(n_estimators=50, seed=0).fit(train)
    cs = forest.class_scores(test)
    ref = IsolationForest(n_estimators=50, random_state=0).fit(train.grads[train.labels == 2])
    np.testing.assert_allclose(cs[:, 2], 1 + ref.score_samples(test.grads))
    assert (cs > 0).all() and (cs.argmax(1) == test.labels).all()
    m = class_detection_metrics(forest.train_scores(test, train), train.labels, test.labels)
    assert m["auc"] == 1.0 and m["recall"] == 1.0 and m["top1"] == 1.0


def test_pairwise_scores_with_influence_scorers():
    train, test = _clusters(5, 0), _clusters(1, 1)
    for pairwise in (Scorer.pairwise, GradientTracingScorer.pairwise):  # the generic rule and the batched one
        np.testing.assert_allclose(pairwise(GradientTracingScorer(), train, test), -test.grads @ train.grads.T)
    # DataInf (Kwon et al. Eq. 5) by hand, one block: lambda = 0.1 mean ||g||^2 / d
    g, v = train.grads, test.grads[0]
    lam = 0.1 * (g ** 2).sum() / g.shape[0] / g.shape[1]
    ihvp = (v - ((g @ v) / (lam + (g ** 2).sum(1))) @ g / len(g)) / lam
    for pairwise in (Scorer.pairwise, DataInfScorer.pairwise):
        np.testing.assert_allclose(pairwise(DataInfScorer(), train, test)[0], -g @ ihvp, rtol=1e-8)


def test_tiny_end_to_end_influential_data_identification(tmp_path):
    """Tiny GPT-2 + trained BPE, LoRA fine-tuned for a few steps on 3 classes x 6 prompts; per-sample LoRA
    gradients of train and test prompts; Table-3 metrics for Outlier Gradient and Gradient Tracing."""
    pl.seed_everything(0, verbose=False)
    dm = LLMBenchmarkDataModule("grammars", generate=True, num_classes=3, train_per_class=6, test_per_class=2,
                                batch_size=6, max_length=96, tokenizer_vocab_size=384)
    dm.setup()
    model = CausalLM(model=None, lora_rank=4, target_modules=["c_attn"],
                     optimizer=partial(torch.optim.AdamW, lr=3e-3, weight_decay=0.01),
                     config=dict(model_type="gpt2", n_layer=2, n_embd=32, n_head=2, vocab_size=384,
                                 n_positions=128, bos_token_id=0, eos_token_id=0))
    pl.Trainer(max_steps=6, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False).fit(model, datamodule=dm)
    engine = PerSampleGradients(parameters="lora", progress=False)
    train = engine.gather(model, dm.attribution_dataloader("train"))
    test = engine.gather(model, dm.attribution_dataloader("test"))
    assert train.grads.shape == (18, 2 * 4 * (32 + 96)) and test.n == 6
    np.testing.assert_array_equal(train.labels, np.repeat(np.arange(3), 6))
    batch = next(iter(dm.attribution_dataloader("test")))  # the engine's rows = per-sample torch.func gradients
    exact = engine.compute(model.eval(), batch, select_parameters(model, "lora"))
    np.testing.assert_allclose(test.grads[:6], exact.detach().numpy(), rtol=1e-4, atol=1e-7)

    results = influential_data_identification(train, test, seed=0, n_estimators=50)
    assert set(results) == {"Gradient Tracing", "DataInf", "Outlier Gradient"}
    for m in results.values():
        manual = [roc_auc_score(train.labels == c, np.abs(row)) for row, c in zip(m["scores"], test.labels)]
        assert m["auc"] == pytest.approx(np.mean(manual))
        assert 0 <= m["recall"] <= 1
    np.testing.assert_allclose(results["Gradient Tracing"]["scores"], -test.grads @ train.grads.T, rtol=1e-5)
    influence_heatmap(results["Outlier Gradient"]["scores"], test.labels, train.labels, path=tmp_path / "fig4.png")
    assert (tmp_path / "fig4.png").stat().st_size > 0
    tracing = results["Gradient Tracing"]["scores"]
    # each class has its own template, so even this tiny model separates the classes in gradient space
    assert class_detection_metrics(tracing, train.labels, test.labels)["auc"] > 0.6
