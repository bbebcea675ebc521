"""Image classifier: a backbone (``gradsift.models.resnet``) trained with the recipe of :mod:`gradsift.models.optim`.

The recipe is ``model.optimizer`` / ``model.scheduler``.

Recipes (conf/model/*.yaml, conf/experiment/*.yaml): the OGA paper's CIFAR-N training (B.2.1: batch 128, SGD lr
0.1, momentum 0.9, weight decay 5e-4, 100 epochs; lr / 10 after 60% of training) is ``MultiStepLR`` with
``milestones: [0.6]`` (``model/scheduler=multistep``; the authors' code sets it per epoch, ``milestones: [60]`` with
``scheduler_interval: epoch``: ``model/scheduler=multistep_epochs``); the dropout paper's ResNet-9 (Table 8: SGD-M,
peak lr 0.4, wd 5e-4, linear schedule, 24 epochs) is ``linear_warmup_decay`` with ``warmup: 0.2``
(``model/scheduler=triangular``); short bf16 runs use ``OneCycleLR`` (``model/scheduler=onecycle``).
``channels_last`` keeps weights and inputs in NHWC, which tensor cores prefer under bf16.

Speed options (docs/BENCHMARKS.md, "Training throughput"): the optimizer's ``fused`` / ``foreach`` pick torch's SGD
kernels (``model.optimizer.fused=true``: one kernel for the whole update); ``compile`` runs the training forward
through ``torch.compile`` (``true`` or a mode such as ``max-autotune-no-cudagraphs``; evaluation and gradient
gathering stay eager); ``cuda_graph`` captures the whole training step as a CUDA graph on CUDA (needs a fused
optimizer; see :mod:`gradsift.models.train_step`).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import nn

from gradsift.models.base import GradsiftModule
from gradsift.models.optim import OptimizerFactory, SchedulerFactory, TrainingRecipe

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class ImageClassifier(TrainingRecipe, GradsiftModule):
    """Wraps ``backbone`` (an ``nn.Module`` mapping [B,3,H,W] -> [B,classes]); ``logits`` reads ``batch["x"]``.

    ``optimizer``/``scheduler``/``scheduler_interval``/``no_weight_decay``: the training recipe
    (:mod:`gradsift.models.optim`); the defaults are the OGA CIFAR-N recipe, lr / 10 after 60% of the optimizer steps.
    ``compile`` and ``cuda_graph``: the speed options of the module docstring.
    """

    def __init__(self, backbone: nn.Module,
                 optimizer: OptimizerFactory = partial(torch.optim.SGD, lr=0.1, momentum=0.9, weight_decay=5e-4),
                 scheduler: SchedulerFactory | None = partial(torch.optim.lr_scheduler.MultiStepLR,
                                                              milestones=(0.6,), gamma=0.1),
                 scheduler_interval: str = "step", no_weight_decay: Sequence[str] = (), channels_last: bool = False,
                 compile: bool | str = False, cuda_graph: bool = False):
        super().__init__()
        if compile is not False and compile is not True and compile not in COMPILE_MODES:
            raise ValueError(f"model.compile={compile!r}; expected false, true or one of {COMPILE_MODES}")
        if cuda_graph and compile in ("reduce-overhead", "max-autotune"):
            raise ValueError(f"model.compile={compile} makes CUDA graphs of its own; with model.cuda_graph=true use "
                             "model.compile=true or max-autotune-no-cudagraphs")
        self.save_hyperparameters(ignore=["backbone"])
        self.backbone = backbone.to(memory_format=torch.channels_last) if channels_last else backbone
        self.use_cuda_graph(cuda_graph)
        # the compiled backbone is kept out of the module tree (and so out of state_dict): it shares the weights
        self.__dict__["_compiled_backbone"] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the backbone."""
        # channels_last inputs only while training: torch.func's vmap (the gradient engine's fallback for layers
        # without a hook rule, e.g. BatchNorm) cannot clone channels_last tensors
        if self.hparams.channels_last and x.dim() == 4 and self.training:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.training and self.hparams.compile:
            return self._compiled()(x)
        return self.backbone(x)

    def _compiled(self):
        if self._compiled_backbone is None:
            mode = None if self.hparams.compile is True else self.hparams.compile
            self.__dict__["_compiled_backbone"] = torch.compile(self.backbone, mode=mode)
        return self._compiled_backbone

    def logits(self, batch: dict) -> torch.Tensor:
        """Logits of ``batch['x']``."""
        return self(batch["x"])
