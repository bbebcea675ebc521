"""The OGA Table 3 identification switches, each against a hand computation on a few vectors: what the AUC and
recall rank (``identification.auc_on`` / ``recall_on`` / ``scoring``), the last-layer features and the sparse random
projection (the authors' ``nlp/LLM_INFL_ID_2.py``), and the per-class forests' ``scorer.calibration``; and a
synthetic case where one class's forest, uncalibrated, claims the other classes' test prompts."""

import numpy as np
import pytest
from sklearn.random_projection import SparseRandomProjection, johnson_lindenstrauss_min_dim

from gradsift.attribution.gradient_set import Block, GradientSet
from gradsift.identification import identification_settings, last_layer, metric_convention, project
from gradsift.scoring.class_detection import class_detection_metrics
from gradsift.scoring.outliers import IsolationForestScorer, PerClassIsolationForest

# 2 test prompts x 6 training prompts (classes 0, 0, 1, 1, 2, 2); test prompt 0 is class 0, test prompt 1 class 1
S = np.array([[-3.0, -2.0, 1.0, 0.5, 0.2, 4.0],
              [0.1, 0.3, -0.2, 2.0, -5.0, 0.0]])
TRAIN, TEST = np.array([0, 0, 1, 1, 2, 2]), np.array([0, 1])


def test_auc_and_recall_rank_the_chosen_value():
    # by hand, AUC = fraction of (same-class, other-class) pairs ordered right (ties count 1/2):
    # |S| row 0: same {3, 2} vs other {1, .5, .2, 4}: 3 beats 3 of 4, 2 beats 3 of 4 -> 6/8
    # |S| row 1: same {.2, 2} vs other {.1, .3, 5, 0}: .2 beats 2, 2 beats 3 -> 5/8
    m = class_detection_metrics(S, TRAIN, TEST, top_k=2)
    np.testing.assert_allclose(m["auc_per_test"], [6 / 8, 5 / 8])
    # recall@2 on |S|: row 0 top-2 = {4 (class 2), 3 (class 0)} -> 1/2; row 1 top-2 = {5 (2), 2 (1)} -> 1/2
    np.testing.assert_allclose(m["recall_per_test"], [0.5, 0.5])
    # signed S row 0: same {-3, -2} are the two lowest -> AUC 0; row 1: same {-.2, 2} vs {.1, .3, -5, 0} -> 5/8
    signed = class_detection_metrics(S, TRAIN, TEST, top_k=2, auc_on="signed", recall_on="signed")
    np.testing.assert_allclose(signed["auc_per_test"], [0.0, 5 / 8])
    # signed recall@2: row 0 top-2 = {4, 1} -> classes 2, 1 -> 0; row 1 top-2 = {2, .3} -> classes 1, 0 -> 1/2
    np.testing.assert_allclose(signed["recall_per_test"], [0.0, 0.5])
    # negated (-IF, helpful = negative first): row 0 -> 1, row 1 -> 1 - 5/8 = 3/8 (no ties)
    negated = class_detection_metrics(S, TRAIN, TEST, top_k=2, auc_on="negated")
    np.testing.assert_allclose(negated["auc_per_test"], [1.0, 3 / 8])
    with pytest.raises(ValueError, match="identification.recall_on"):
        class_detection_metrics(S, TRAIN, TEST, recall_on="magnitude")


def test_metric_conventions_follow_the_authors_files():
    # ours: |score| for influence matrices, the forests' (positive) inlier-ness as it is
    assert metric_convention("ours", class_constant=False) == ("abs", "abs")
    assert metric_convention("ours", class_constant=True) == ("signed", "signed")
    # authors: LLM_INFL_ID_1.py (signed AUC, |IF| recall) and LLM_INFL_ID_2.py (signed score_samples, both)
    assert metric_convention("authors", class_constant=False) == ("signed", "abs")
    assert metric_convention("authors", class_constant=True) == ("signed", "signed")
    assert metric_convention("authors", False, auc_on="negated") == ("negated", "abs")
    with pytest.raises(ValueError, match="identification.scoring"):
        metric_convention("theirs", False)
    s = identification_settings({"features": "last_layer", "projection": "srp", "scoring": "authors"}, "zscore")
    assert s["tag"] == " (last layer, SRP, zscore-calibrated, authors' metrics)"
    assert identification_settings({})["tag"] == ""
    with pytest.raises(ValueError, match="identification.features"):
        identification_settings({"features": "lora"})


def test_last_layer_keeps_the_highest_numbered_layers_blocks():
    names = ["base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight",
             "base_model.model.model.layers.0.self_attn.v_proj.lora_A.default.weight",
             "base_model.model.model.layers.1.self_attn.q_proj.lora_A.default.weight",
             "base_model.model.model.layers.1.self_attn.v_proj.lora_B.default.weight"]
    sizes = [2, 1, 3, 2]
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    blocks = [Block(n, int(a), int(b)) for n, a, b in zip(names, bounds[:-1], bounds[1:])]
    g = np.arange(2 * 8, dtype=float).reshape(2, 8)
    out = last_layer(GradientSet(g, np.arange(2), np.array([0, 1]), blocks=blocks))
    np.testing.assert_array_equal(out.grads, g[:, 3:8])  # layer 1: columns 3-5 (q) and 6-7 (v)
    assert [(b.name, b.start, b.stop) for b in out.blocks] == [(names[2], 0, 3), (names[3], 3, 5)]
    # GPT-2 names (h.N.) work too; names without a layer index are an error that names the key
    gpt = [Block("transformer.h.0.attn.c_attn.lora_A", 0, 4), Block("transformer.h.1.attn.c_attn.lora_A", 4, 8)]
    np.testing.assert_array_equal(last_layer(GradientSet(g, np.arange(2), np.array([0, 1]), blocks=gpt)).grads,
                                  g[:, 4:])
    with pytest.raises(ValueError, match="identification.features=last_layer"):
        last_layer(GradientSet(g, np.arange(2), np.array([0, 1])))


def test_projection_is_sklearns_srp_fitted_on_train_and_test_stacked():
    rng = np.random.default_rng(0)
    train = GradientSet(rng.normal(size=(6, 50)), np.arange(6), np.repeat([0, 1, 2], 2))
    test = GradientSet(rng.normal(size=(3, 50)), np.arange(3), np.array([0, 1, 2]))
    ptr, pte = project(train, test, n_components=7, seed=5)
    want = SparseRandomProjection(n_components=7, random_state=5).fit_transform(np.vstack([train.grads, test.grads]))
    np.testing.assert_allclose(np.vstack([ptr.grads, pte.grads]), want)
    assert ptr.grads.shape == (6, 7) and [b.name for b in ptr.blocks] == ["srp"]
    np.testing.assert_array_equal(pte.labels, test.labels)
    # 'auto' = the JL bound at eps 0.1: 5,920 for the 1,000 DataInf prompts, more than 50 dimensions here
    assert johnson_lindenstrauss_min_dim(1000, eps=0.1) == 5920
    with pytest.raises(ValueError, match="identification.projection_components"):
        project(train, test, n_components="auto")


def _two_d(seed=0):
    rng = np.random.default_rng(seed)
    x = np.vstack([rng.normal(size=(8, 2)), rng.normal(size=(8, 2)) * 3 + 5])
    return GradientSet(x, np.arange(16), np.repeat([0, 1], 8)), GradientSet(x[[0, 9]] + 0.1, np.arange(2),
                                                                            np.array([0, 1]))


@pytest.mark.parametrize("calibration", ["zscore", "rank"])
def test_calibration_by_hand(calibration):
    train, test = _two_d()
    forest = PerClassIsolationForest(n_estimators=20, seed=1, calibration=calibration).fit(train)
    raw = PerClassIsolationForest(n_estimators=20, seed=1).fit(train)
    test_raw = raw.class_scores(test)
    for c in (0, 1):
        own = 1.0 + raw.forests[c].score_samples(train.grads[train.labels == c].astype(np.float32))
        if calibration == "zscore":
            want = (test_raw[:, c] - own.mean()) / own.std()
        else:  # the fraction of class c's 8 training prompts scoring at most the test prompt
            want = np.array([(own <= v).sum() / 8 for v in test_raw[:, c]])
        np.testing.assert_allclose(forest.class_scores(test)[:, c], want)
    scorer = IsolationForestScorer(n_estimators=20, calibration=calibration, seed=1)
    np.testing.assert_allclose(scorer.pairwise(train, test)[:, [0, 8]],
                               forest.class_scores(test))
    with pytest.raises(ValueError, match="scorer.calibration"):
        IsolationForestScorer(calibration="platt")


def _classes(rng, n, extremes):
    """3 classes, 6 coordinates, class c shifted by 2 on coordinates 2c and 2c+1; with ``extremes``, 20% of class
    1's (training) rows are scaled by 10, so class 1's forest spends its first splits on them and every ordinary
    point, whatever its class, sits deep in its trees."""
    x, y = [], []
    for c in range(3):
        z = rng.normal(size=(n, 6))
        if c == 1 and extremes:
            z[: n // 5] *= 10
        z[:, 2 * c : 2 * c + 2] += 2
        x.append(z)
        y += [c] * n
    return GradientSet(np.vstack(x), np.arange(3 * n), np.array(y))


@pytest.mark.parametrize("seed", [0, 1])
def test_uncalibrated_forests_mis_rank_and_calibrated_ones_recover(seed):
    rng = np.random.default_rng(seed)
    train, test = _classes(rng, 40, extremes=True), _classes(rng, 20, extremes=False)
    top1 = {}
    for cal in ("none", "zscore", "rank"):
        s = IsolationForestScorer(n_estimators=100, calibration=cal).pairwise(train, test, seed=seed)
        m = class_detection_metrics(s, train.labels, test.labels, auc_on="signed", recall_on="signed")
        top1[cal] = m["top1"]
    # uncalibrated, class 1's forest wins for (nearly) every test prompt: top-1 at about chance (1/3)
    assert top1["none"] <= 0.45, top1
    # on its own class's scale it no longer does; ranks are not moved by the extremes' low training scores,
    # z-scores are (their std grows), so rank recovers more
    assert top1["rank"] >= 0.7 and top1["zscore"] >= top1["none"] + 0.15, top1
    # the same data without the extremes: the raw forests rank well, so the extremes are what costs them
    clean = _classes(np.random.default_rng(seed + 10), 40, extremes=False)
    s = IsolationForestScorer(n_estimators=100).pairwise(clean, test, seed=seed)
    assert class_detection_metrics(s, clean.labels, test.labels)["top1"] >= 0.7
