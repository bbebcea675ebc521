"""The expensive, cached steps of a run: the trained base model, its per-sample gradients, and each retrain.

Entries live in the content-keyed :class:`~gradsift.cache.ArtifactCache` under ``cfg.paths.cache_dir``:

* ``model/<key>``: the base model (``model.pt``, ``meta.json`` with its test metrics), keyed by ``MODEL_KEYS``;
* ``base/<key>``: its gradients (``grads_train.npz``, ``grads_reference.npz`` for a reference split other than the
  training set, ``train_probs.npy``, ``hessian.npy`` when a scorer asked for it), keyed by ``BASE_KEYS``;
* ``retrain/<key>``: the test metrics of a model retrained on a kept set, keyed by (model key, kept rows).

So a sweep over scorer x trim budget trains and gathers once per seed, and changing the compressor or the reference
split re-gathers without retraining.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from gradsift import training
from gradsift.attribution.distributed import torch_process_group
from gradsift.attribution.gradient_set import GradientSet
from gradsift.attributor import Attributor
from gradsift.cache import ArtifactCache, config_hash
from gradsift.data.base import NoisyLabelDataModule
from gradsift.record import now
from gradsift.scoring.base import Scorer, ScoringInputs
from gradsift.trim import Trim

#: config sections that determine the trained base model
MODEL_KEYS = ["data", "model", "trainer", "seed"]
#: ... and, with these, its gradients
GRADIENT_KEYS = ["gradients", "compressor", "attribution"]
BASE_KEYS = MODEL_KEYS + GRADIENT_KEYS


@dataclass
class BaseArtifacts:
    """The base model's cached facts and gradients.

    Attributes:
        inputs: the scorers' inputs (training and reference gradients, probabilities, the Hessian when asked for).
        key: the gradients' cache key.
        hit: whether the gradients came from the cache.
        model_key: the base model's cache key.
        model_hit: whether the base model came from the cache.
        model_meta: the base model's ``base_test`` metrics and ``train_s``.
        meta: the gradients' ``gradients_s``, compressor state and gather world size.
    """

    inputs: ScoringInputs
    key: str
    hit: bool
    model_key: str
    model_hit: bool
    model_meta: dict
    meta: dict


def build_attributor(cfg: DictConfig, scorer: Scorer | None = None, trim: Trim | None = None,
                     probs: bool | None = None) -> Attributor:
    """The config's gradient engine (``gradients`` + ``compressor``) with ``scorer`` and ``trim``.

    Args:
        cfg: the run config.
        scorer: the scorer (checked against the compressor here); None only gathers.
        trim: the trim rule.
        probs: gather predicted probabilities (None = when the scorer needs them).

    Returns:
        An :class:`~gradsift.attributor.Attributor` with the config's reference split and seed.
    """
    engine = instantiate(cfg.gradients, compressor=instantiate(cfg.compressor))
    return Attributor(engine, scorer, trim, reference=cfg.attribution.reference, probs=probs, seed=cfg.seed)


def trained_model(cfg: DictConfig, datamodule: NoisyLabelDataModule) -> tuple[Path, dict, bool]:
    """Train the base model, or find it in the cache.

    Keyed by ``MODEL_KEYS`` only, so a sweep over gradients x compressor x scorer trains once per seed.

    Args:
        cfg: the run config.
        datamodule: the training data, set up.

    Returns:
        ``(entry folder with model.pt, meta, cache hit)``.
    """
    cache = ArtifactCache(cfg.paths.cache_dir, enabled=cfg.cache)

    def build(out: Path) -> None:
        model, test, seconds = training.fit_and_evaluate(cfg, datamodule, stage="base")
        torch.save(model.state_dict(), out / "model.pt")
        (out / "meta.json").write_text(json.dumps({"base_test": test, "train_s": seconds}, indent=2))

    path, hit = cache.get_or_create("model", config_hash(cfg, _model_keys(cfg)), build, collective=True)
    return path, json.loads((path / "meta.json").read_text()), hit


def base_artifacts(cfg: DictConfig, datamodule: NoisyLabelDataModule, hessian: bool = False) -> BaseArtifacts:
    """The trained base model's per-sample gradients (and predicted probabilities), or load them from the cache.

    Args:
        cfg: the run config.
        datamodule: the data, set up.
        hessian: also compute (once, then cached beside the gradients) the exact loss Hessian.

    Returns:
        The gradients as scorer inputs, with the cache keys and the base model's facts.
    """
    cache = ArtifactCache(cfg.paths.cache_dir, enabled=cfg.cache)
    key = config_hash(cfg, _base_keys(cfg))
    model_dir, model_meta, model_hit = trained_model(cfg, datamodule)
    attributor = build_attributor(cfg, probs=True)

    def build(out: Path) -> None:
        dist = torch_process_group()  # after a DDP/FSDP fit every rank gathers a share
        inputs = attributor.gather(training.load_model(cfg, model_dir), datamodule, dist=dist)
        inputs.train.save(str(out / "grads_train.npz"))
        if inputs.reference is not None and inputs.reference is not inputs.train:
            inputs.reference.save(str(out / "grads_reference.npz"))
        if inputs.train_probs is not None:
            np.save(out / "train_probs.npy", inputs.train_probs)
        # the model's own facts (test metrics, training time) stay in its entry: model_meta
        meta = {"gradients_s": attributor.timings["gradients_s"], "compressor": inputs.train.meta.get("compressor"),
                "key": key, "model_dir": str(model_dir), "gather_world_size": dist["world_size"] if dist else 1}
        (out / "meta.json").write_text(json.dumps(meta, indent=2))

    # collective: under a multi-process launch the other ranks take part in the distributed gather
    path, hit = cache.get_or_create("base", key, build, collective=True)
    train = GradientSet.load(str(path / "grads_train.npz"))
    reference = train if cfg.attribution.reference == "train" else None
    if (path / "grads_reference.npz").exists():
        reference = GradientSet.load(str(path / "grads_reference.npz"))
    probs = np.load(path / "train_probs.npy") if (path / "train_probs.npy").exists() else None
    extra = {"hessian": _cached_hessian(cfg, datamodule, path, model_dir, attributor)} if hessian else {}
    return BaseArtifacts(inputs=ScoringInputs(train=train, reference=reference, train_probs=probs, seed=cfg.seed,
                                              extra=extra),
                         key=key, hit=hit, model_key=model_dir.name, model_hit=model_hit, model_meta=model_meta,
                         meta=json.loads((path / "meta.json").read_text()))


def _model_keys(cfg: DictConfig) -> list[str]:
    # per-epoch test curves change what the base run records, not the model: keyed only when switched on
    return MODEL_KEYS + (["eval_every_epoch"] if cfg.get("eval_every_epoch") else [])


def _base_keys(cfg: DictConfig) -> list[str]:
    # config_hash sorts the keys, so this hashes exactly like BASE_KEYS (+ eval_every_epoch)
    return _model_keys(cfg) + GRADIENT_KEYS


def _cached_hessian(cfg: DictConfig, datamodule: NoisyLabelDataModule, path: Path, model_dir: Path,
                    attributor: Attributor) -> np.ndarray:
    file = path / "hessian.npy"
    if not file.exists():
        tmp = file.with_suffix(f".tmp{id(attributor)}.npy")
        np.save(tmp, attributor.hessian(training.load_model(cfg, model_dir), datamodule))
        tmp.replace(file)
    return np.load(file)


def retrain(cfg: DictConfig, datamodule: NoisyLabelDataModule, keep: np.ndarray,
            model_key: str) -> tuple[dict, float, bool, str]:
    """Retrain from scratch on the kept samples, or find the result in the cache.

    Cached by (model key, kept set), so re-running a sweep, or two compressors/scorers that trim the same samples,
    retrain once.

    Args:
        cfg: the run config.
        datamodule: the full training data, set up.
        keep: the sample indices to keep.
        model_key: the base model's cache key.

    Returns:
        ``(test metrics as in training.fit_and_evaluate, seconds, cache hit, when the retrain finished)``.
    """
    cache = ArtifactCache(cfg.paths.cache_dir, enabled=cfg.cache)
    key = config_hash({"model": model_key, "keep": hashlib.sha256(np.sort(keep).astype(np.int64).tobytes()).hexdigest()})

    def build(out: Path) -> None:
        _, test, seconds = training.fit_and_evaluate(cfg, datamodule.with_keep(keep), stage="retrain")
        (out / "meta.json").write_text(json.dumps({"test": test, "retrain_s": seconds, "n_kept": len(keep),
                                                   "finished_at": now()}))

    path, hit = cache.get_or_create("retrain", key, build, collective=True)
    meta = json.loads((path / "meta.json").read_text())
    return meta["test"], meta["retrain_s"], hit, meta["finished_at"]
