"""The cached base model, its gradients and the retrains: keyed so that a sweep trains and gathers once."""

import numpy as np
from hydra.utils import instantiate

from gradsift import artifacts, pipeline, training
from tests.test_pipeline import _cfg


def test_second_run_reuses_the_cached_base_model(tmp_path, monkeypatch):
    calls = []
    real = training.fit_and_evaluate
    monkeypatch.setattr(training, "fit_and_evaluate", lambda *a, **k: calls.append(k.get("stage")) or real(*a, **k))
    first = pipeline.run(_cfg(tmp_path, "scorer=l1"), tmp_path / "a")
    second = pipeline.run(_cfg(tmp_path, "scorer=iforest", "trim.budget=5"), tmp_path / "b")
    assert not first["cache_hit"] and second["cache_hit"]
    assert first["base_key"] == second["base_key"]
    assert calls == ["base", "retrain", "retrain"]  # the base model was trained once
    again = pipeline.run(_cfg(tmp_path, "scorer=l1"), tmp_path / "a2")
    assert again["retrain_cache_hit"] and again["metrics"] == first["metrics"] and len(calls) == 3
    assert second["metrics"]["base_test_acc"] == first["metrics"]["base_test_acc"]
    third = pipeline.run(_cfg(tmp_path, "scorer=l1", "seed=1"), tmp_path / "c")
    assert not third["cache_hit"]


def test_changing_the_compressor_regathers_without_retraining(tmp_path, monkeypatch):
    calls = []
    real = training.fit_and_evaluate
    monkeypatch.setattr(training, "fit_and_evaluate", lambda *a, **k: calls.append(k.get("stage")) or real(*a, **k))
    a = pipeline.run(_cfg(tmp_path, "scorer=l2", "compressor=gaussian", "compressor.r=16"), tmp_path / "g")
    b = pipeline.run(_cfg(tmp_path, "scorer=l2", "compressor=dropout", "compressor.r=16"), tmp_path / "d")
    assert not a["model_cache_hit"] and b["model_cache_hit"] and not b["cache_hit"]
    assert a["base_key"] != b["base_key"]
    assert calls.count("base") == 1  # one model; its gradients gathered twice (two compressors)
    assert a["metrics"]["base_test_acc"] == b["metrics"]["base_test_acc"]


def test_reference_gradients_are_stored_only_for_a_split_other_than_train(tmp_path):
    dm = instantiate(_cfg(tmp_path).data)
    dm.setup()
    own = artifacts.base_artifacts(_cfg(tmp_path), dm)  # attribution.reference=train (tests.test_pipeline.FAST)
    assert own.inputs.reference is own.inputs.train and own.inputs.train_probs.shape == (80, 2)
    test = artifacts.base_artifacts(_cfg(tmp_path, "attribution.reference=test"), dm)
    assert test.model_hit and not test.hit and test.key != own.key  # one model, gathered again
    assert test.inputs.reference.n == 40
    entry = tmp_path / "cache" / "base"
    assert sorted(p.name for p in entry.rglob("grads_*.npz")) == ["grads_reference.npz", "grads_train.npz",
                                                                 "grads_train.npz"]
    np.testing.assert_array_equal(test.inputs.train.grads, own.inputs.train.grads)


def test_cache_keys_do_not_depend_on_where_things_live(tmp_path):
    """A cache copied to another machine (another data folder, cache folder, loader workers, progress bar) is found
    again; what the model computes still keys it."""
    from tests.test_config import _compose

    def keys(*extra):
        cfg = _compose(["experiment=table2_cifar10n_authors", f"paths.cache_dir={tmp_path}", *extra], hydra_runtime=tmp_path)
        return artifacts.model_key(cfg), artifacts.config_hash(cfg, artifacts._base_keys(cfg), locations=False)

    here = keys()
    assert keys(f"paths.cache_dir={tmp_path / 'elsewhere'}", "data.num_workers=7", "trainer.enable_progress_bar=false",
                f"paths.data_dir={tmp_path / 'data'}") == here
    assert keys("data.noise=worst")[0] != here[0] and keys("seed=3")[0] != here[0]
    assert keys("gradients=last_layer")[0] == here[0] and keys("gradients=last_layer")[1] != here[1]
