import logging
import os
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
warnings.filterwarnings("ignore", ".*does not have many workers.*")
logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (it sits beside the repo in CI and dev machines)")
    return SHARED_DATA


@pytest.fixture()
def fit_stages(monkeypatch) -> list:
    """The ``stage`` of every ``gradsift.training.fit_and_evaluate`` call a test makes ("base", "retrain", ...), in
    order; the fits still run."""
    from gradsift import training

    calls: list = []
    real = training.fit_and_evaluate
    monkeypatch.setattr(training, "fit_and_evaluate", lambda *a, **k: calls.append(k.get("stage")) or real(*a, **k))
    return calls
