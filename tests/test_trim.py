import numpy as np
import pytest

from gradsift.trim import Trim


def test_budget_forms_remove_exactly_the_budget():
    s = np.arange(100, dtype=float)
    assert Trim(budget=0.05).select(s).sum() == 5
    assert Trim(budget=7).select(s).sum() == 7
    assert Trim(budget="n_noisy").select(s, n_noisy=12).sum() == 12
    top = Trim(budget=3).select(s)
    assert set(np.flatnonzero(top)) == {97, 98, 99}
    low = Trim(budget=3, remove="beneficial").select(s)
    assert set(np.flatnonzero(low)) == {0, 1, 2}


def test_detector_selection_uses_the_detectors_labels():
    flags = np.zeros(10, dtype=bool)
    flags[[1, 4]] = True
    assert (Trim(selection="detector").select(np.zeros(10), flags) == flags).all()
    with pytest.raises(ValueError, match="trim.selection='detector'"):
        Trim(selection="detector").select(np.zeros(10), None)


@pytest.mark.parametrize("budget,match", [(-1, "negative"), (-0.1, "negative"), ("many", "trim.budget"),
                                          (2.5, "integer")])
def test_bad_budgets_name_the_key(budget, match):
    with pytest.raises(ValueError, match=match):
        Trim(budget=budget).select(np.zeros(10))


def test_budget_larger_than_dataset():
    with pytest.raises(ValueError, match=r"trim.budget=11 removes 11 samples but the training set has only 10"):
        Trim(budget=11).select(np.zeros(10))
