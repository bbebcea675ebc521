"""Gradients gathered at several saved checkpoints, as scorers read them.

Checkpoints of one training run (TracInCP) or several models (TRAK's ensemble): ``ScoringInputs.extra["checkpoints"]``
is a list of :class:`CheckpointInputs`. Without it, the final model's gradients (``inputs.train`` /
``inputs.reference`` / ``inputs.train_probs``) are the one checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gradsift.attribution.gradient_set import GradientSet
from gradsift.scoring.base import ScoringInputs


@dataclass
class CheckpointInputs:
    """What a scorer may read at one checkpoint.

    Attributes:
        train: the training gradients (the rows of ``ScoringInputs.train``, in its order).
        reference: the reference split's gradients.
        train_probs: predicted probabilities of the training rows ``[n, C]``.
        learning_rate: the learning rate in effect there (TracInCP's weight, Pruthi et al. 2020 Eq. 3).
        name: a label for messages (``"epoch 3"``).
    """

    train: GradientSet
    reference: GradientSet | None = None
    train_probs: np.ndarray | None = None
    learning_rate: float = 1.0
    name: str = ""


def checkpoint_inputs(inputs: ScoringInputs, need_reference: bool = True,
                      need_probs: bool = False) -> list[CheckpointInputs]:
    """The checkpoints of ``inputs``, checked.

    Every one must cover the training rows of ``inputs.train`` in the same order and have what the scorer needs.

    Args:
        inputs: the scoring inputs; ``extra["checkpoints"]`` or the final model alone.
        need_reference: every checkpoint must have reference gradients of the training gradients' width.
        need_probs: every checkpoint must have ``[n, C]`` probabilities of the training rows.

    Returns:
        The checkpoints, in the given order.
    """
    ckpts = inputs.extra.get("checkpoints")
    if ckpts is None:
        ckpts = [CheckpointInputs(inputs.train, inputs.reference, inputs.train_probs, 1.0, "final")]
    if not ckpts:
        raise ValueError("inputs.extra['checkpoints'] is empty: set attribution.checkpoints to the epochs to gather at")
    for c in ckpts:
        label = c.name or "checkpoint"
        if not np.array_equal(c.train.index, inputs.train.index):
            raise ValueError(f"{label}: its training rows are not inputs.train's rows (same samples, same order)")
        if need_reference:
            if c.reference is None or c.reference.n == 0:
                raise ValueError(f"{label} has no reference gradients")
            if c.reference.dim != c.train.dim:
                raise ValueError(f"{label}: reference gradients have {c.reference.dim} columns, training gradients "
                                 f"{c.train.dim}; gather both with the same parameters and compressor")
        if need_probs:
            probs = c.train_probs
            if probs is None or np.ndim(probs) != 2 or len(probs) != c.train.n:
                raise ValueError(f"{label} needs [n={c.train.n}, n_classes] predicted probabilities of the training rows")
        if not np.isfinite(c.learning_rate) or c.learning_rate < 0:
            raise ValueError(f"{label}: learning_rate must be a non-negative float, got {c.learning_rate!r}")
    return list(ckpts)


__all__ = ["CheckpointInputs", "checkpoint_inputs"]
