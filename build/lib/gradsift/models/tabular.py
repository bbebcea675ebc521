"""Small models for the synthetic experiments: logistic regression (convex) and an MLP with two ReLU layers."""

from __future__ import annotations

import torch
from torch import nn

from gradsift.models.base import GradsiftModule


class _TabularClassifier(GradsiftModule):
    def __init__(self, lr: float, weight_decay: float, optimizer: str):
        super().__init__()
        self.lr, self.weight_decay, self.optimizer_name = lr, weight_decay, optimizer

    def logits(self, batch: dict) -> torch.Tensor:
        return self.net(batch["x"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def configure_optimizers(self):
        opts = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD, "lbfgs": torch.optim.LBFGS}
        if self.optimizer_name not in opts:
            raise ValueError(f"model.optimizer={self.optimizer_name!r}; expected one of {sorted(opts)}")
        if self.optimizer_name == "lbfgs":
            return torch.optim.LBFGS(self.parameters(), lr=self.lr)
        return opts[self.optimizer_name](self.parameters(), lr=self.lr, weight_decay=self.weight_decay)


class LogisticRegression(_TabularClassifier):
    """Multinomial logistic regression (one Linear layer): strictly convex with weight decay > 0."""

    def __init__(self, in_features: int = 2, num_classes: int = 2, lr: float = 0.1, weight_decay: float = 1e-2,
                 optimizer: str = "adam"):
        super().__init__(lr, weight_decay, optimizer)
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(in_features, num_classes))


class MLP(_TabularClassifier):
    """Multilayer perceptron with ReLU hidden layers (two by default, as the OGA paper's Section 4)."""

    def __init__(self, in_features: int = 2, hidden: tuple[int, ...] = (32, 32), num_classes: int = 2,
                 lr: float = 0.01, weight_decay: float = 1e-3, optimizer: str = "adam"):
        super().__init__(lr, weight_decay, optimizer)
        self.save_hyperparameters()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)
