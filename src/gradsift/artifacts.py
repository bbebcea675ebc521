"""The expensive, cached steps of a run: the trained base model, its per-sample gradients, and each retrain.

Entries live in the content-keyed :class:`~gradsift.cache.ArtifactCache` under ``cfg.paths.cache_dir``:

* ``model/<key>``: the base model (``model.pt``, ``meta.json`` with its test metrics, seed, key and the config
  sections of the key), keyed by ``MODEL_KEYS``;
* ``base/<key>``: its gradients (``grads_train.npz``, ``grads_reference.npz`` for a reference split other than the
  training set, ``train_probs.npy``, ``hessian.npy`` when a scorer asked for it), keyed by ``BASE_KEYS``;
* ``retrain/<key>``: the test metrics of a model retrained on a kept set, keyed by (model key, kept rows).

What only some scorers read is built on first use, each in its own entry keyed by the gradients' key and what it is
(:func:`scorer_inputs`): ``kfac/`` (K-FAC / EK-FAC factors per strategy and Fisher), ``margin/`` (TRAK's margin
gradients), ``checkpoint_grads/`` (gradients at the checkpoints ``attribution.checkpoints`` saved with the base
model, per model output), and ``fold/`` (one held-out fold's out-of-sample probabilities, keyed by the model key,
the number of folds and the fold).

So a sweep over scorer x trim budget trains and gathers once per seed, and changing the compressor or the reference
split re-gathers without retraining. Every file is checked against the entry's manifest when read, and a bad entry is
rebuilt (:mod:`gradsift.cache`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from gradsift import training
from gradsift.attribution.distributed import torch_process_group
from gradsift.attribution.compressors import IdentityCompressor
from gradsift.attribution.gradient_set import GradientSet
from gradsift.attribution.kfac import KroneckerFactors
from gradsift.attribution.model_output import MARGIN, margin_output
from gradsift.attributor import Attributor, predict_probs
from gradsift.cache import ArtifactCache, CorruptEntryError, config_hash, read_file
from gradsift.callback import EpochCheckpoints, load_checkpoints
from gradsift.data.base import NoisyLabelDataModule
from gradsift.record import now
from gradsift.scoring.base import Scorer, ScoringInputs
from gradsift.scoring.checkpoints import CheckpointInputs
from gradsift.trim import Trim

log = logging.getLogger(__name__)

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
        model_dir: the base model's cache entry (``model.pt``, ``checkpoints/``).
        extras_s: seconds the scorer-specific inputs took to build (:func:`scorer_inputs`; 0 before), counted when
            they came from the cache too, so a method's cost does not depend on the order of a sweep.
    """

    inputs: ScoringInputs
    key: str
    hit: bool
    model_key: str
    model_hit: bool
    model_meta: dict
    meta: dict
    model_dir: Path | None = None
    extras_s: float = 0.0


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
    epochs = checkpoint_epochs(cfg)
    key = model_key(cfg)

    def build(out: Path) -> None:
        saver = [EpochCheckpoints(epochs, out / "checkpoints")] if epochs else []
        model, test, seconds = training.fit_and_evaluate(cfg, datamodule, callbacks=saver, stage="base")
        torch.save(model.state_dict(), out / "model.pt")
        (out / "meta.json").write_text(json.dumps(model_meta(cfg, base_test=test, train_s=seconds), indent=2))

    def load(path: Path) -> dict:
        meta = read_json(path / "meta.json")
        if meta.get("config_hash", key) != key or int(meta.get("seed", cfg.seed)) != int(cfg.seed):
            raise CorruptEntryError(path / "meta.json", f"records seed {meta.get('seed')} and config hash "
                                    f"{meta.get('config_hash')}, but this entry's key is seed {cfg.seed}, hash {key}")
        return meta

    path, hit, meta = cache.get_or_load("model", key, build, load, collective=True)
    return path, meta, hit


def model_key(cfg: DictConfig) -> str:
    """The base model's cache key: the hash of the config sections that determine it (``MODEL_KEYS``), and of
    ``attribution.checkpoints`` when it asks for saved checkpoints (they change what the entry holds, not the model).
    Where data and caches live, loader workers and progress bars (``cache.LOCATION_KEYS``) are not part of it.
    """
    key = config_hash(cfg, _model_keys(cfg), locations=False)
    epochs = checkpoint_epochs(cfg)
    return config_hash({"model": key, "checkpoints": epochs}) if epochs else key


def model_meta(cfg: DictConfig, **facts) -> dict:
    """What ``meta.json`` records beside a cached model: ``facts`` (test metrics, seconds), the seed, the cache key
    and the config sections it hashes, so a checkpoint can be checked against the config it is used with."""
    sections = OmegaConf.to_container(cfg, resolve=True)
    return {**facts, "seed": int(cfg.seed), "config_hash": model_key(cfg),
            "config": {k: sections.get(k) for k in _model_keys(cfg)}}


def read_json(path: Path) -> dict:
    """A cache entry's JSON file (a :class:`~gradsift.cache.CorruptEntryError` naming it when it does not load)."""
    return read_file(path, lambda p: json.loads(p.read_text()))


def checkpoint_epochs(cfg: DictConfig) -> list[int]:
    """The training epochs ``attribution.checkpoints`` lists (empty: the final model only)."""
    epochs = cfg.attribution.get("checkpoints")
    if not epochs:
        return []
    if isinstance(epochs, int) or not all(isinstance(e, int) and e >= 1 for e in epochs):
        raise ValueError(f"attribution.checkpoints must be a list of training epochs >= 1, got {epochs!r}")
    return sorted(set(epochs))


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
    key = config_hash(cfg, _base_keys(cfg), locations=False)
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

    def load(path: Path) -> tuple[GradientSet, GradientSet | None, np.ndarray | None, dict]:
        train = read_file(path / "grads_train.npz", lambda p: GradientSet.load(str(p)))
        reference = train if cfg.attribution.reference == "train" else None
        if (path / "grads_reference.npz").exists():
            reference = read_file(path / "grads_reference.npz", lambda p: GradientSet.load(str(p)))
        probs = read_file(path / "train_probs.npy", np.load) if (path / "train_probs.npy").exists() else None
        return train, reference, probs, read_json(path / "meta.json")

    # collective: under a multi-process launch the other ranks take part in the distributed gather
    path, hit, (train, reference, probs, meta) = cache.get_or_load("base", key, build, load, collective=True)
    extra = {"hessian": _cached_hessian(cfg, datamodule, path, model_dir, attributor)} if hessian else {}
    return BaseArtifacts(inputs=ScoringInputs(train=train, reference=reference, train_probs=probs, seed=cfg.seed,
                                              extra=extra),
                         key=key, hit=hit, model_key=model_dir.name, model_hit=model_hit, model_meta=model_meta,
                         meta=meta, model_dir=model_dir)


def scorer_inputs(cfg: DictConfig, datamodule: NoisyLabelDataModule, scorer: Scorer, art: BaseArtifacts) -> BaseArtifacts:
    """``art`` with what ``scorer`` reads beyond the loss gradients, each built once and cached.

    TRAK's margin gradients replace the loss gradients (``model_output="margin"``); K-FAC / EK-FAC factors go to
    ``extra["kfac"]`` (with the engine's compressor, set up as for the gather, in ``extra["compressor"]`` when the
    gradients are compressed); the gradients at the saved checkpoints to ``extra["checkpoints"]``
    (``uses_checkpoints`` and ``attribution.checkpoints``); out-of-sample probabilities replace ``train_probs``
    (``probs="kfold"``).

    Args:
        cfg: the run config.
        datamodule: the data, set up.
        scorer: the run's scorer.
        art: what :func:`base_artifacts` returned.

    Returns:
        ``art`` with its ``inputs`` and ``extras_s`` updated.
    """
    inputs, seconds = art.inputs, 0.0
    if scorer.model_output == MARGIN:
        (train, reference, _), s = _margin_gradients(cfg, datamodule, art)
        inputs = ScoringInputs(train=train, reference=reference, train_probs=inputs.train_probs, seed=inputs.seed,
                               extra=dict(inputs.extra))
        seconds += s
    if scorer.needs_kfac:
        factors, s = _kronecker_factors(cfg, datamodule, art, scorer.strategy, scorer.empirical_fisher)
        inputs.extra["kfac"] = factors
        seconds += s
        compressor = instantiate(cfg.compressor)
        if not isinstance(compressor, IdentityCompressor):
            engine = instantiate(cfg.gradients, compressor=compressor)
            engine.prepare(training.load_model(cfg, art.model_dir), n_samples=len(datamodule.train_set))
            inputs.extra["compressor"] = engine.compressor
    if scorer.uses_checkpoints and checkpoint_epochs(cfg):
        inputs.extra["checkpoints"], s = _checkpoint_gradients(cfg, datamodule, art, scorer.model_output)
        seconds += s
    if scorer.probs == "kfold":
        inputs.train_probs, s = kfold_probs(cfg, datamodule, art.model_key, inputs.train, scorer.folds)
        seconds += s
    art.inputs, art.extras_s = inputs, seconds
    return art


def _extra_entry(cfg: DictConfig, kind: str, key: dict, build, collective: bool = False) -> tuple[Path, float]:
    """A scorer-specific cache entry: ``build(folder)`` on a miss; returns the folder and its build seconds.

    ``collective``: the build trains (every rank of a multi-process launch takes part, see ``ArtifactCache``)."""
    cache = ArtifactCache(cfg.paths.cache_dir, enabled=cfg.cache)

    def timed(out: Path) -> None:
        t0 = time.perf_counter()
        build(out)
        (out / "seconds.json").write_text(json.dumps({"seconds": time.perf_counter() - t0}))

    path, _ = cache.get_or_create(kind, config_hash(key), timed, collective=collective)
    return path, float(json.loads((path / "seconds.json").read_text())["seconds"])


def _save_sets(out: Path, train: GradientSet, reference: GradientSet | None, probs: np.ndarray | None) -> None:
    train.save(str(out / "grads_train.npz"))
    if reference is not None and reference is not train:
        reference.save(str(out / "grads_reference.npz"))
    if probs is not None:
        np.save(out / "train_probs.npy", probs)


def _load_sets(cfg: DictConfig, folder: Path) -> tuple[GradientSet, GradientSet | None, np.ndarray | None]:
    train = GradientSet.load(str(folder / "grads_train.npz"))
    reference = train if cfg.attribution.reference == "train" else None
    if (folder / "grads_reference.npz").exists():
        reference = GradientSet.load(str(folder / "grads_reference.npz"))
    probs = np.load(folder / "train_probs.npy") if (folder / "train_probs.npy").exists() else None
    return train, reference, probs


def _margin_gradients(cfg: DictConfig, datamodule: NoisyLabelDataModule, art: BaseArtifacts):
    """TRAK's margin gradients of the training and reference splits of the base model (``margin/``)."""
    def build(out: Path) -> None:
        model = training.load_model(cfg, art.model_dir)
        with margin_output(model):
            inputs = build_attributor(cfg).gather(model, datamodule)
        _save_sets(out, inputs.train, inputs.reference, None)

    path, seconds = _extra_entry(cfg, "margin", {"base": art.key}, build)
    return _load_sets(cfg, path), seconds


def _kronecker_factors(cfg: DictConfig, datamodule: NoisyLabelDataModule, art: BaseArtifacts, strategy: str,
                       empirical_fisher: bool) -> tuple[KroneckerFactors, float]:
    """The base model's K-FAC / EK-FAC factors over the training split (``kfac/``)."""
    def build(out: Path) -> None:
        factors = build_attributor(cfg).kronecker_factors(training.load_model(cfg, art.model_dir), datamodule,
                                                          strategy, empirical_fisher)
        factors.save(str(out / "factors.npz"))

    path, seconds = _extra_entry(cfg, "kfac", {"base": art.key, "strategy": strategy,
                                                    "empirical_fisher": empirical_fisher}, build)
    return KroneckerFactors.load(str(path / "factors.npz")), seconds


def _checkpoint_gradients(cfg: DictConfig, datamodule: NoisyLabelDataModule, art: BaseArtifacts,
                          model_output: str) -> tuple[list[CheckpointInputs], float]:
    """Gradients (of the loss or the margin), reference gradients and probabilities at every saved checkpoint."""
    def build(out: Path) -> None:
        model = training.load_model(cfg, art.model_dir)
        with margin_output(model) if model_output == MARGIN else nullcontext(model):
            ckpts = build_attributor(cfg, probs=True).gather_checkpoints(model, datamodule,
                                                                          load_checkpoints(art.model_dir / "checkpoints"))
        for i, c in enumerate(ckpts):
            (out / str(i)).mkdir()
            _save_sets(out / str(i), c.train, c.reference, c.train_probs)
        (out / "checkpoints.json").write_text(json.dumps([{"learning_rate": c.learning_rate, "name": c.name}
                                                          for c in ckpts], indent=1))

    path, seconds = _extra_entry(cfg, "checkpoint_grads", {"base": art.key, "model_output": model_output}, build)
    out = []
    for i, c in enumerate(json.loads((path / "checkpoints.json").read_text())):
        train, reference, probs = _load_sets(cfg, path / str(i))
        out.append(CheckpointInputs(train, reference, probs, c["learning_rate"], c["name"]))
    return out, seconds


def kfold_probs(cfg: DictConfig, datamodule: NoisyLabelDataModule, model_key: str, train: GradientSet,
                folds: int) -> tuple[np.ndarray, float]:
    """Out-of-sample predicted probabilities of every training row (cleanlab's recommended input).

    The rows are split into ``folds`` stratified folds (by the given label, seeded by ``cfg.seed``); for each fold a
    model of the run's recipe is trained on the other folds and predicts the held-out rows. Each fold is cached on
    its own (``fold/``: model key, number of folds, fold).

    Args:
        cfg: the run config.
        datamodule: the full training data, set up.
        model_key: the base model's cache key.
        train: the training gradient set (its row order and labels).
        folds: the number of folds K.

    Returns:
        ``([n, C] probabilities in the rows' order, seconds the folds took to build)``.
    """
    from sklearn.model_selection import StratifiedKFold

    labels = np.asarray(train.labels)
    counts = np.bincount(labels)
    if counts[counts > 0].min() < folds:
        raise ValueError(f"scorer.folds={folds} exceeds the size of the smallest class ({counts[counts > 0].min()} "
                         "training rows): lower scorer.folds")
    splits = list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=int(cfg.seed)).split(labels, labels))
    probs, seconds = None, 0.0
    for i, (fit_rows, held_rows) in enumerate(splits):
        def build(out: Path, fit_rows=fit_rows, held_rows=held_rows) -> None:
            model, _, _ = training.fit_and_evaluate(cfg, datamodule.with_keep(train.index[fit_rows]), stage="fold")
            np.save(out / "probs.npy", predict_probs(model, datamodule.attribution_dataloader("train"))[held_rows])
            np.save(out / "rows.npy", held_rows)

        path, s = _extra_entry(cfg, "fold", {"model": model_key, "folds": folds, "fold": i, "seed": int(cfg.seed)},
                               build, collective=True)
        held = np.load(path / "probs.npy")
        if probs is None:
            probs = np.zeros((train.n, held.shape[1]), dtype=held.dtype)
        probs[np.load(path / "rows.npy")] = held
        seconds += s
    return probs, seconds



def _model_keys(cfg: DictConfig) -> list[str]:
    # per-epoch test curves change what the base run records, not the model: keyed only when switched on
    return MODEL_KEYS + (["eval_every_epoch"] if cfg.get("eval_every_epoch") else [])


def _base_keys(cfg: DictConfig) -> list[str]:
    # config_hash sorts the keys, so this hashes exactly like BASE_KEYS (+ eval_every_epoch)
    return _model_keys(cfg) + GRADIENT_KEYS


def _cached_hessian(cfg: DictConfig, datamodule: NoisyLabelDataModule, path: Path, model_dir: Path,
                    attributor: Attributor) -> np.ndarray:
    file = path / "hessian.npy"  # added to the entry after it was published: not in its manifest
    if file.exists():
        try:
            return read_file(file, np.load)
        except CorruptEntryError as e:
            log.warning("%s; computing it again", e)
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

    path, hit, meta = cache.get_or_load("retrain", key, build, lambda p: read_json(p / "meta.json"), collective=True)
    return meta["test"], meta["retrain_s"], hit, meta["finished_at"]
