"""Config key ``fill_uninitialized_memory``: it reaches torch for the fit and the test of fit_and_evaluate, is
restored afterwards, leaves torch's default alone when null, does not change what the model learns, and does not
split summary cells."""

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate

from gradsift import training
from gradsift.summarize import comparable_config
from tests.test_pipeline import _cfg


class _Probe(pl.Callback):
    """Records the flag, whether deterministic algorithms are on, and a fresh tensor at the start of fit and test."""

    def __init__(self):
        self.seen: dict[str, tuple[bool, bool, bool]] = {}

    def _look(self, stage: str) -> None:
        self.seen[stage] = (torch.utils.deterministic.fill_uninitialized_memory,
                            torch.are_deterministic_algorithms_enabled(), bool(torch.empty(64).isnan().all()))

    def on_train_start(self, trainer, pl_module):
        self._look("fit")

    def on_test_start(self, trainer, pl_module):
        self._look("test")


@pytest.fixture
def restore_torch_flags():
    fill, det = torch.utils.deterministic.fill_uninitialized_memory, torch.are_deterministic_algorithms_enabled()
    yield
    torch.utils.deterministic.fill_uninitialized_memory = fill
    torch.use_deterministic_algorithms(det)


def _fit(tmp_path, *extra):
    cfg = _cfg(tmp_path, "trainer.max_epochs=2", *extra)
    assert cfg.trainer.deterministic is True  # the deterministic trainer the flag matters under
    dm = instantiate(cfg.data)
    dm.setup()
    probe = _Probe()
    model, metrics, _ = training.fit_and_evaluate(cfg, dm, callbacks=[probe])
    return model, metrics, probe.seen


@pytest.mark.parametrize("value", [False, True])
def test_the_flag_reaches_torch_for_fit_and_test_and_is_restored(tmp_path, restore_torch_flags, value):
    torch.utils.deterministic.fill_uninitialized_memory = not value
    _, _, seen = _fit(tmp_path, f"fill_uninitialized_memory={str(value).lower()}")
    assert seen["fit"][:2] == seen["test"][:2] == (value, True)
    if value:  # the fill itself: a new tensor is all NaN under deterministic algorithms
        assert seen["fit"][2] and seen["test"][2]
    assert torch.utils.deterministic.fill_uninitialized_memory is (not value)


def test_null_leaves_torch_default_and_false_learns_the_same_bits(tmp_path, restore_torch_flags):
    torch.utils.deterministic.fill_uninitialized_memory = True
    model, metrics, seen = _fit(tmp_path)
    assert seen["fit"] == seen["test"] == (True, True, True)
    off, off_metrics, _ = _fit(tmp_path, "fill_uninitialized_memory=false")
    assert off_metrics == metrics
    assert all(torch.equal(a, b) for a, b in zip(off.state_dict().values(), model.state_dict().values()))


def test_runs_that_differ_only_in_the_fill_share_a_summary_cell():
    on, off = ({"config": {"fill_uninitialized_memory": v, "trainer": {"deterministic": "warn"}}}
               for v in (None, False))
    assert comparable_config(on) == comparable_config(off) == {"trainer.deterministic": '"warn"'}
