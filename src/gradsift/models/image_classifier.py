"""Image classifier: a backbone (``gradsift.models.resnet``) trained with SGD and a step, one-cycle or linear schedule.

Recipes: the OGA paper's CIFAR-N training (B.2.1: batch 128, SGD lr 0.1, momentum 0.9, weight decay 5e-4,
100 epochs; the CIFAR-N authors' code divides the lr by 10 after 60% of training) is ``schedule=multistep``;
the dropout paper's ResNet-9 (Table 8: SGD-M, peak lr 0.4, wd 5e-4, linear schedule, 24 epochs) is
``schedule=linear``; short bf16 runs use ``schedule=onecycle``. ``channels_last`` keeps weights and inputs in
NHWC, which tensor cores prefer under bf16.

Speed options (docs/BENCHMARKS.md, "Training throughput"): ``fused`` / ``foreach`` pick torch's SGD kernels
(``fused=True``: one kernel for the whole update); ``compile`` runs the training forward through ``torch.compile``
(``true`` or a mode such as ``max-autotune-no-cudagraphs``; evaluation and gradient gathering stay eager);
``cuda_graph`` captures the whole training step as a CUDA graph on CUDA (needs ``fused=True``; see
:mod:`gradsift.models.train_step`).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from gradsift.models.base import GradsiftModule

SCHEDULES = ("multistep", "onecycle", "linear", "cosine", "constant")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class ImageClassifier(GradsiftModule):
    """Wraps ``backbone`` (an ``nn.Module`` mapping [B,3,H,W] -> [B,classes]); ``logits`` reads ``batch["x"]``."""

    def __init__(self, backbone: nn.Module, lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 5e-4,
                 nesterov: bool = False, schedule: str = "multistep", milestones: Sequence[float] = (0.6,),
                 gamma: float = 0.1, warmup_fraction: float = 0.25, channels_last: bool = False,
                 fused: bool | None = None, foreach: bool | None = None, compile: bool | str = False,
                 cuda_graph: bool = False):
        super().__init__()
        if schedule not in SCHEDULES:
            raise ValueError(f"model.schedule={schedule!r}; expected one of {SCHEDULES}")
        if any(not 0 < m < 1 for m in milestones):
            raise ValueError(f"model.milestones={list(milestones)} must be fractions of training in (0, 1)")
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

    def configure_optimizers(self):
        """SGD with momentum and the configured learning-rate schedule."""
        hp = self.hparams
        opt = torch.optim.SGD(self.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay,
                              nesterov=hp.nesterov, foreach=hp.foreach, fused=hp.fused)
        if hp.schedule == "constant":
            return opt
        total = max(1, int(self.trainer.estimated_stepping_batches))
        if hp.schedule == "multistep":
            # milestones are fractions of training, so the paper's [60] of 100 epochs becomes [0.6]
            steps = [max(1, int(m * total)) for m in hp.milestones]
            sched = torch.optim.lr_scheduler.MultiStepLR(opt, steps, gamma=hp.gamma)
        elif hp.schedule == "onecycle":
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=hp.lr, total_steps=total,
                                                        pct_start=hp.warmup_fraction)
        elif hp.schedule == "linear":
            # triangular: 0 -> lr over warmup_fraction of training, then back to 0 (the TRAK/ffcv ResNet-9 recipe)
            peak = max(1, int(hp.warmup_fraction * total))
            sched = torch.optim.lr_scheduler.LambdaLR(
                opt, lambda s: s / peak if s < peak else max(0.0, (total - s) / max(1, total - peak)))
        else:
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
