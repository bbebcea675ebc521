"""A causal language model fine-tuned in full or with LoRA; loss = NLL of the response tokens only.

Recipes (conf/model/*.yaml): GPT-2 on WikiText and Pythia-1.4B / LLaMA-3.2-1B on OpenWebText, full fine-tuning
with AdamW (Table 8 of the dropout paper); Llama-2-13B-chat with LoRA r=8 on query/value, lr 3e-4 (OGA Appendix
B.2.3). Batches come from :mod:`gradsift.data.llm_benchmarks` / :mod:`gradsift.data.text_corpus`: ``input_ids``
right-padded, ``labels`` = -100 on prompt tokens and padding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from torchmetrics.text import Perplexity
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from gradsift.hub import pretrained_source
from gradsift.models.optim import OptimizerFactory, SchedulerFactory, TrainingRecipe


def response_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample summed next-token NLL and token count over positions whose label is not -100."""
    shift_logits, shift_labels = logits[:, :-1].float(), labels[:, 1:]
    nll = F.cross_entropy(shift_logits.transpose(1, 2), shift_labels, ignore_index=-100, reduction="none")
    return nll.sum(-1), (shift_labels != -100).sum(-1)


class CausalLM(TrainingRecipe, pl.LightningModule):
    """``AutoModelForCausalLM`` (optionally wrapped with PEFT LoRA) with a response-only NLL loss.

    Attributable through ``per_sample_loss`` alone: it has no class ``logits``, so it is a plain LightningModule,
    not a :class:`gradsift.models.base.GradsiftModule` (the classifier base), and probability-based scorers skip it.

    ``model`` is a hub name, a directory or a packaged alias (``smollm2_135m``, models/pretrained_lm.py); ``config`` (a
    ``PretrainedConfig`` or a dict with ``model_type``) instead builds a random model without download, for tests.
    ``lora_rank=None`` means full fine-tuning; otherwise LoRA on ``target_modules`` (query/value: ``c_attn`` for
    GPT-2, ``query_key_value`` for GPT-NeoX, ``q_proj``/``v_proj`` for Llama). ``optimizer``/``scheduler``/
    ``scheduler_interval``/``no_weight_decay``: the training recipe (:mod:`gradsift.models.optim`), by default AdamW
    without a schedule.
    """

    def __init__(self, model: str | None = "gpt2", config: PretrainedConfig | Mapping[str, Any] | None = None,
                 lora_rank: int | None = None, lora_alpha: float | None = None, lora_dropout: float = 0.05,
                 target_modules: Sequence[str] = ("c_attn",),
                 optimizer: OptimizerFactory = partial(torch.optim.AdamW, lr=5e-5, weight_decay=0.01),
                 scheduler: SchedulerFactory | None = None, scheduler_interval: str = "step",
                 no_weight_decay: Sequence[str] = (), dtype: str = "float32",
                 attn_implementation: str | None = "eager", gradient_checkpointing: bool = False, seed: int = 0):
        super().__init__()
        self.save_hyperparameters(ignore=["config"])
        if (model is None) == (config is None):
            raise ValueError("CausalLM needs exactly one of model= (hub name or directory) and config= (a "
                             f"PretrainedConfig or dict with model_type); got model={model!r}, config={config!r}")
        torch.manual_seed(seed)
        kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
        torch_dtype = getattr(torch, dtype, None)
        if not isinstance(torch_dtype, torch.dtype):
            raise ValueError(f"model.dtype={dtype!r} is not a torch dtype name (float32, bfloat16, float16)")
        if config is not None:
            if isinstance(config, Mapping):
                config = dict(config)
                if "model_type" not in config:
                    raise ValueError("model.config must name its model_type (gpt2, gpt_neox, llama)")
                config = AutoConfig.for_model(config.pop("model_type"), **config)
            net = AutoModelForCausalLM.from_config(config, dtype=torch_dtype, **kwargs)
        else:
            path, extra = pretrained_source(model)
            net = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, **extra, **kwargs)
        if gradient_checkpointing:
            net.gradient_checkpointing_enable()
        if lora_rank is not None:
            lora = LoraConfig(task_type="CAUSAL_LM", r=lora_rank, lora_alpha=lora_alpha or lora_rank,
                              lora_dropout=lora_dropout, target_modules=list(target_modules))
            net = get_peft_model(net, lora)
        self.net = net
        self.test_perplexity = Perplexity(ignore_index=-100)

    def forward(self, batch: dict) -> torch.Tensor:
        """Token logits [B, T, V].

        No attention mask is passed: padding is on the right, so the causal mask
        alone keeps it out of every scored position (exact), and ``torch.func.vmap`` can trace the call.
        Position ids are given per sample ([B, T], not broadcast [1, T]) so that a learned position embedding
        (GPT-2's ``wpe``) sees every sample's positions and the gradient engine's hooks get per-sample rows.
        """
        ids = batch["input_ids"]
        positions = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
        return self.net(input_ids=ids, position_ids=positions).logits

    def per_sample_loss(self, batch: dict) -> torch.Tensor:
        """Mean NLL over each sample's response tokens (prompt and padding masked); [B]."""
        total, count = response_nll(self(batch), batch["labels"])
        return total / count.clamp(min=1)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        """Mean per-sample loss, logged as ``train/loss``."""
        loss = self.per_sample_loss(batch).mean()
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(batch["labels"]))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """Log ``val/loss``, the mean NLL per scored token."""
        total, count = response_nll(self(batch), batch["labels"])
        self.log("val/loss", total.sum() / count.sum().clamp(min=1), batch_size=len(batch["labels"]))

    def test_step(self, batch: dict, batch_idx: int) -> None:
        """Test perplexity = exp(total NLL / total scored tokens) over the test split (dropout Tables 3-5)."""
        logits = self(batch)
        self.test_perplexity.update(logits[:, :-1].float(), batch["labels"][:, 1:])
        self.log("test/perplexity", self.test_perplexity, on_step=False, on_epoch=True)
