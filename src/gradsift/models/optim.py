"""Training recipes as data: the optimizer and the learning-rate schedule are Hydra ``_partial_`` objects.

``model.optimizer`` is a partial of any torch optimizer (``{_target_: torch.optim.SGD, _partial_: true, lr: 0.1,
momentum: 0.9}``; ``fused``/``foreach`` are plain keys); gradsift passes it the trainable parameters, in two groups
when ``model.no_weight_decay`` names ``norm`` (parameters of normalisation layers) and/or ``bias`` (every bias):
those get ``weight_decay: 0``.

``model.scheduler`` is a partial of a torch scheduler (or of :func:`linear_warmup_decay`) or null, and
``model.scheduler_interval`` is ``step`` or ``epoch``: when Lightning steps the scheduler and the unit of every count
below (the options in conf/model/scheduler/ set both). gradsift passes the scheduler the optimizer and fills in what
depends on the trainer:

- Training lengths left out are the whole training (``trainer.estimated_stepping_batches`` steps or
  ``trainer.max_epochs`` epochs): ``total_steps`` of ``OneCycleLR`` (unless ``epochs`` is given) and of
  :func:`linear_warmup_decay`, ``T_max`` of ``CosineAnnealingLR``, ``total_iters`` of ``LinearLR``/``PolynomialLR``.
- Counts (``milestones``, ``step_size``, ``T_max``, ``T_0``, ``total_iters``, ``total_steps``, ``warmup``) are
  integers (steps or epochs, as given) or fractions of training in (0, 1): ``milestones: [0.6]`` of 100 epochs is
  epoch 60; a fraction becomes ``int(fraction * length)``, at least 1 (``warmup`` may round to 0).
- ``max_lr`` of ``OneCycleLR`` left out is the optimizer's lr (per parameter group).
- ``SequentialLR`` takes ``schedulers`` as a list of partials; each is filled over its own segment between the
  ``milestones`` (linear warm-up then cosine: ``LinearLR`` + ``CosineAnnealingLR``).

The learning rates live in the optimizer's parameter groups only (torch schedulers update them in place, also when
they are tensors), so nothing here holds a copy.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

from omegaconf import DictConfig, ListConfig
from torch import nn
from torch.optim import Optimizer
from torch.optim import lr_scheduler as sched

OptimizerFactory = Callable[..., Optimizer]
SchedulerFactory = Callable[..., Any]

INTERVALS = ("step", "epoch")
#: model.no_weight_decay entries
NO_DECAY_KINDS = ("norm", "bias")
#: normalisation layers of torch; classes of other libraries count when their name ends in "Norm" (LlamaRMSNorm)
NORM_LAYERS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.InstanceNorm1d,
               nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.LocalResponseNorm)
#: keywords that may be counts or fractions of training; the value is the smallest count a fraction becomes
COUNT_KEYS = {"milestones": 1, "step_size": 1, "T_max": 1, "T_0": 1, "total_iters": 1, "total_steps": 1, "warmup": 0}


class _WarmupDecay:
    """Multiplier of :func:`linear_warmup_decay` (a class, not a lambda, so that the scheduler pickles)."""

    def __init__(self, warmup: int, total_steps: int):
        self.warmup, self.total_steps = warmup, total_steps

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return step / self.warmup
        return max(0.0, (self.total_steps - step) / max(1, self.total_steps - self.warmup))


def linear_warmup_decay(optimizer: Optimizer, total_steps: int, warmup: int = 0,
                        last_epoch: int = -1) -> sched.LambdaLR:
    """lr rises linearly from 0 to the optimizer's lr over ``warmup`` steps, then falls linearly to 0 at the end.

    transformers' ``get_linear_schedule_with_warmup`` (the GLUE LoRA recipe: warm-up 6%); with ``warmup`` 20% it
    is the triangular 0 -> peak -> 0 schedule of the TRAK/ffcv ResNet-9 (dropout paper Table 8).

    Args:
        optimizer: the optimizer whose lrs are scaled.
        total_steps: training length (filled in by :func:`build_scheduler` when left out).
        warmup: warm-up length in the scheduler's interval (:func:`build_scheduler` converts a fraction).
        last_epoch: as torch's ``LambdaLR``.

    Returns:
        A ``LambdaLR``.
    """
    if total_steps < 1 or not 0 <= warmup <= total_steps:
        raise ValueError(f"linear_warmup_decay needs total_steps >= 1 and 0 <= warmup <= total_steps; got "
                         f"total_steps={total_steps}, warmup={warmup}")
    return sched.LambdaLR(optimizer, _WarmupDecay(warmup, total_steps), last_epoch)


#: schedulers whose keyword is the training length, filled in when left out
LENGTH_KEY: dict[Callable, str] = {sched.OneCycleLR: "total_steps", sched.CosineAnnealingLR: "T_max",
                                   sched.LinearLR: "total_iters", sched.PolynomialLR: "total_iters",
                                   linear_warmup_decay: "total_steps"}


def _plain(value: Any) -> Any:
    """OmegaConf lists and dicts (what Hydra passes for ``betas: [0.9, 0.95]``) as Python lists and dicts."""
    if isinstance(value, ListConfig):
        return [_plain(v) for v in value]
    if isinstance(value, DictConfig):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _parts(factory: Callable, where: str) -> tuple[Callable, dict[str, Any]]:
    """``(target, keyword arguments as plain Python)`` of a partial (or of a plain callable). The partial itself is
    what gets called (Hydra's ``_partial_`` objects authorise their target when called), with these keywords."""
    if getattr(factory, "args", ()):
        raise ValueError(f"{where}: give the arguments by name (no _args_); got {factory.args!r}")
    kwargs = getattr(factory, "keywords", None) or {}
    return getattr(factory, "func", factory), {k: _plain(v) for k, v in kwargs.items()}


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, NORM_LAYERS) or type(module).__name__.endswith("Norm")


def parameter_groups(module: nn.Module, no_weight_decay: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The trainable parameters of ``module`` as optimizer groups: one group, or two when ``no_weight_decay`` names
    ``norm`` and/or ``bias`` (that group has ``weight_decay`` 0; the other takes the optimizer's own value).

    Args:
        module: the model.
        no_weight_decay: the ``model.no_weight_decay`` entries, a subset of ``("norm", "bias")``.

    Returns:
        ``[{"params": [...]}]`` or ``[{"params": decayed}, {"params": exempt, "weight_decay": 0.0}]`` without
        empty groups.
    """
    kinds = set(no_weight_decay or ())
    if not kinds <= set(NO_DECAY_KINDS):
        raise ValueError(f"model.no_weight_decay={sorted(kinds)}: expected a subset of {list(NO_DECAY_KINDS)}")
    exempt: set[int] = set()
    for mod in module.modules():
        for name, p in mod.named_parameters(recurse=False):
            if ("norm" in kinds and _is_norm(mod)) or ("bias" in kinds and name == "bias"):
                exempt.add(id(p))
    trainable = [p for p in module.parameters() if p.requires_grad]
    if not kinds:
        return [{"params": trainable}]
    groups = [{"params": [p for p in trainable if id(p) not in exempt]},
              {"params": [p for p in trainable if id(p) in exempt], "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(module: nn.Module, optimizer: OptimizerFactory, no_weight_decay: Sequence[str] = ()) -> Optimizer:
    """``optimizer(parameter groups of module)``: the ``model.optimizer`` partial applied to the trainable parameters.

    Args:
        module: the model.
        optimizer: a partial of a torch optimizer (every argument but the parameters).
        no_weight_decay: see :func:`parameter_groups`.

    Returns:
        The optimizer.
    """
    if not callable(optimizer):
        raise TypeError(f"model.optimizer must be a Hydra object with _partial_: true (e.g. _target_: "
                        f"torch.optim.SGD), got {optimizer!r}")
    _, kwargs = _parts(optimizer, "model.optimizer")
    return optimizer(parameter_groups(module, no_weight_decay), **kwargs)


def training_length(trainer: Any, interval: str) -> int:
    """Training length in the scheduler's ``interval``: optimizer steps or epochs of ``trainer``."""
    if interval == "step":
        n, what = trainer.estimated_stepping_batches, "trainer.max_epochs or trainer.max_steps"
    else:
        n, what = trainer.max_epochs, "trainer.max_epochs (interval: epoch counts epochs)"
    if n is None or not math.isfinite(n) or n < 1:
        raise ValueError(f"model.scheduler needs a finite training length in {interval}s, got {n}: set {what}")
    return int(n)


def _count(value: Any, length: Callable[[], int], key: str, minimum: int) -> Any:
    """An integer count as given; a fraction in (0, 1) of ``length()`` as ``max(minimum, int(value * length()))``."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_count(v, length, key, minimum) for v in value]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{key}={value!r}: expected integer counts or fractions of training in (0, 1)")
    if isinstance(value, int):
        return value
    if not 0 < value < 1:
        raise ValueError(f"{key}={value!r}: a float is a fraction of training and must lie in (0, 1); give an "
                         "integer for a number of steps or epochs")
    return max(minimum, int(value * length()))


def _build(optimizer: Optimizer, factory: SchedulerFactory, length: Callable[[], int], where: str) -> Any:
    """``factory(optimizer, **filled keywords)``; ``length()`` is the training length in the scheduler's interval
    (called only when a keyword needs it, so a scheduler given in plain counts needs no finite training)."""
    func, kwargs = _parts(factory, where)
    for key, minimum in COUNT_KEYS.items():
        if kwargs.get(key) is not None:
            kwargs[key] = _count(kwargs[key], length, f"{where}.{key}", minimum)
    length_key = LENGTH_KEY.get(func)
    by_epochs = func is sched.OneCycleLR and kwargs.get("epochs") is not None  # OneCycleLR(epochs, steps_per_epoch)
    if length_key and kwargs.get(length_key) is None and not by_epochs:
        kwargs[length_key] = length()
    if func is sched.OneCycleLR and kwargs.get("max_lr") is None:
        kwargs["max_lr"] = [group["lr"] for group in optimizer.param_groups]
    if func is sched.SequentialLR:
        milestones, parts = list(kwargs.get("milestones", [])), list(kwargs.get("schedulers", []))
        if len(parts) != len(milestones) + 1:
            raise ValueError(f"{where}: SequentialLR needs one scheduler more than milestones; got {len(parts)} "
                             f"schedulers and milestones {milestones}")
        bounds = [0, *milestones, None]

        def segment(i: int) -> Callable[[], int]:
            return lambda: max(1, (length() if bounds[i + 1] is None else bounds[i + 1]) - bounds[i])

        kwargs["schedulers"] = [_build(optimizer, part, segment(i), f"{where}.schedulers[{i}]")
                                for i, part in enumerate(parts)]
    return factory(optimizer, **kwargs)


def build_scheduler(optimizer: Optimizer, scheduler: SchedulerFactory, interval: str,
                    trainer: Any) -> dict[str, Any]:
    """The ``model.scheduler`` partial built on ``optimizer``, with the trainer-dependent arguments filled in.

    Args:
        optimizer: the optimizer from :func:`build_optimizer`.
        scheduler: a partial of a torch scheduler (or :func:`linear_warmup_decay`).
        interval: ``model.scheduler_interval``, ``step`` or ``epoch``.
        trainer: anything with ``estimated_stepping_batches`` and ``max_epochs`` (a Lightning ``Trainer``).

    Returns:
        Lightning's lr-scheduler config ``{"scheduler": ..., "interval": "step" | "epoch"}``.
    """
    if not callable(scheduler):
        raise TypeError(f"model.scheduler must be null or a Hydra object with _partial_: true (e.g. _target_: "
                        f"torch.optim.lr_scheduler.MultiStepLR), got {scheduler!r}")
    if interval not in INTERVALS:
        raise ValueError(f"model.scheduler_interval={interval!r}: expected one of {list(INTERVALS)}")
    length = functools.cache(lambda: training_length(trainer, interval))
    return {"scheduler": _build(optimizer, scheduler, length, "model.scheduler"), "interval": interval}


class TrainingRecipe:
    """Mixin giving a LightningModule ``configure_optimizers`` from its hyper-parameters ``optimizer`` (a partial),
    ``scheduler`` (a partial or None), ``scheduler_interval`` and ``no_weight_decay`` (the module docstring says
    what each means); put it first among the bases (``class MyModel(TrainingRecipe, GradsiftModule)``) and call
    ``save_hyperparameters()`` in ``__init__``."""

    def configure_optimizers(self) -> Optimizer | dict[str, Any]:
        hp = self.hparams
        optimizer = build_optimizer(self, hp.optimizer, hp.no_weight_decay)
        if hp.scheduler is None:
            return optimizer
        return {"optimizer": optimizer,
                "lr_scheduler": build_scheduler(optimizer, hp.scheduler, hp.scheduler_interval, self.trainer)}
