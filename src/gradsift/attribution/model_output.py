"""Model output functions other than the loss, for methods that differentiate something else (TRAK).

The engine differentiates ``module.per_sample_loss``; :func:`margin_output` swaps that method, for the duration of a
``with`` block, for TRAK's classification output ``f(z) = log(p_y / (1 - p_y)) = logit_y - logsumexp_{j != y} logit_j``
(Park et al. 2023 Sec. 3.3; traker's ``ImageClassificationModelOutput``), negated so that it stays a loss (lower =
better fit). Parameter names and hook rules are unchanged, so the same engine, compressors and stores apply.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

#: what ``GradientSet.meta["model_output"]`` says for gradients gathered inside :func:`margin_output`
MARGIN = "margin"


def negative_margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``-(logit_y - logsumexp_{j != y} logit_j)`` per row, computed stably (``-log(p_y / (1 - p_y))``)."""
    correct = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], float("-inf"))
    return others.logsumexp(-1) - correct


@contextmanager
def margin_output(module: nn.Module) -> Iterator[nn.Module]:
    """Within the block, ``module.per_sample_loss(batch)`` is :func:`negative_margin` of ``module.logits(batch)``.

    Args:
        module: a classifier with ``logits(batch)`` and labels in ``batch["label"]``.

    Yields:
        The same module.
    """
    if not callable(getattr(module, "logits", None)):
        raise ValueError(f"TRAK's margin output needs module.logits(batch), which {type(module).__name__} does not "
                         "have (classification only)")

    def per_sample_loss(batch: dict) -> torch.Tensor:
        logits = module.logits(batch)
        return negative_margin(logits.to(torch.promote_types(logits.dtype, torch.float32)), batch["label"])

    module.per_sample_loss = per_sample_loss
    try:
        yield module
    finally:
        del module.per_sample_loss


__all__ = ["margin_output", "negative_margin", "MARGIN"]
