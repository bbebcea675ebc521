"""Small models for the synthetic experiments: logistic regression (convex) and an MLP with two ReLU layers.

The recipe is ``optimizer``/``scheduler``/``scheduler_interval``/``no_weight_decay`` (:mod:`gradsift.models.optim`):
Adam by default, full batch, no schedule; ``model/optimizer=lbfgs '~model.optimizer.weight_decay'`` trains with L-BFGS.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import nn

from gradsift.models.base import GradsiftModule
from gradsift.models.optim import OptimizerFactory, SchedulerFactory, TrainingRecipe


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
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(in_features, num_classes))


class MLP(_TabularClassifier):
    """Multilayer perceptron with ReLU hidden layers (two by default, as the OGA paper's Section 4)."""

    def __init__(self, in_features: int = 2, hidden: tuple[int, ...] = (32, 32), num_classes: int = 2,
                 optimizer: OptimizerFactory = partial(torch.optim.Adam, lr=0.01, weight_decay=1e-3),
                 scheduler: SchedulerFactory | None = None, scheduler_interval: str = "step",
                 no_weight_decay: Sequence[str] = ()):
        super().__init__()
        self.save_hyperparameters()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)
