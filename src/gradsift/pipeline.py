"""train -> attribute -> score -> trim -> retrain -> evaluate, from one Hydra config.

The orchestrator only: training is :mod:`gradsift.training`, the cached base model, gradients and retrains are
:mod:`gradsift.artifacts`, the ``result.json`` record is :mod:`gradsift.record`, scoring and trimming are an
:class:`~gradsift.attributor.Attributor`. ``flow: identification`` runs :mod:`gradsift.identification` instead.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig

from gradsift import artifacts, identification, paired, training
from gradsift.data.base import NoisyLabelDataModule
from gradsift.loggers import log_run
from gradsift.record import finished_result, now, recorded, start_run, write_result
from gradsift.scoring.base import Scorer
from gradsift.scoring.lds import LinearDatamodelingScore
from gradsift.trim import Trim, detection_metrics

log = logging.getLogger(__name__)


def run(cfg: DictConfig, output_dir: str | Path, choices: dict | None = None) -> dict:
    """One run of the whole flow; writes ``result.json`` (and ``flagged.csv``, ``scores.npy``) in ``output_dir``.

    Args:
        cfg: the composed run config (``conf/config.yaml`` and its groups).
        output_dir: the run's folder.
        choices: Hydra's config-group choices (``scorer: iforest`` ...), recorded to name the run.

    Returns:
        The run record, as written to ``result.json``; a run that already finished there with the same config is
        not repeated (its record comes back with ``skipped: true``; ``force=true`` repeats it).
    """
    if cfg.get("flow", "trim") == "identification":  # OGA Table 3: [n_test, n_train] scores, no trimming
        return identification.run(cfg, output_dir, choices)
    if (done := finished_result(cfg, output_dir)) is not None:
        return done
    if cfg.get("retrain_from"):  # the flags of an earlier detection run: no base model, no gradients here
        return retrain_from(cfg, output_dir, choices)
    t_start = time.perf_counter()
    output_dir, result = start_run(cfg, output_dir)
    with recorded(result, output_dir):
        scorer, trim, method = _describe(cfg, choices, result)
        attributor = artifacts.build_attributor(cfg, scorer, trim)  # refuses a bad compressor before any training
        metric_cfg = _metric_config(cfg)
        write_result(output_dir, result)  # a killed job leaves a "running" record the summary marks as failed
        datamodule: NoisyLabelDataModule = instantiate(cfg.data)
        datamodule.setup()
        trim.validate(len(datamodule.train_set), getattr(datamodule, "has_noise_mask", True))  # before training
        art = artifacts.scorer_inputs(cfg, datamodule, scorer,
                                      artifacts.base_artifacts(cfg, datamodule, hessian=scorer.needs_hessian))
        result["base_key"], result["cache_hit"], result["model_cache_hit"] = art.key, art.hit, art.model_hit
        result["model_key"] = art.model_key
        log.info("base model %s (%s), gradients %s (%s): %d x %d", art.model_key,
                 "cached" if art.model_hit else "trained", art.key, "cached" if art.hit else "gathered",
                 art.inputs.train.n, art.inputs.train.dim)

        attribution = attributor.score(art.inputs, datamodule)
        attribution.write_flagged(output_dir)
        by_row = attribution.flagged.sort_index()  # back in training-row order
        remove = by_row["flagged"].to_numpy()
        log.info("%s: scored in %.2f s, flagged %d of %d (%s)", method, attribution.score_s, int(remove.sum()),
                 len(remove), "detector labels" if trim.selection == "detector" else trim.key)
        train = art.inputs.train
        # best_acc: also for a base model cached before best-epoch accuracy was recorded
        metrics = {f"base_test_{k}": v for k, v in training.with_best_epoch(art.model_meta["base_test"]).items()}
        if getattr(datamodule, "has_noise_mask", True):
            noise = train.labels != by_row["clean_label"].to_numpy()
            metrics.update(detection_metrics(remove, attribution.scores, noise))
        else:  # no classes (causal-LM text) or clean labels unknown: only how many were removed
            metrics["n_trimmed"] = int(remove.sum())
        retrain_s = 0.0
        if cfg.get("retrain", True):
            test, retrain_s, result["retrain_cache_hit"], result["finished_at"] = artifacts.retrain(
                cfg, datamodule, train.index[~remove], art.model_key)
            _record_retrain(metrics, test, int((~remove).sum()), result["retrain_cache_hit"])
        else:  # detection only (dropout Table 1): the scores and their AUC against the flip mask are the result
            result["finished_at"] = now()
        lds_s = 0.0
        if metric_cfg is not None:
            t0 = time.perf_counter()
            metrics.update(linear_datamodeling(cfg, datamodule, attribution.scores, train.index, art.model_key))
            lds_s = time.perf_counter() - t0
        result["metrics"] = metrics
        result["timings"] = {"train_s": art.model_meta["train_s"], "gradients_s": art.meta["gradients_s"],
                             "extras_s": art.extras_s, "score_s": attribution.score_s, "retrain_s": retrain_s,
                             "lds_s": lds_s, "total_s": time.perf_counter() - t_start,
                             # the method's own cost, the same whether its inputs came from the cache or not
                             "attribution_s": art.meta["gradients_s"] + art.extras_s + attribution.score_s}
        result["status"] = "ok"
        np.save(output_dir / "scores.npy", attribution.scores)
        if cfg.get("gallery") and callable(getattr(datamodule, "images", None)):
            # OGA Figure 2: the highest-scored training images with their given and clean labels
            from gradsift.viz.gallery import gallery_from_datamodule

            gallery_from_datamodule(datamodule, attribution.scores, train.index, output_dir / "gallery.png",
                                    k=int(cfg.gallery), title=f"{method} | {result['dataset']} | seed {cfg.seed}")
        log_run(cfg, result, attribution.flagged, datamodule)
        log.info("wrote %s: %s", output_dir, ", ".join(sorted(p.name for p in output_dir.iterdir() if p.is_file())))
    return result


def _record_retrain(metrics: dict, test: dict, n_kept: int, cache_hit: bool) -> None:
    """Add a retrain's test metrics to ``metrics`` and log them.

    ``test_*`` with the best and cross-selected epochs (:func:`gradsift.training.with_best_epoch`), and the McNemar
    test against the base model on the same test samples (:func:`gradsift.paired.versus_base`).
    """
    metrics.update({f"test_{k}": v for k, v in training.with_best_epoch(test).items()})
    metrics.update(paired.versus_base(metrics))
    log.info("retrain on %d kept samples (%s): test %s", n_kept, "cached" if cache_hit else "trained",
             ", ".join(f"{k} {v:.4f}" for k, v in test.items() if isinstance(v, float)))


def _describe(cfg: DictConfig, choices: dict | None, result: dict) -> tuple[Scorer, Trim, str]:
    """The run's scorer, trim and table row name, recorded in ``result`` (``method``, ``scorer`` ...)."""
    scorer: Scorer = instantiate(cfg.scorer)
    trim: Trim = instantiate(cfg.trim)
    method = cfg.get("method") or scorer.display_name + (" [detector labels]" if trim.selection == "detector" else "")
    result.update(method=method, scorer=(choices or {}).get("scorer") or cfg.scorer._target_.rsplit(".", 1)[-1],
                  compressor=(choices or {}).get("compressor") or cfg.compressor._target_.rsplit(".", 1)[-1],
                  budget=trim.describe(), selection=trim.selection, paper_table=cfg.get("paper_table"))
    return scorer, trim, method


def retrain_from(cfg: DictConfig, output_dir: str | Path, choices: dict | None = None) -> dict:
    """``retrain_from=<folder>``: retrain on what an earlier run of this scoring config flagged (:mod:`gradsift.handoff`).

    The base model is neither trained nor loaded and no gradient is gathered: the flags, the base model's and the
    detection metrics, and the attribution's timings come from that run's ``result.json`` and ``flagged.csv``
    (``result["retrain_from"]`` names it); the retrain is this run's own, cached as in :func:`run`.

    Args:
        cfg: the run config; ``retrain_from`` is a run folder or a sweep folder above it.
        output_dir: this run's folder.
        choices: Hydra's config-group choices.

    Returns:
        The run record, as written to ``result.json``.
    """
    from gradsift import handoff

    if not cfg.get("retrain", True):
        raise ValueError("retrain_from is set but retrain=false: there would be nothing to do; drop one of them")
    if _metric_config(cfg) is not None:
        raise ValueError("retrain_from does not compute metric=... (it needs this run's own base model and scores); "
                         "run the metric without retrain_from")
    t_start = time.perf_counter()
    output_dir, result = start_run(cfg, output_dir)
    with recorded(result, output_dir):
        _, _, method = _describe(cfg, choices, result)
        source, rec = handoff.find_detection_run(cfg, cfg.retrain_from)  # before any data is read
        result["retrain_from"] = handoff.source_facts(source, rec)
        write_result(output_dir, result)
        datamodule: NoisyLabelDataModule = instantiate(cfg.data)
        datamodule.setup()
        t_score = time.perf_counter()
        source, rec, flagged, index, remove = handoff.kept_rows(cfg, datamodule, (source, rec))
        scored_here = handoff.model_free(cfg)
        score_s = time.perf_counter() - t_score
        log.info("%s: %d of %d flagged %s", method, int(remove.sum()), len(remove),
                 f"here (no model needed), the base model of {source}" if scored_here else f"by {source}")
        if scored_here:  # the source is another scorer's run of the same base model: only its base facts hold here
            result["retrain_from"]["scored_here"] = True
            metrics = {k: v for k, v in rec.get("metrics", {}).items() if k.startswith("base_test_")}
            by_row = flagged.sort_index()
            if getattr(datamodule, "has_noise_mask", True):
                noise = by_row["label"].to_numpy() != by_row["clean_label"].to_numpy()
                metrics.update(detection_metrics(remove, by_row["score"].to_numpy(), noise))
            else:
                metrics["n_trimmed"] = int(remove.sum())
        else:
            metrics = {k: v for k, v in rec.get("metrics", {}).items() if not k.startswith("test_")}
        model_key = artifacts.model_key(cfg)
        test, retrain_s, result["retrain_cache_hit"], result["finished_at"] = artifacts.retrain(
            cfg, datamodule, index[~remove], model_key)
        _record_retrain(metrics, test, int((~remove).sum()), result["retrain_cache_hit"])
        result.update(base_key=rec.get("base_key"), model_key=model_key, metrics=metrics)
        timings = {k: v for k, v in rec.get("timings", {}).items() if k not in ("retrain_s", "total_s")}
        if scored_here:  # the source's gradients and scoring were another scorer's
            timings.update(gradients_s=0.0, extras_s=0.0, score_s=score_s, attribution_s=score_s)
        result["timings"] = {**timings, "retrain_s": retrain_s, "total_s": time.perf_counter() - t_start}
        result["status"] = "ok"
        flagged.to_csv(output_dir / "flagged.csv", index=False)
        if scored_here:
            np.save(output_dir / "scores.npy", flagged.sort_index()["score"].to_numpy())
        elif (source / "scores.npy").exists():
            np.save(output_dir / "scores.npy", np.load(source / "scores.npy"))
        log_run(cfg, result, flagged, datamodule)
    return result


def _metric_config(cfg: DictConfig) -> DictConfig | None:
    """``cfg.metric`` when it names a metric (``_target_``), else None.

    None also when only a preset's settings are left in it (``~metric`` / ``metric=null`` on a preset that sets
    ``metric.n_subsets``): no metric, with a warning.
    """
    metric = cfg.get("metric")
    if metric is None:
        return None
    if not isinstance(metric, DictConfig) or "_target_" not in metric:
        keys = sorted(metric) if isinstance(metric, DictConfig) else metric
        log.warning("metric holds %s but no metric (_target_): computing none; metric=lds selects the LDS", keys)
        return None
    return metric


def linear_datamodeling(cfg: DictConfig, datamodule: NoisyLabelDataModule, scores: np.ndarray, index: np.ndarray,
                        model_key: str) -> dict:
    """``metric=lds``: train on the metric's subsets of the training rows and rank them by the scores.

    Every subset is retrained through :func:`gradsift.artifacts.retrain` (cached by model and kept set, so every
    scorer of a sweep reuses them); its clean mean test loss is the target.

    Args:
        cfg: the run config (``metric``: a :class:`~gradsift.scoring.lds.LinearDatamodelingScore`).
        datamodule: the full training data, set up.
        scores: one score per training row, higher = more detrimental.
        index: the training rows' sample indices.
        model_key: the base model's cache key.

    Returns:
        ``{"lds", "lds_subsets", "lds_fraction", "lds_cache_hits"}``.
    """
    metric: LinearDatamodelingScore = instantiate(cfg.metric)
    masks = metric.masks(len(index))
    losses, hits = [], 0
    for mask in masks:
        test, _, hit, _ = artifacts.retrain(cfg, datamodule, index[mask], model_key)
        if "loss" not in test:
            raise ValueError(f"metric=lds needs the test loss of the retrained models; the model logs {sorted(test)}")
        losses.append(test["loss"])
        hits += bool(hit)
    return {"lds": metric(scores, masks, np.array(losses)), "lds_subsets": metric.n_subsets,
            "lds_fraction": metric.fraction, "lds_cache_hits": hits}
