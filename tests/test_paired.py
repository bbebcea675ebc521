"""McNemar's paired test of a retrained model against its base model (gradsift.paired), against hand counts and a
brute-force binomial sum; the correctness vectors a fit records (which epoch each comes from); the summary column."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from gradsift import paired
from gradsift.summarize import load_runs, load_table, paired_pvalues, summarize, write_summary
from gradsift.training import with_best_epoch


@pytest.mark.parametrize("n", [1, 7, 8, 13, 10_000])
def test_pack_round_trips_any_length(n):
    bits = np.random.default_rng(n).random(n) < 0.6
    packed = paired.pack(bits)
    assert packed.startswith(f"bits1:{n}:")
    np.testing.assert_array_equal(paired.unpack(packed), bits)
    if n == 10_000:
        assert len(packed) < 1_700  # 1 bit per test image
    with pytest.raises(ValueError, match="bits1"):
        paired.unpack("json:3:AAA")


def _two_sided_exact(k: int, m: int) -> float:
    """Brute force: sum of Binomial(m, 1/2) probabilities no larger than that of k."""
    probs = [math.comb(m, i) / 2 ** m for i in range(m + 1)]
    return min(1.0, sum(p for p in probs if p <= probs[k] * (1 + 1e-12)))


def test_paired_test_counts_discordant_pairs_and_matches_a_brute_force_binomial():
    # 20 samples: both right on 10, both wrong on 3, base only on 2, other only on 5
    base = np.array([1] * 10 + [0] * 3 + [1] * 2 + [0] * 5, dtype=bool)
    other = np.array([1] * 10 + [0] * 3 + [0] * 2 + [1] * 5, dtype=bool)
    t = paired.paired_test(base, other)
    assert (t["n"], t["only_base"], t["only_other"]) == (20, 2, 5)
    assert t["gain"] == pytest.approx(other.mean() - base.mean()) == pytest.approx(3 / 20)
    assert t["se"] == pytest.approx(math.sqrt(2 + 5 - 9 / 20) / 20)
    assert t["p"] == pytest.approx(_two_sided_exact(5, 7))  # 0.453125
    assert paired.paired_test(base, base)["p"] == 1.0  # no discordant pair
    strong = paired.paired_test(np.zeros(100, bool), np.r_[np.ones(20, bool), np.zeros(80, bool)])
    assert strong["p"] == pytest.approx(2 / 2 ** 20)
    with pytest.raises(ValueError, match="same test set"):
        paired.paired_test(base, base[:5])


def test_versus_base_pairs_each_accuracy_kind_with_the_base_models_vector():
    a, b = np.array([1, 1, 0, 0, 1], bool), np.array([1, 0, 1, 1, 1], bool)
    m = {"test_best_correct": paired.pack(b), "base_test_best_correct": paired.pack(a),
         "test_correct": paired.pack(b), "base_test_acc": 0.6,  # the base's final vector is missing: no entry
         "test_cross_correct": paired.pack(b[:4]), "base_test_cross_correct": paired.pack(a)}  # other test set
    out = paired.versus_base(m)
    assert set(out) == {"test_best_vs_base"}
    assert out["test_best_vs_base"] == paired.paired_test(a, b)


def test_with_best_epoch_keeps_the_vectors_of_the_final_best_and_cross_selected_epochs():
    index = np.array([0, 1, 2, 3])  # even: 0, 2; odd: 1, 3
    per_epoch = [np.array(v, bool) for v in ([0, 0, 0, 1], [1, 0, 1, 0], [1, 1, 0, 1], [0, 1, 0, 0])]
    curve = [float(v.mean()) for v in per_epoch]  # 0.25, 0.5, 0.75, 0.25
    halves = [[v[index % 2 == 0].mean(), v[index % 2 == 1].mean()] for v in per_epoch]
    got = with_best_epoch({"acc": curve[-1], "curve": curve, "curve_halves": halves,
                           "curve_correct": per_epoch, "curve_index": index})
    assert "curve_correct" not in got and "curve_index" not in got  # one vector per epoch is not kept
    assert got["best_epoch"] == 3 and got["cross_epochs"] == [2, 3]  # even half best at epoch 2 (1.0), odd at 3
    np.testing.assert_array_equal(paired.unpack(got["correct"]), per_epoch[3])
    np.testing.assert_array_equal(paired.unpack(got["best_correct"]), per_epoch[2])
    # odd samples read at the epoch chosen on the even half (2), even samples at the one chosen on the odd half (3)
    np.testing.assert_array_equal(paired.unpack(got["cross_correct"]), [per_epoch[2][0], per_epoch[1][1],
                                                                         per_epoch[2][2], per_epoch[1][3]])
    assert paired.unpack(got["cross_correct"]).mean() == pytest.approx(got["cross_acc"])  # equal halves
    assert with_best_epoch(got) == got  # idempotent on a cached record (no per-epoch vectors left)


def _run(method: str, seed: int, best: float, base_best: float, test: dict | None) -> dict:
    metrics = {"test_acc": best, "test_best_acc": best, "base_test_acc": base_best, "base_test_best_acc": base_best}
    if test is not None:
        metrics["test_best_vs_base"] = test
    return {"status": "ok", "method": method, "dataset": "cifar10n", "seed": seed,
            "experiment": "table2_cifar10n_authors", "budget": {"kind": "fraction", "value": 0.05},
            "config": {"seed": seed, "data": {"noise": "worst"}, "retrain": True,
                       "model": {"backbone": {"_target_": "gradsift.models.resnet.resnet34"}}}, "metrics": metrics}


def test_paired_summary_prints_each_seeds_mcnemar_p_beside_the_gain(tmp_path):
    t0 = paired.paired_test(np.zeros(100, bool), np.r_[np.ones(20, bool), np.zeros(80, bool)])  # p ~ 1.9e-6
    t1 = paired.paired_test(np.r_[np.ones(3, bool), np.zeros(97, bool)], np.r_[np.zeros(3, bool), np.ones(5, bool),
                                                                                 np.zeros(92, bool)])
    for i, r in enumerate([_run("Outlier Gradient (L2)", 0, 0.80, 0.79, t0), _run("Outlier Gradient (L2)", 1, 0.81, 0.79, t1),
                           _run("Outlier Gradient (iForest)", 0, 0.81, 0.79, None)]):
        (tmp_path / f"r{i}").mkdir()
        (tmp_path / f"r{i}" / "result.json").write_text(json.dumps(r))
    from gradsift.summarize import best_epoch_table
    s = summarize(load_runs([tmp_path]), best_epoch_table(load_table("oga.table2_cifar_n_resnet34_authors")))
    tests = paired_pvalues(s)[""]
    assert tests["Outlier Gradient (L2)"]["c10n_worst"] == {"0": t0, "1": t1}
    assert "Outlier Gradient (iForest)" not in tests  # recorded no vectors
    _, md = write_summary([tmp_path], "oga.table2_cifar_n_resnet34_authors", tmp_path / "out", accuracy="best",
                          paired=True)
    line = next(x for x in md.splitlines() if x.startswith("| Outlier Gradient (L2) |") and "(+1.00, +2.00)" in x)
    assert f"<0.001, {t1['p']:.2g} |" in line and "McNemar" in md
    forest = next(x for x in md.splitlines() if x.startswith("| Outlier Gradient (iForest) |") and "(+2.00)" in x)
    assert forest.rstrip().endswith("| — |")
    _, final = write_summary([tmp_path], "oga.table2_cifar_n_resnet34_authors", tmp_path / "o2", paired=True)
    assert "McNemar" not in final  # the final-epoch column reads test_vs_base, which these runs lack


def _write_run(folder, method, seed, vectors):
    folder.mkdir(parents=True)
    metrics = {f"test_{k}": paired.pack(np.array(v, dtype=bool)) for k, v in vectors.items()}
    (folder / "result.json").write_text(json.dumps({"method": method, "seed": seed, "metrics": metrics}))
    return folder


def test_two_retrained_models_are_compared_image_by_image(tmp_path, capsys):
    """gradsift-paired: a trimming rule against the random control of the same seed, both from their result.json."""
    a = [1, 1, 0, 0, 1, 0, 1, 0]
    b = [1, 0, 1, 1, 1, 1, 1, 0]  # right on 3 that A gets wrong, wrong on 1 that A gets right
    control = _write_run(tmp_path / "random" / "0_x", "Random 5%", 0, {"correct": a, "best_correct": a})
    rule = _write_run(tmp_path / "l1" / "0_y", "L1", 0, {"correct": b, "best_correct": a})
    old = _write_run(tmp_path / "old", "L2", 1, {})  # recorded before the vectors
    tests = paired.compare_runs(tmp_path / "random", rule / "result.json")  # a sweep folder with one run, a file
    assert set(tests) == {"final", "best"}  # no cross vectors in either
    assert tests["final"] == paired.paired_test(np.array(a, bool), np.array(b, bool))
    assert (tests["final"]["only_base"], tests["final"]["only_other"], tests["final"]["gain"]) == (1, 3, 2 / 8)
    assert tests["best"]["gain"] == 0 and tests["best"]["p"] == 1.0
    assert paired.main([str(control), str(rule), str(old)]) == 1  # one run could not be paired: said, not raised
    out = capsys.readouterr().out
    assert "against Random 5% (seed 0)" in out and "final +25.00 (1 / 3)" in out
    assert "L2 (seed 1: not the same seed)" in out and "not paired:" in out
    _write_run(tmp_path / "short", "L1", 0, {"correct": [1, 0]})
    with pytest.raises(ValueError, match="share one test set"):
        paired.compare_runs(control, tmp_path / "short")
    with pytest.raises(FileNotFoundError, match="expected one run"):
        paired.compare_runs(tmp_path, rule)


def test_versus_a_control_row_pairs_each_seed_with_the_controls_run(tmp_path, capsys):
    """--versus 'Random 5%': per seed, the row minus the control, and McNemar's p where both runs have vectors."""
    from gradsift.cli import summarize as summarize_cli
    from gradsift.summarize import best_epoch_table, versus_gains

    control_v = np.r_[np.ones(60, bool), np.zeros(40, bool)]
    rule_v = np.r_[np.ones(50, bool), np.zeros(10, bool), np.ones(25, bool), np.zeros(15, bool)]  # 10 lost, 25 won
    runs = [_run("Random 5% [control, not in the paper]", 0, 0.60, 0.58, None),
            _run("Random 5% [control, not in the paper]", 1, 0.62, 0.59, None),
            _run("Outlier Gradient (L1)", 0, 0.75, 0.58, None), _run("Outlier Gradient (L1)", 1, 0.61, 0.59, None),
            _run("Outlier Gradient (L2)", 2, 0.70, 0.60, None)]  # a seed the control lacks
    runs[0]["metrics"]["test_best_correct"] = paired.pack(control_v)
    runs[2]["metrics"]["test_best_correct"] = paired.pack(rule_v)
    for i, r in enumerate(runs):
        (tmp_path / f"r{i}").mkdir()
        (tmp_path / f"r{i}" / "result.json").write_text(json.dumps(r))
    s = summarize(load_runs([tmp_path]), best_epoch_table(load_table("oga.table2_cifar_n_resnet34_authors")))
    got = versus_gains(s, "Random 5% [control, not in the paper]")[""]
    assert set(got) == {"Outlier Gradient (L1)"}  # not the control itself, not Cross Entropy, not seed-2-only L2
    per = got["Outlier Gradient (L1)"]["c10n_worst"]
    assert per["0"][0] == pytest.approx(15.0) and per["1"][0] == pytest.approx(-1.0)
    assert per["0"][1] == paired.paired_test(control_v, rule_v) and per["1"][1] is None  # seed 1: no vectors
    _, md = write_summary([tmp_path], "oga.table2_cifar_n_resnet34_authors", tmp_path / "out", accuracy="best",
                          versus="Random 5% [control, not in the paper]")
    line = next(x for x in md.splitlines() if x.startswith("| Outlier Gradient (L1) |") and "(+15.00, -1.00)" in x)
    assert line.endswith(f"| 1/2 | {per['0'][1]['p']:.2g}, — |")
    assert "--versus 'Random 5% [control, not in the paper]'" in md  # the regenerate command carries it
    with pytest.raises(SystemExit, match="no such row in this summary"):
        summarize_cli([str(tmp_path), "--table", "oga.table2_cifar_n_resnet34_authors", "--versus", "Random 6%",
                       "--out", str(tmp_path / "bad")])
    assert not (tmp_path / "bad.md").exists()  # refused before anything was written
