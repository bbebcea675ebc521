"""Small models for the synthetic experiments: logistic regression, ReLU MLPs (softmax and sigmoid heads).

Logistic regression is convex; :class:`MLP` has two ReLU layers and a softmax head; :class:`SigmoidMLP` is the OGA
authors' binary Table 1 model (one sigmoid output, BCE).

The recipe is ``optimizer``/``scheduler``/``scheduler_interval``/``no_weight_decay`` (:mod:`gradsift.models.optim`):
Adam by default, full batch, no schedule; ``model/optimizer=lbfgs '~model.optimizer.weight_decay'`` trains with L-BFGS.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gradsift.models.base import GradsiftModule
from gradsift.models.optim import OptimizerFactory, SchedulerFactory, TrainingRecipe


def positive_int(key: str, value: Any) -> int:
    """``value`` as an int >= 1, or a ValueError naming the config key (``model.in_features``)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{key}={value!r}: expected a positive integer")
    return value


def layer_widths(key: str, value: Any) -> tuple[int, ...]:
    """``value`` as a tuple of hidden-layer widths, or a ValueError naming the config key.

    ``model.hidden=64`` must be written ``model.hidden=[64]`` (one layer) or ``[64,64]``.
    """
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"{key}={value!r}: expected a list of hidden-layer widths, e.g. {key}=[{value}] for one "
                         f"layer or {key}=[{value},{value}] for two ([] for none)")
    return tuple(positive_int(f"{key}[{i}]", h) for i, h in enumerate(value))


class _TabularClassifier(TrainingRecipe, GradsiftModule):
    def logits(self, batch: dict) -> torch.Tensor:
        return self.net(batch["x"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class LogisticRegression(_TabularClassifier):
    """Multinomial logistic regression (one Linear layer): strictly convex with weight decay > 0."""

    def __init__(self, in_features: int = 2, num_classes: int = 2,
                 optimizer: OptimizerFactory = partial(torch.optim.Adam, lr=0.1, weight_decay=1e-2),
                 scheduler: SchedulerFactory | None = None, scheduler_interval: str = "step",
                 no_weight_decay: Sequence[str] = ()):
        super().__init__()
        in_features, num_classes = positive_int("model.in_features", in_features), positive_int("model.num_classes", num_classes)
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(in_features, num_classes))


class MLP(_TabularClassifier):
    """Multilayer perceptron with ReLU hidden layers (two by default, as the OGA paper's Section 4)."""

    def __init__(self, in_features: int = 2, hidden: tuple[int, ...] = (32, 32), num_classes: int = 2,
                 optimizer: OptimizerFactory = partial(torch.optim.Adam, lr=0.01, weight_decay=1e-3),
                 scheduler: SchedulerFactory | None = None, scheduler_interval: str = "step",
                 no_weight_decay: Sequence[str] = ()):
        super().__init__()
        hidden = layer_widths("model.hidden", hidden)
        in_features, num_classes = positive_int("model.in_features", in_features), positive_int("model.num_classes", num_classes)
        self.save_hyperparameters()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)


class SigmoidMLP(_TabularClassifier):
    """Binary MLP with one sigmoid output and BCE loss: the OGA authors' Table 1 model (``synthetic/deep_model.py``).

    ``deep_model.py:11-40`` builds ``Linear(2,2) -> ReLU -> Linear(2,2) -> ReLU -> Linear(2,1,bias=False) -> Sigmoid``
    and trains it with ``nn.BCELoss``; ``hidden`` and ``output_bias`` default to that. The score ``z`` of class 1 is
    returned as the logits ``[0, z]``, so the cross entropy that :class:`GradsiftModule` trains and tests on equals
    the BCE of ``sigmoid(z)``, the softmax is ``[1 - p, p]`` (the authors' ``convert_binary_probs`` for cleanlab),
    and argmax is ``p > 0.5``. ``per_sample_loss`` is the BCE itself (``binary_cross_entropy_with_logits``, the
    stable form of ``BCELoss(sigmoid(z))``), whose gradient w.r.t. the last weight is ``(p - y) h``.

    Args:
        in_features: input width.
        hidden: hidden widths (ReLU after each).
        output_bias: whether the output layer has a bias (the authors': none).
        optimizer: optimizer partial (the authors': Adam lr 1e-3, weight decay 1e-4).
        scheduler: scheduler partial or None.
        scheduler_interval: ``step`` or ``epoch``.
        no_weight_decay: parameter kinds without weight decay.
    """

    def __init__(self, in_features: int = 2, hidden: tuple[int, ...] = (2, 2), output_bias: bool = False,
                 optimizer: OptimizerFactory = partial(torch.optim.Adam, lr=1e-3, weight_decay=1e-4),
                 scheduler: SchedulerFactory | None = None, scheduler_interval: str = "step",
                 no_weight_decay: Sequence[str] = ()):
        super().__init__()
        self.save_hyperparameters()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 1, bias=output_bias))
        self.net = nn.Sequential(*layers)

    def logits(self, batch: dict) -> torch.Tensor:
        """``[0, z]`` per sample: softmax ``[1 - sigmoid(z), sigmoid(z)]``."""
        z = self.net(batch["x"])
        return torch.cat([torch.zeros_like(z), z], dim=1)

    def per_sample_loss(self, batch: dict) -> torch.Tensor:
        """BCE of ``sigmoid(z)`` against the 0/1 ``label``, one per sample."""
        z = self.net(batch["x"]).squeeze(1)
        return F.binary_cross_entropy_with_logits(z, batch["label"].to(z.dtype), reduction="none")
