"""train -> attribute -> score -> trim -> retrain -> evaluate, from one Hydra config.

The base model and its gradients are cached by the hash of the config sections that determine them
(``BASE_KEYS``), so a multirun over scorer x trim budget trains and gathers once per seed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import platform
import tempfile
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from sklearn.metrics import roc_auc_score

from gradsift.attribution.callback import AttributionCallback
from gradsift.attribution.distributed import torch_process_group
from gradsift.attribution.gradient_set import GradientSet
from gradsift.cache import ArtifactCache, config_hash, launcher_rank
from gradsift.data.base import NoisyLabelDataModule
from gradsift.scoring.base import Scorer
from gradsift.scoring.influence import check_exact_hessian_compressor
from gradsift.trim import Trim

log = logging.getLogger(__name__)

#: config sections that determine the trained base model
MODEL_KEYS = ["data", "model", "trainer", "seed"]
#: ... and, with these, its gradients
GRADIENT_KEYS = ["gradients", "compressor", "attribution"]
BASE_KEYS = MODEL_KEYS + GRADIENT_KEYS


class EpochTestCurve(pl.Callback):
    """Clean test metrics after every training epoch (OGA Figure 3's accuracy-per-epoch curves).

    Accuracy for classifiers (the module has ``logits``), otherwise the mean per-sample test loss."""

    def __init__(self, datamodule: NoisyLabelDataModule):
        self.datamodule = datamodule
        self.values: list[float] = []

    @torch.no_grad()
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        was_training = pl_module.training
        pl_module.eval()
        classifier = hasattr(pl_module, "logits")
        summed, total = 0.0, 0  # correct predictions (classifier) or per-sample losses
        for batch in self.datamodule.test_dataloader():
            batch = trainer.strategy.batch_to_device(batch)
            with trainer.precision_plugin.forward_context():
                if classifier:
                    pred = pl_module.logits(batch).argmax(-1)
                    summed += float((pred == batch.get("clean_label", batch["label"])).sum())
                else:
                    summed += float(pl_module.per_sample_loss(batch).float().sum())
            total += len(batch["index"])
        self.values.append(summed / max(total, 1))
        pl_module.train(was_training)


def fit_and_evaluate(cfg: DictConfig, datamodule: NoisyLabelDataModule, callbacks: list | None = None,
                     stage: str = "train") -> tuple[pl.LightningModule, dict, float]:
    """Train a fresh model from ``cfg.model`` on ``datamodule``; return (model, test metrics, seconds).

    Test metrics are every ``test/<name>`` the module logs, as ``{name: value}`` (``acc`` for classifiers,
    ``perplexity`` for causal LMs); with ``eval_every_epoch: true`` also ``curve``, the per-epoch test accuracy
    (or loss), see :class:`EpochTestCurve`."""
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    model = instantiate(cfg.model)
    curve = EpochTestCurve(datamodule) if cfg.get("eval_every_epoch") else None
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=(callbacks or []) + ([curve] if curve else []),
                                      logger=False)
    t0 = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    seconds = time.perf_counter() - t0
    logged = trainer.test(model, datamodule=datamodule, verbose=False)[0]
    metrics = {k.split("/", 1)[1]: float(v) for k, v in logged.items() if k.startswith("test/")}
    if curve is not None:
        metrics["curve"] = curve.values
    return model, metrics, seconds


def fit_and_test(cfg: DictConfig, datamodule: NoisyLabelDataModule, callbacks: list | None = None,
                 stage: str = "train") -> tuple[pl.LightningModule, float, float]:
    """:func:`fit_and_evaluate` reduced to (model, clean test accuracy, seconds)."""
    model, metrics, seconds = fit_and_evaluate(cfg, datamodule, callbacks, stage=stage)
    return model, metrics.get("acc", float("nan")), seconds


def _logger(cfg: DictConfig, stage: str):
    lg = cfg.get("logger")
    if not lg or "_target_" not in lg:
        return False
    return instantiate(lg, **({"name": stage} if "name" in lg else {}))


def log_run(cfg: DictConfig, result: dict, cb: AttributionCallback, datamodule: NoisyLabelDataModule,
            top: int = 50) -> None:
    """One experiment-logger run per job (``logger=wandb|csv``): config, metrics, per-stage timings, the score
    histogram, the top flagged samples (with thumbnails for images) and the score plot."""
    lg = _logger(cfg, "attribution")
    if not lg:
        return
    from gradsift.loggers import log_attribution
    from gradsift.viz.scores import score_plot

    lg.log_hyperparams(result["config"])
    lg.log_metrics({f"metrics/{k}": float(v) for k, v in result["metrics"].items() if isinstance(v, (int, float))})
    rows = cb.flagged.head(top).to_dict("records")
    x = datamodule.full_train_set.columns.get("x")
    if isinstance(x, torch.Tensor) and x.ndim == 4:
        rows_at = datamodule.full_train_set.positions([row["index"] for row in rows])
        for row, p in zip(rows, rows_at):
            img = x[int(p)]
            row["image"] = (img.permute(1, 2, 0) if img.shape[0] in (1, 3) else img).cpu().numpy()
    fig = score_plot(cb.flagged, title=f"{result['method']} | {result['dataset']} | seed {result['seed']}")
    log_attribution(lg, cb.flagged["score"].to_numpy(), rows, plots={"scores": fig}, timings=result["timings"])
    lg.finalize("success")


def trained_model(cfg: DictConfig, datamodule: NoisyLabelDataModule) -> tuple[Path, dict, bool]:
    """Train the base model, or find it in the cache: ``(entry dir with model.pt, meta, hit)``.

    Keyed by ``MODEL_KEYS`` only, so a sweep over gradients x compressor x scorer trains once per seed."""
    cache = ArtifactCache(cfg.paths.cache_dir, enabled=cfg.cache)

    def build(out: Path) -> None:
        model, test, seconds = fit_and_evaluate(cfg, datamodule, stage="base")
        torch.save(model.state_dict(), out / "model.pt")
        (out / "meta.json").write_text(json.dumps({"base_test": test, "train_s": seconds}, indent=2))

    path, hit = cache.get_or_create("model", config_hash(cfg, _model_keys(cfg)), build, collective=True)
    return path, json.loads((path / "meta.json").read_text()), hit


def load_model(cfg: DictConfig, path: Path) -> pl.LightningModule:
    """``cfg.model`` with the weights in ``path/model.pt``, on the device the trainer would use."""
    model = instantiate(cfg.model)
    model.load_state_dict(torch.load(path / "model.pt", weights_only=True, map_location="cpu"))
    accel = str(cfg.trainer.get("accelerator", "auto"))
    if torch.cuda.is_available() and accel in ("auto", "gpu", "cuda"):
        model = model.cuda()
    return model.eval()


def base_artifacts(cfg: DictConfig, datamodule: NoisyLabelDataModule, scorer: Scorer | None) -> dict:
    """The trained base model's per-sample gradients (and predicted probabilities), or load them from the cache.

    Two cache levels: the model (``MODEL_KEYS``) and its gradients (``BASE_KEYS``: + gradients, compressor,
    attribution), so changing the compressor or the reference split re-gathers without retraining."""
    cache = ArtifactCache(cfg.paths.cache_dir, enabled=cfg.cache)
    key = config_hash(cfg, _base_keys(cfg))
    needs_hessian = bool(getattr(scorer, "needs_hessian", False))
    model_dir, model_meta, model_hit = trained_model(cfg, datamodule)

    def build(out: Path) -> None:
        cb = AttributionCallback(gradients=instantiate(cfg.gradients, compressor=instantiate(cfg.compressor)),
                                 reference=cfg.attribution.reference, probs=True, seed=cfg.seed)
        dist = torch_process_group()  # after a DDP/FSDP fit every rank gathers a share
        cb.attribute(load_model(cfg, model_dir), datamodule, dist=dist)
        for split, gs in cb.gradients.items():
            gs.save(str(out / f"grads_{split}.npz"))
        if cb.train_probs is not None:
            np.save(out / "train_probs.npy", cb.train_probs)
        # the model's own facts (test metrics, training time) stay in its entry: art["model_meta"]
        meta = {"gradients_s": cb.timings["gradients_s"], "compressor": cb.gradients["train"].meta.get("compressor"),
                "key": key, "model_dir": str(model_dir), "gather_world_size": dist["world_size"] if dist else 1}
        (out / "meta.json").write_text(json.dumps(meta, indent=2))

    # collective: under a multi-process launch the other ranks take part in the distributed gather
    path, hit = cache.get_or_create("base", key, build, collective=True)
    meta = json.loads((path / "meta.json").read_text())
    art = {"key": key, "hit": hit, "model_hit": model_hit, "model_key": model_dir.name, "model_meta": model_meta,
           "path": path, "meta": meta,
           "train": GradientSet.load(str(path / "grads_train.npz")),
           "val": GradientSet.load(str(path / "grads_val.npz")) if (path / "grads_val.npz").exists() else None,
           "train_probs": np.load(path / "train_probs.npy") if (path / "train_probs.npy").exists() else None}
    if needs_hessian:
        art["hessian"] = _cached_hessian(cfg, datamodule, path, model_dir)
    return art


def _model_keys(cfg: DictConfig) -> list[str]:
    # per-epoch test curves change what the base run records, not the model: keyed only when switched on
    return MODEL_KEYS + (["eval_every_epoch"] if cfg.get("eval_every_epoch") else [])


def _base_keys(cfg: DictConfig) -> list[str]:
    # config_hash sorts the keys, so this hashes exactly like BASE_KEYS (+ eval_every_epoch)
    return _model_keys(cfg) + GRADIENT_KEYS


def _cached_hessian(cfg: DictConfig, datamodule: NoisyLabelDataModule, path: Path, model_dir: Path) -> np.ndarray:
    file = path / "hessian.npy"
    if not file.exists():
        model = load_model(cfg, model_dir)
        cb = AttributionCallback(gradients=instantiate(cfg.gradients, compressor=instantiate(cfg.compressor)))
        tmp = file.with_suffix(f".tmp{id(cb)}.npy")
        np.save(tmp, cb.compute_hessian(model, datamodule))
        tmp.replace(file)
    return np.load(file)


def detection_metrics(remove: np.ndarray, scores: np.ndarray | None, noise: np.ndarray) -> dict:
    """Detection quality against the true flip mask (OGA Table 1: accuracy of flagged vs not over ALL samples)."""
    tp = int((remove & noise).sum())
    out = {"detection_acc": float((remove == noise).mean()), "n_trimmed": int(remove.sum()),
           "n_noisy": int(noise.sum()), "true_positives": tp,
           "precision": tp / int(remove.sum()) if remove.any() else float("nan"),
           "recall": tp / int(noise.sum()) if noise.any() else float("nan")}
    if scores is not None and 0 < noise.sum() < len(noise):
        out["detection_auc"] = float(roc_auc_score(noise, scores))
    return out


def run(cfg: DictConfig, output_dir: str | Path, choices: dict | None = None) -> dict:
    """One run of the whole flow; writes ``result.json`` in ``output_dir`` and returns it as a dict.

    ``choices`` are Hydra's config-group choices (``scorer: iforest`` ...), recorded to name the run.
    """
    if cfg.get("flow", "trim") == "identification":  # OGA Table 3: [n_test, n_train] scores, no trimming
        from gradsift.identification import run as run_identification

        return run_identification(cfg, output_dir, choices)
    t_start = time.perf_counter()
    output_dir, result = start_run(cfg, output_dir)
    with recorded(result, output_dir):
        scorer: Scorer = instantiate(cfg.scorer)
        check_exact_hessian_compressor(scorer, instantiate(cfg.compressor))  # before any training
        trim: Trim = instantiate(cfg.trim)
        method = cfg.get("method") or scorer.display_name + (" [detector labels]" if trim.selection == "detector" else "")
        result.update(method=method, scorer=(choices or {}).get("scorer") or cfg.scorer._target_.rsplit(".", 1)[-1],
                      compressor=(choices or {}).get("compressor") or cfg.compressor._target_.rsplit(".", 1)[-1], budget=trim.describe(),
                      selection=trim.selection, paper_table=cfg.get("paper_table"))
        _write(output_dir, result)  # a killed job leaves a "running" record the summary marks as failed
        datamodule: NoisyLabelDataModule = instantiate(cfg.data)
        datamodule.setup()
        trim.validate(len(datamodule.train_set), getattr(datamodule, "has_noise_mask", True))  # before training
        art = base_artifacts(cfg, datamodule, scorer)
        result["base_key"], result["cache_hit"], result["model_cache_hit"] = art["key"], art["hit"], art["model_hit"]

        cb = AttributionCallback(scorer=scorer, trim=trim, reference=cfg.attribution.reference, seed=cfg.seed,
                                 output_dir=str(output_dir))
        cb.gradients = {"train": art["train"], **({"val": art["val"]} if art["val"] is not None else {})}
        cb.train_probs, cb.hessian = art["train_probs"], art.get("hessian")
        scores = cb.score(datamodule)
        by_row = cb.flagged.sort_index()  # back in training-row order
        remove = by_row["flagged"].to_numpy()

        train = art["train"]
        metrics = {f"base_test_{k}": v for k, v in art["model_meta"]["base_test"].items()}
        if getattr(datamodule, "has_noise_mask", True):
            noise = train.labels != by_row["clean_label"].to_numpy()
            metrics.update(detection_metrics(remove, scores, noise))
        else:  # no classes (causal-LM text) or clean labels unknown: only how many were removed
            metrics["n_trimmed"] = int(remove.sum())
        retrain_s = 0.0
        if cfg.get("retrain", True):
            keep = train.index[~remove]
            test, retrain_s, result["retrain_cache_hit"], result["finished_at"] = retrain(
                cfg, datamodule, keep, art["model_key"])
            metrics.update({f"test_{k}": v for k, v in test.items()})
        else:  # detection only (dropout Table 1): the scores and their AUC against the flip mask are the result
            result["finished_at"] = _now()
        result["metrics"] = metrics
        result["timings"] = {"train_s": art["model_meta"]["train_s"], "gradients_s": art["meta"]["gradients_s"],
                             "score_s": cb.timings["score_s"], "retrain_s": retrain_s,
                             "total_s": time.perf_counter() - t_start}
        result["status"] = "ok"
        np.save(output_dir / "scores.npy", scores)
        if cfg.get("gallery") and callable(getattr(datamodule, "images", None)):
            # OGA Figure 2: the highest-scored training images with their given and clean labels
            from gradsift.viz.gallery import gallery_from_datamodule

            gallery_from_datamodule(datamodule, scores, train.index, output_dir / "gallery.png", k=int(cfg.gallery),
                                    title=f"{method} | {result['dataset']} | seed {cfg.seed}")
        log_run(cfg, result, cb, datamodule)
    return result


def start_run(cfg: DictConfig, output_dir: str | Path, dataset: str | None = None, **fields) -> tuple[Path, dict]:
    """What every flow does first: this process's output folder (:func:`_own_output_dir`), the torch thread count,
    and the ``result`` record (status ``running``) that :func:`recorded` writes whatever happens."""
    output_dir = _own_output_dir(output_dir)
    if cfg.get("torch_threads"):
        # tiny models: one intra-op thread avoids OpenMP spin contention (30x slower when several jobs share cores)
        torch.set_num_threads(int(cfg.torch_threads))
    result = {"experiment": cfg.experiment_name, **fields,
              "dataset": dataset or cfg.data.get("name", cfg.data._target_.rsplit(".", 1)[-1]),
              "seed": int(cfg.seed), "config_hash": config_hash(cfg), "config": OmegaConf.to_container(cfg, resolve=True),
              "versions": versions(), "status": "running", "error": None}
    return output_dir, result


def retrain(cfg: DictConfig, datamodule: NoisyLabelDataModule, keep: np.ndarray,
            model_key: str) -> tuple[dict, float, bool, str]:
    """Retrain from scratch on the kept samples; cached by (model key, kept set), so re-running a sweep, or two
    compressors/scorers that trim the same samples, retrain once.

    Returns (test metrics as in :func:`fit_and_evaluate`, seconds, cache hit, when the retrain finished)."""
    cache = ArtifactCache(cfg.paths.cache_dir, enabled=cfg.cache)
    key = config_hash({"model": model_key, "keep": hashlib.sha256(np.sort(keep).astype(np.int64).tobytes()).hexdigest()})

    def build(out: Path) -> None:
        _, test, seconds = fit_and_evaluate(cfg, datamodule.with_keep(keep), stage="retrain")
        (out / "meta.json").write_text(json.dumps({"test": test, "retrain_s": seconds, "n_kept": len(keep),
                                                   "finished_at": _now()}))

    path, hit = cache.get_or_create("retrain", key, build, collective=True)
    meta = json.loads((path / "meta.json").read_text())
    return meta["test"], meta["retrain_s"], hit, meta["finished_at"]


def _own_output_dir(output_dir: str | Path) -> Path:
    """``output_dir``, created; for the extra ranks of a multi-process launch (which re-run this script to take part
    in training) a private folder instead, so that only rank 0 writes the run's files."""
    rank = launcher_rank()
    if rank > 0:
        return Path(tempfile.mkdtemp(prefix=f"gradsift-run-rank{rank}-"))
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    return output_dir


def _now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


@contextmanager
def recorded(result: dict, output_dir: Path):
    """Run the body; whatever happens, write ``result`` to ``output_dir/result.json`` — on an exception with
    ``status: failed``, the error and its traceback, keeping every metric computed before it (then re-raise)."""
    try:
        yield result
    except Exception as exc:
        result["status"], result["error"] = "failed", f"{type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc()
        raise
    finally:
        _write(output_dir, result)


def _write(output_dir: Path, result: dict) -> None:
    tmp = output_dir / "result.json.tmp"
    tmp.write_text(json.dumps(result, indent=2, default=_json_default))
    tmp.replace(output_dir / "result.json")


def versions() -> dict:
    import sklearn

    import gradsift

    return {"gradsift": gradsift.__version__, **code_revision(), "python": platform.python_version(),
            "torch": torch.__version__, "pytorch_lightning": pl.__version__, "sklearn": sklearn.__version__,
            "numpy": np.__version__, "platform": platform.platform()}


@functools.cache
def code_revision() -> dict:
    """``{"commit": <sha>, "dirty": bool}`` of the gradsift checkout a run used, so two runs of one config can be told
    apart by code. ``GRADSIFT_COMMIT`` overrides it (a copy of the tree without ``.git``, e.g. on a remote GPU box:
    pass the sha of what was copied); ``{}`` for an installed package outside git."""
    import os
    import subprocess

    if os.environ.get("GRADSIFT_COMMIT"):
        return {"commit": os.environ["GRADSIFT_COMMIT"], "dirty": None}
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(here), *args], capture_output=True, text=True, timeout=5,
                              check=True).stdout.strip()

    try:
        git("ls-files", "--error-unmatch", "__init__.py")  # the package is the checkout's, not a copy installed in it
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"commit": commit, "dirty": dirty}


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
