"""A pretrained encoder fine-tuned with LoRA for binary GLUE tasks (DataInf / OGA Sec. 6 / dropout paper Sec. 4.1).

The setup of OGA Appendix B.2.2 and Table 8 of the dropout paper: PEFT LoRA on every attention value matrix,
rank 4 (2 or 8 in the dropout paper), dropout 0.05, AdamW lr 3e-4 without weight decay, linear schedule, batch 32,
10 epochs. As in DataInf, ``lora_alpha`` defaults to the rank and the classification head is trained too
(``train_head``); attribution can still be restricted to the adapters with ``parameters: lora``. The recipe is
``optimizer``/``scheduler``/``scheduler_interval``/``no_weight_decay`` (:mod:`gradsift.models.optim`), by default
AdamW and a linear decay after a 6% linear warm-up (transformers' ``get_linear_schedule_with_warmup``).

``pooling``: ``cls`` (the transformers head: BERT reads [CLS] through its pretrained ``pooler``, RoBERTa's and
MPNet's heads read the first token) or ``mean`` (the head reads the attention-masked mean of the last hidden states instead; BERT's
pooler is skipped). Sentence-transformers checkpoints such as all-MiniLM-L6-v2 and all-mpnet-base-v2 were trained
mean-pooled, and the ``pooler`` weights they ship were never trained with them.

``target_modules`` takes the BERT/RoBERTa names ``query``, ``key``, ``value`` for every architecture in
:data:`LORA_TARGET_ALIASES` (MPNet calls them ``q``, ``k``, ``v``), or any module names peft accepts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoConfig, AutoModelForSequenceClassification, PretrainedConfig

from gradsift.models.base import GradsiftModule
from gradsift.hub import resolve_model
from gradsift.models.optim import OptimizerFactory, SchedulerFactory, TrainingRecipe, linear_warmup_decay


class SequenceClassifier(TrainingRecipe, GradsiftModule):
    """``AutoModelForSequenceClassification`` + LoRA adapters; ``logits(batch)`` reads the tokenizer's keys.

    ``model`` is a name for :func:`gradsift.hub.resolve_model` (``minilm``, ``roberta-large``, a
    directory); ``config`` (a ``PretrainedConfig`` or a dict with ``model_type``) instead builds a randomly
    initialised model without any download, for tests.
    """

    def __init__(self, model: str | None = "minilm", config: PretrainedConfig | Mapping[str, Any] | None = None,
                 num_labels: int = 2, lora_rank: int = 4, lora_alpha: float | None = None, lora_dropout: float = 0.05,
                 target_modules: Sequence[str] = ("value",), train_head: bool = True,
                 optimizer: OptimizerFactory = partial(torch.optim.AdamW, lr=3e-4, weight_decay=0.0),
                 scheduler: SchedulerFactory | None = partial(linear_warmup_decay, warmup=0.06),
                 scheduler_interval: str = "step", no_weight_decay: Sequence[str] = (),
                 attn_implementation: str | None = None, pooling: str = "cls", seed: int = 0):
        super().__init__()
        self.save_hyperparameters(ignore=["config"])
        if (model is None) == (config is None):
            raise ValueError("SequenceClassifier needs exactly one of model= (a name or directory) and config= "
                             f"(a PretrainedConfig or dict with model_type); got model={model!r}, config={config!r}")
        if pooling not in ("cls", "mean"):
            raise ValueError(f"model.pooling must be 'cls' or 'mean', got {pooling!r}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # the new head and the LoRA A matrices come from the seed, not the global RNG
            backbone = build_backbone(model, config, num_labels, attn_implementation)
            lora = LoraConfig(task_type="SEQ_CLS", r=lora_rank, lora_alpha=lora_alpha or lora_rank,
                              lora_dropout=lora_dropout, target_modules=lora_targets(backbone, target_modules))
            self.net = get_peft_model(backbone, lora)
        model_type = backbone.config.model_type
        if pooling == "mean" and model_type not in MEAN_POOLING_HEADS:
            raise ValueError(f"model.pooling=mean is implemented for {sorted(MEAN_POOLING_HEADS)} heads, not "
                             f"{model_type!r}; use model.pooling=cls")
        # from_pretrained returns the backbone in eval mode and Lightning (>= 2.2) keeps submodule modes, which would
        # switch off the encoder's and LoRA's dropout during fine-tuning
        self.net.train()
        if not train_head:
            for name, p in self.net.named_parameters():
                if "lora_" not in name:
                    p.requires_grad_(False)

    def logits(self, batch: dict) -> torch.Tensor:
        """Classifier logits ``[B, num_labels]`` with an additive attention mask."""
        # A 2-D padding mask makes transformers branch on its content (``mask.all()``), which torch.func.vmap
        # cannot trace; the equivalent additive [B, 1, 1, L] mask is used as given by every attention backend.
        mask = batch["attention_mask"]
        dtype = self.net.get_input_embeddings().weight.dtype
        additive = (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min
        inputs = {k: batch[k] for k in ("input_ids", "token_type_ids") if k in batch}
        if self.hparams.pooling == "cls":
            return self.net(**inputs, attention_mask=additive).logits
        task_model = self.net.base_model.model  # the AutoModelForSequenceClassification under the LoRA wrapper
        hidden = task_model.base_model(**inputs, attention_mask=additive).last_hidden_state
        weights = mask.to(hidden.dtype)[:, :, None]
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return _head(task_model, pooled)


MEAN_POOLING_HEADS = {"bert", "roberta", "mpnet"}  # classifier heads whose layers _head knows (tests/models)

#: model_type -> {BERT/RoBERTa attention name: this architecture's module name}
LORA_TARGET_ALIASES: dict[str, dict[str, str]] = {"mpnet": {"query": "q", "key": "k", "value": "v"}}


def lora_targets(backbone: torch.nn.Module, names: Sequence[str]) -> list[str]:
    """``model.target_modules`` in the backbone's own module names (aliases mapped); each must name a module."""
    model_type = backbone.config.model_type
    aliases = LORA_TARGET_ALIASES.get(model_type, {})
    targets = [aliases.get(n, n) for n in names]
    modules = [name for name, _ in backbone.named_modules()]
    unknown = [n for n, t in zip(names, targets) if not any(m == t or m.endswith("." + t) for m in modules)]
    if unknown:
        linear = sorted({name.rsplit(".", 1)[-1] for name, m in backbone.named_modules()
                         if isinstance(m, torch.nn.Linear)})
        raise ValueError(f"model.target_modules {unknown} name no module of this {model_type!r} model; its linear "
                         f"layers are named {linear}" + (f" (aliases: {aliases})" if aliases else ""))
    return targets


def _head(task_model: torch.nn.Module, pooled: torch.Tensor) -> torch.Tensor:
    """The task model's own classification head applied to a pooled [B, H] representation."""
    head = task_model.classifier  # PEFT wraps it (ModulesToSaveWrapper) to train a copy; the wrapper dispatches
    if isinstance(getattr(head, "original_module", head), torch.nn.Linear):  # BERT-style: dropout, linear
        return head(task_model.dropout(pooled))
    # RoBERTa- and MPNet-style heads take [B, L, H] and read position 0 themselves (dropout, dense, tanh, dropout,
    # out_proj)
    return head(pooled[:, None, :])


def build_backbone(model: str | None, config: PretrainedConfig | Mapping[str, Any] | None, num_labels: int,
                   attn_implementation: str | None = None) -> torch.nn.Module:
    """``AutoModelForSequenceClassification`` from pretrained files (fp32, also from bf16 exports) or a config."""
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    if config is None:
        return AutoModelForSequenceClassification.from_pretrained(resolve_model(model), num_labels=num_labels,
                                                                  dtype=torch.float32, **kwargs)
    if isinstance(config, Mapping):
        config = dict(config)
        if "model_type" not in config:
            raise ValueError("model.config must name its model_type (e.g. 'roberta', 'bert')")
        config = AutoConfig.for_model(config.pop("model_type"), **config)
    config.num_labels = num_labels
    return AutoModelForSequenceClassification.from_config(config, **kwargs)
