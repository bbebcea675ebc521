"""retrain_from: a retrain in another job (another cache) on an earlier detection run's flags."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from gradsift import pipeline, training
from tests.data.test_resident import _dm, fake  # noqa: F401  (fake: the tiny CIFAR folder fixture)
from tests.test_pipeline import _cfg


@pytest.fixture
def stages(monkeypatch):
    calls = []
    real = training.fit_and_evaluate
    monkeypatch.setattr(training, "fit_and_evaluate", lambda *a, **k: calls.append(k.get("stage")) or real(*a, **k))
    return calls


def test_retrain_from_a_detection_run_trains_only_the_retrain_and_shares_its_cache(tmp_path, stages):
    det = pipeline.run(_cfg(tmp_path, "scorer=l2", "retrain=false"), tmp_path / "sweep" / "0", {"scorer": "l2"})
    assert stages == ["base"]
    # another machine: a fresh cache, the detection run's folder only (flagged.csv compressed, as committed)
    moved = tmp_path / "moved"
    shutil.copytree(tmp_path / "sweep", moved)
    pd.read_csv(moved / "0" / "flagged.csv").to_csv(moved / "0" / "flagged.csv.gz", index=False)
    (moved / "0" / "flagged.csv").unlink()
    other = tmp_path / "other"
    res = pipeline.run(_cfg(other, "scorer=l2", f"retrain_from={moved}"), tmp_path / "re", {"scorer": "l2"})
    assert stages == ["base", "retrain"]  # no base model trained, no gradients gathered on the second machine
    assert res["status"] == "ok" and res["retrain_from"]["path"] == str(moved / "0")
    assert res["retrain_from"]["config_hash"] == det["config_hash"] and res["model_key"] == det["model_key"]
    m = res["metrics"]
    for k in ("base_test_acc", "detection_auc", "precision", "n_trimmed"):
        assert m[k] == det["metrics"][k]
    assert 0 <= m["test_acc"] <= 1 and res["method"] == det["method"]
    # the same flags as the detection run, and the rows it keeps are the retrain's
    flags = pd.read_csv(tmp_path / "re" / "flagged.csv")
    assert flags.equals(pd.read_csv(tmp_path / "sweep" / "0" / "flagged.csv"))
    np.testing.assert_array_equal(np.load(tmp_path / "re" / "scores.npy"), np.load(tmp_path / "sweep" / "0" / "scores.npy"))
    # one job doing both on the second machine's cache finds that retrain: the cache key is the same either way
    full = pipeline.run(_cfg(other, "scorer=l2"), tmp_path / "full", {"scorer": "l2"})
    assert full["retrain_cache_hit"] is True and full["metrics"]["test_acc"] == m["test_acc"]
    # and it is the same run: one config hash, so summaries put both in one cell and a re-run skips either
    assert full["config_hash"] == res["config_hash"] and "retrain_from" not in res["config"]
    saved = json.loads((tmp_path / "re" / "result.json").read_text())
    assert saved["metrics"] == m and saved["timings"]["score_s"] == det["timings"]["score_s"]


def test_retrain_from_a_sweep_takes_the_job_with_this_scoring_config(tmp_path, stages):
    for i, scorer in enumerate(["l1", "l2"]):
        pipeline.run(_cfg(tmp_path, f"scorer={scorer}", "retrain=false"), tmp_path / "sweep" / str(i))
    res = pipeline.run(_cfg(tmp_path / "b", "scorer=l1", f"retrain_from={tmp_path / 'sweep'}"), tmp_path / "re")
    assert res["retrain_from"]["path"] == str(tmp_path / "sweep" / "0")
    assert stages == ["base", "retrain"]


def test_retrain_from_refuses_a_run_of_another_config_and_says_what_differs(tmp_path):
    pipeline.run(_cfg(tmp_path, "scorer=l2", "retrain=false"), tmp_path / "det")
    with pytest.raises(ValueError, match=r"(?s)retrain_from=.*differs in scorer"):
        pipeline.run(_cfg(tmp_path, "scorer=l1", f"retrain_from={tmp_path / 'det'}"), tmp_path / "re")
    # the failed record is written, with the reason
    rec = json.loads((tmp_path / "re" / "result.json").read_text())
    assert rec["status"] == "failed" and "scorer" in rec["error"]
    with pytest.raises(ValueError, match="differs in (data.seed, )?seed"):
        pipeline.run(_cfg(tmp_path, "scorer=l2", "seed=1", f"retrain_from={tmp_path / 'det'}"), tmp_path / "re2")
    with pytest.raises(FileNotFoundError, match="retrain_from=.*no such folder"):
        pipeline.run(_cfg(tmp_path, "scorer=l2", f"retrain_from={tmp_path / 'nowhere'}"), tmp_path / "re3")
    with pytest.raises(ValueError, match="retrain=false"):
        pipeline.run(_cfg(tmp_path, "scorer=l2", "retrain=false", f"retrain_from={tmp_path / 'det'}"), tmp_path / "re4")


def test_where_things_are_kept_does_not_count_as_a_difference():
    from omegaconf import OmegaConf

    from gradsift.handoff import differing_sections

    here = OmegaConf.create({"data": {"cache_dir": "/a", "noise": "worst"}, "trainer": {"enable_progress_bar": False},
                             "seed": 0})
    assert differing_sections(here, {"data": {"cache_dir": "/b", "noise": "worst"},
                                     "trainer": {"enable_progress_bar": True}, "seed": 0}) == []
    assert differing_sections(here, {"data": {"cache_dir": "/a", "noise": "aggregate"}, "trainer": {},
                                     "seed": 1}) == ["data.noise", "seed"]


def test_parallel_retrains_give_what_each_gives_alone_and_fill_the_sweeps_cache(tmp_path, stages):
    from gradsift import parallel

    for i, scorer in enumerate(["l1", "l2", "self_confidence"]):
        pipeline.run(_cfg(tmp_path, f"scorer={scorer}", "retrain=false", "eval_every_epoch=true"),
                     tmp_path / "det" / str(i))
    common = ["eval_every_epoch=true", f"retrain_from={tmp_path / 'det'}"]
    cfgs = [_cfg(tmp_path / "par", f"scorer={s}", *common) for s in ["l1", "l2", "self_confidence"]]
    outcomes = parallel.retrain_parallel(cfgs, workers=3)
    assert [o.get("error") for o in outcomes] == [None] * 3 and not any(o["cache_hit"] for o in outcomes)
    # one at a time, in a fresh cache: the same numbers, epoch by epoch
    alone = [pipeline.run(_cfg(tmp_path / "seq", f"scorer={s}", *common), tmp_path / "seq" / s)
             for s in ["l1", "l2", "self_confidence"]]
    for o, a in zip(outcomes, alone):
        assert o["test"]["curve"] == a["metrics"]["test_curve"] and o["test"]["acc"] == a["metrics"]["test_acc"]
    # the sweep after the parallel retrains trains nothing
    n = len(stages)
    again = pipeline.run(_cfg(tmp_path / "par", "scorer=l2", *common), tmp_path / "sweep_l2")
    assert again["retrain_cache_hit"] is True and len(stages) == n


def test_parallel_command_line_composes_each_retrain(tmp_path, capsys):
    from gradsift import parallel
    from tests.test_pipeline import FAST

    pipeline.run(_cfg(tmp_path, "scorer=l2", "retrain=false"), tmp_path / "det")
    rc = parallel.main(["--workers", "1", "--each", "scorer=l2", "--out", str(tmp_path / "o.json"), "--", *FAST,
                        f"paths.cache_dir={tmp_path / 'c2'}", f"retrain_from={tmp_path / 'det'}"])
    assert rc == 0 and "1 retrains, 1 at a time" in capsys.readouterr().out
    assert json.loads((tmp_path / "o.json").read_text())["retrains"][0]["cache_hit"] is False
    with pytest.raises(ValueError, match="no retrain_from"):
        parallel.retrain_parallel([_cfg(tmp_path, "scorer=l2")], workers=2)


def test_compacted_flags_still_drive_the_same_retrain(tmp_path):
    from gradsift.handoff import compact_flags, read_flag_table

    det = pipeline.run(_cfg(tmp_path, "scorer=l2", "retrain=false"), tmp_path / "det")
    full = pd.read_csv(tmp_path / "det" / "flagged.csv")
    out = compact_flags(tmp_path / "det")
    assert out.name == "flagged.npz" and not (tmp_path / "det" / "flagged.csv").exists()
    small = read_flag_table(out)
    assert list(small.columns) == ["index", "flagged"] and small["index"].is_monotonic_increasing
    assert sorted(small["index"]) == sorted(full["index"])
    assert set(small.loc[small.flagged, "index"]) == set(full.loc[full.flagged, "index"])
    res = pipeline.run(_cfg(tmp_path / "b", "scorer=l2", f"retrain_from={tmp_path / 'det'}"), tmp_path / "re")
    assert res["metrics"]["n_trimmed"] == det["metrics"]["n_trimmed"] == int(small.flagged.sum())


def test_compact_command_line_names_a_folder_without_flags(tmp_path, capsys):
    from gradsift.handoff import main

    (tmp_path / "run").mkdir()
    (tmp_path / "other").mkdir()
    pd.DataFrame({"index": [0, 1], "flagged": [True, False]}).to_csv(tmp_path / "other" / "flagged.csv", index=False)
    assert main([str(tmp_path / "run"), str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "run") in err and "flagged.csv" in err
    assert (tmp_path / "other" / "flagged.npz").exists()  # the folder after the bad one is still compacted


def test_compacted_flags_read_back_exactly_for_any_index_set(tmp_path):
    from gradsift.handoff import compact_flags, read_flag_table

    rng = np.random.default_rng(0)
    for case, index in enumerate([np.arange(50_000), np.sort(rng.choice(10**9, 777, replace=False)), np.array([5])]):
        folder = tmp_path / str(case)
        folder.mkdir()
        flags = rng.random(len(index)) < 0.05
        order = rng.permutation(len(index))  # a run writes most detrimental first, not in index order
        pd.DataFrame({"index": index[order], "score": rng.random(len(index)), "flagged": flags[order]}).to_csv(
            folder / "flagged.csv.gz", index=False)  # the older committed form is converted too
        out = compact_flags(folder)
        assert [p.name for p in folder.iterdir()] == ["flagged.npz"]
        back = read_flag_table(out)
        assert np.array_equal(back["index"], index) and np.array_equal(back["flagged"], flags)
    assert (tmp_path / "0" / "flagged.npz").stat().st_size < 10_000  # 50,000 samples in a few kB


def test_committed_authors_flags_still_stand_in_for_the_preset(tmp_path):
    """The next GPU calls retrain from the committed detection runs (`authors.sh MODE=retrain`, `retrain_from=`):
    a change to the authors' preset, or to any default in its data/model/trainer/scoring sections, would make every
    such call refuse them on the device. Compose each committed run's config as authors.sh does and match it here."""
    import re
    from pathlib import Path

    from gradsift import handoff
    from tests.test_config import _compose

    root = Path(__file__).resolve().parents[1] / "multirun_summaries" / "runs" / "gpu_authors"
    jobs = sorted(p.parent for p in root.glob("authors_base_*/*/flagged.npz"))
    if not jobs:
        pytest.skip(f"no committed flags under {root}")
    speed = ["trainer.precision=bf16-mixed", "model.cuda_graph=true", "model.optimizer.fused=true", "data.device=cuda",
             "fill_uninitialized_memory=false"]  # authors.sh SPEED_ARGS
    for job in jobs:
        rec = json.loads((job / "result.json").read_text())
        method = re.match(r"\d+_\+table2_authors=([a-z_0-9]+),", job.name).group(1)
        cfg = _compose(["experiment=table2_cifar10n_authors", "data.source=jpeg", f"data.noise={rec['config']['data']['noise']}",
                        f"seed={rec['seed']}", "trainer.enable_progress_bar=false", "torch_threads=4", "gallery=0",
                        f"paths.cache_dir={tmp_path}", *speed, f"+table2_authors={method}",
                        f"retrain_from={job.parent}"], hydra_runtime=tmp_path)
        found, _ = handoff.find_detection_run(cfg, job.parent)
        assert found == job, f"{job.parent.name} / {method}: matched {found.name}"


def _authors_cfg(job, method, tmp_path, *extra):
    from tests.test_config import _compose

    rec = json.loads((job / "result.json").read_text())
    speed = ["trainer.precision=bf16-mixed", "model.cuda_graph=true", "model.optimizer.fused=true", "data.device=cuda",
             "fill_uninitialized_memory=false"]  # authors.sh SPEED_ARGS
    return _compose(["experiment=table2_cifar10n_authors", "data.source=jpeg", f"data.noise={rec['config']['data']['noise']}",
                     f"seed={rec['seed']}", "trainer.enable_progress_bar=false", "torch_threads=4", "gallery=0",
                     f"paths.cache_dir={tmp_path}", *speed, f"+table2_authors={method}", f"retrain_from={job.parent}",
                     *extra], hydra_runtime=tmp_path)


def test_the_controls_retrain_from_every_committed_authors_base_call(tmp_path, shared_data):
    """`authors.sh MODE=retrain METHODS=random,none` on a cold machine: every committed base call stands in for both
    controls, and the random 5% scored here is, row for row, what the 2026-12-04 base call's own random run flagged
    (real CIFAR-10N, 50,000 training rows: the datamodule's row order is the gathered gradients')."""
    from pathlib import Path

    from hydra.utils import instantiate

    from gradsift import handoff

    root = Path(__file__).resolve().parents[1] / "multirun_summaries" / "runs" / "gpu_authors"
    sweeps = sorted({p.parent.parent for p in root.glob("authors_base_*/*/flagged.npz")})
    if not sweeps:
        pytest.skip(f"no committed flags under {root}")
    for sweep in sweeps:
        job = next(p.parent for p in sorted(sweep.glob("*/result.json")))
        for method in ("random", "none"):
            found, rec = handoff.find_detection_run(_authors_cfg(job, method, tmp_path), sweep)
            assert found.parent == sweep and rec["metrics"]["base_test_best_acc"] > 0.5, (sweep.name, method)
    own = [p.parent for p in root.glob("authors_base_*/*/flagged.npz") if "table2_authors=random," in p.parent.name]
    if not own:
        pytest.skip("no committed detection run of the random control")
    cfg = _authors_cfg(own[0], "random", tmp_path, f"paths.data_dir={shared_data}")
    dm = instantiate(cfg.data, device="cpu")  # the rows' order does not depend on where the tensors live
    dm.setup()
    found, _, _, index, remove = handoff.kept_rows(cfg, dm)
    committed = handoff.read_flag_table(own[0] / "flagged.npz").set_index("index")["flagged"].reindex(index)
    assert found == own[0] and remove.sum() == 2500
    np.testing.assert_array_equal(remove, committed.to_numpy(bool))


def test_parallel_refuses_a_model_with_active_dropout_unless_told(tmp_path):
    """Dropout draws from the one generator the threads share: such retrains would not equal those alone."""
    from omegaconf import open_dict

    from gradsift import parallel

    pipeline.run(_cfg(tmp_path, "scorer=l2", "retrain=false", "model=torch_module"), tmp_path / "det")

    def cfg(p: float):
        c = _cfg(tmp_path, "scorer=l2", "model=torch_module", f"retrain_from={tmp_path / 'det'}")
        with open_dict(c):
            c.model.module._args_.insert(1, {"_target_": "torch.nn.Dropout", "p": p})
        return c

    assert parallel.random_layers(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5),
                                                      torch.nn.Dropout(0.0))) == ["1 (p=0.5)"]
    with pytest.raises(ValueError, match=r"active dropout: net\.1 \(p=0\.5\).*--workers 1"):
        parallel.retrain_parallel([cfg(0.5), cfg(0.5)], workers=2)
    # no dropout drawn (p = 0), one worker, or told to: not refused (the flags' config differs here, so each
    # outcome is the error the sweep would also get, not a refusal)
    for cfgs, workers, allow in (([cfg(0.0), cfg(0.0)], 2, False), ([cfg(0.5), cfg(0.5)], 1, False),
                                 ([cfg(0.5), cfg(0.5)], 2, True)):
        try:
            parallel.retrain_parallel(cfgs, workers=workers, allow_random_layers=allow)
        except ValueError as err:
            assert "active dropout" not in str(err)


def test_loaders_draw_nothing_from_the_global_rng(tmp_path, fake):  # noqa: F811
    """A DataLoader without a generator draws its iterator's base seed from the global RNG, even unshuffled: a test
    pass in one thread then moved the weight init of a retrain in another (gradsift.parallel under load gave epoch-1
    accuracy 0.775 where the same retrain alone gave 0.9) and every later dropout draw of a run."""
    from hydra.utils import instantiate

    from gradsift.attribution.distributed import rank_loader

    dm = instantiate(_cfg(tmp_path).data)
    dm.setup()
    cifar = _dm(fake, device="cpu")
    loaders = [dm.train_dataloader(), dm.test_dataloader(), dm.attribution_dataloader("train"),
               cifar.train_dataloader(), cifar.test_dataloader(), cifar.attribution_dataloader("train"),
               rank_loader(dm.test_dataloader(), 0, 2)]
    expected = torch.rand(3, generator=torch.Generator().manual_seed(0))  # the global stream's next draws, untouched
    for i, loader in enumerate(loaders):
        torch.manual_seed(0)
        for _ in range(2):  # two epochs: each iterator is a new draw for a loader without a generator
            for _ in loader:
                pass
        assert torch.equal(torch.rand(3), expected), f"loader {i} drew from the global RNG"


def test_a_scorer_that_needs_no_model_retrains_from_another_scorers_run_with_its_own_flags(tmp_path, stages):
    """The random control from a base call that never scored it: its flags are computed in the retrain job, equal to
    the ones its own detection run writes, and only the base model's facts come from the other scorer's run."""
    det = pipeline.run(_cfg(tmp_path, "scorer=l2", "retrain=false"), tmp_path / "sweep" / "0", {"scorer": "l2"})
    own = pipeline.run(_cfg(tmp_path, "scorer=random", "retrain=false"), tmp_path / "own", {"scorer": "random"})
    assert stages == ["base"]  # the second detection run found the base model in the cache
    (tmp_path / "sweep" / "0" / "flagged.csv").unlink()  # not needed: the scorer needs no model
    res = pipeline.run(_cfg(tmp_path / "other", "scorer=random", f"retrain_from={tmp_path / 'sweep'}"),
                       tmp_path / "re", {"scorer": "random"})
    assert stages == ["base", "retrain"] and res["status"] == "ok"
    assert res["retrain_from"]["scored_here"] is True and res["retrain_from"]["path"] == str(tmp_path / "sweep" / "0")
    flags = pd.read_csv(tmp_path / "re" / "flagged.csv")
    assert flags.equals(pd.read_csv(tmp_path / "own" / "flagged.csv"))  # the same rows as its own detection run
    np.testing.assert_array_equal(np.load(tmp_path / "re" / "scores.npy"), np.load(tmp_path / "own" / "scores.npy"))
    m = res["metrics"]
    for k in ("detection_auc", "precision", "n_trimmed", "true_positives"):  # its own detection, not the L2 run's
        assert m[k] == own["metrics"][k]
    assert m["detection_auc"] != det["metrics"]["detection_auc"]
    assert m["base_test_acc"] == det["metrics"]["base_test_acc"] == own["metrics"]["base_test_acc"]
    assert res["timings"]["gradients_s"] == 0.0 and res["timings"]["train_s"] == det["timings"]["train_s"]
    # one job doing both finds that retrain in the cache: the same kept rows under the same base model
    full = pipeline.run(_cfg(tmp_path / "other", "scorer=random"), tmp_path / "full", {"scorer": "random"})
    assert full["retrain_cache_hit"] is True and full["metrics"]["test_acc"] == m["test_acc"]
    # a run of another base model will not do, and the message says what it looked for
    with pytest.raises(ValueError, match=r"(?s)trained this run's base model.*differs in (data.seed, )?seed"):
        pipeline.run(_cfg(tmp_path, "scorer=random", "seed=1", f"retrain_from={tmp_path / 'sweep'}"), tmp_path / "x")


def test_nothing_deleted_retrains_on_every_sample(tmp_path, stages):
    """trim.count=0 with the random scorer: the retrain protocol alone (the authors' retrain is shuffled, their base
    model not), from another scorer's detection run."""
    pipeline.run(_cfg(tmp_path, "scorer=l2", "retrain=false"), tmp_path / "det")
    res = pipeline.run(_cfg(tmp_path, "scorer=random", "trim.count=0", f"retrain_from={tmp_path / 'det'}"),
                       tmp_path / "re")
    assert res["status"] == "ok" and res["metrics"]["n_trimmed"] == 0 and stages == ["base", "retrain"]
    flags = pd.read_csv(tmp_path / "re" / "flagged.csv")
    assert len(flags) == len(pd.read_csv(tmp_path / "det" / "flagged.csv")) and not flags["flagged"].any()
