"""The "Random" row of the tables: uniform scores, i.e. trimming a random subset (dropout paper Sec. 4.2.1)."""

from __future__ import annotations

import numpy as np

from gradsift.scoring.base import Scorer, ScoringInputs


class RandomScorer(Scorer):
    """Uniform [0, 1) scores drawn from ``inputs.seed`` (or ``seed`` when given), so a run is reproducible."""

    display_name = "Random"
    #: the scores are a function of the seed and the number of samples: ``retrain_from`` needs no flags for them
    needs_model = False

    def __init__(self, seed: int | None = None, display_name: str | None = None):
        self.seed = seed
        if display_name:
            self.display_name = display_name
        self._scores: np.ndarray | None = None

    def fit(self, inputs: ScoringInputs) -> "RandomScorer":
        """Draw the scores."""
        seed = inputs.seed if self.seed is None else self.seed
        self._scores = np.random.default_rng(seed).random(inputs.train.n)
        return self

    def score(self) -> np.ndarray:
        """The scores of the last :meth:`fit`."""
        if self._scores is None:
            raise RuntimeError("RandomScorer.score() called before fit()")
        return self._scores
