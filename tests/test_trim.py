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


def test_explicit_fraction_and_count_keys():
    s = np.arange(250, dtype=float)
    assert Trim(fraction=0.1).select(s).sum() == 25
    assert Trim(count=1).select(s).sum() == 1
    # either explicit key replaces the preset's budget (conf/trim/fraction.yaml sets budget: 0.05)
    assert Trim(budget=0.05, count=3).describe() == {"kind": "count", "value": 3}
    assert Trim(budget="n_noisy", fraction=0.2).describe() == {"kind": "fraction", "value": 0.2}
    with pytest.raises(ValueError, match="both set"):
        Trim(fraction=0.1, count=3)


def test_committed_budgets_keep_their_meaning():
    """result.json records ``budget`` as {kind, value}; the committed runs' budgets must read exactly as before."""
    assert Trim(budget=0.05).describe() == {"kind": "fraction", "value": 0.05}
    assert Trim(budget=150).describe() == {"kind": "count", "value": 150}
    assert Trim(budget="n_noisy").describe() == {"kind": "n_noisy", "value": "n_noisy"}
    assert Trim(selection="detector").describe() == {"kind": "detector", "value": None}


@pytest.mark.parametrize("kwargs,match", [
    ({"budget": 1.0}, r"trim.budget=1.0 is ambiguous .*trim.count=1"),
    ({"budget": 1.5}, r"trim.budget=1.5 is a float, so a fraction, and a fraction must be below 1"),
    ({"budget": 150.0}, r"trim.count=150"),
    ({"fraction": 1.0}, r"trim.fraction=1.0; expected a share of the training set in \[0, 1\)"),
    ({"fraction": 5}, r"trim.fraction=5"),
    ({"count": 2.5}, r"trim.count=2.5; expected a number of samples"),
    ({"count": -1}, r"trim.count=-1"),
])
def test_ambiguous_or_out_of_range_budgets_say_what_to_write(kwargs, match):
    """Issue #19 item 4: ``trim.budget=1.0`` used to trim one sample (1.0 read as a count)."""
    with pytest.raises(ValueError, match=match):
        Trim(**kwargs)


def test_validate_before_training_names_the_key():
    """Issue #19 item 5: budgets too large for the training set fail before any training, naming the key."""
    assert Trim(budget=0.05).validate(250) == 12
    assert Trim(count=20).validate(250) == 20
    assert Trim(budget="n_noisy").validate(250) is None
    assert Trim(selection="detector").validate(250, has_noise_mask=False) is None
    with pytest.raises(ValueError, match=r"trim.budget=1000 removes 1000 samples but the training set has only 250"):
        Trim(budget=1000).validate(250)
    with pytest.raises(ValueError, match=r"trim.count=250 removes all 250 training samples"):
        Trim(count=250).validate(250)


def test_n_noisy_is_refused_without_a_noise_mask():
    """Issue #19 item 3: with unknown clean labels, n_noisy used to trim 0 samples and report detection acc 1.0."""
    with pytest.raises(ValueError, match=r"trim.budget=n_noisy .* no noise mask .*trim.fraction=0.05"):
        Trim(budget="n_noisy").validate(250, has_noise_mask=False)
    with pytest.raises(ValueError, match="no noise mask"):
        Trim().validate(250, has_noise_mask=False)  # the root config's default trim
    assert Trim(fraction=0.05).validate(250, has_noise_mask=False) == 12
