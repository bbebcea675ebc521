"""Experiment loggers (wandb offline by default, csv, none), the attribution logging helper, and a run's log.

wandb needs no account here: runs are written offline under ``<save_dir>/wandb/offline-run-*`` unless
``WANDB_MODE=online`` is set; upload later with ``wandb sync <save_dir>/wandb/offline-run-*``.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from pytorch_lightning.loggers import CSVLogger, Logger, WandbLogger

TAG_KEYS = ("scorer", "compressor", "budget", "dataset")


def run_tags(tags: Mapping[str, Any] | Sequence[str] | None) -> list[str]:
    """``{"scorer": "iforest", "budget": {"kind": "fraction", "value": 0.05}}`` -> ``["budget=fraction:0.05", "scorer=iforest"]``.

    wandb tags are flat strings (max 64 chars); a mapping keeps the key so the UI can filter "scorer=iforest".
    """
    if tags is None:
        return []
    if not isinstance(tags, Mapping):
        return sorted(str(t)[:64] for t in tags)
    out = []
    for key, value in tags.items():
        if value is None:
            continue
        if isinstance(value, Mapping):
            value = ":".join(str(v) for v in value.values() if v is not None)
        out.append(f"{key}={value}"[:64])
    return sorted(out)


def wandb_logger(
    project: str = "gradsift",
    group: str | None = None,
    tags: Mapping[str, Any] | Sequence[str] | None = None,
    save_dir: str | Path = ".",
    name: str | None = None,
    **kwargs: Any,
) -> WandbLogger:
    """Lightning's WandbLogger, offline unless ``WANDB_MODE`` says otherwise; grouped by experiment, tagged by
    scorer / compressor / budget / dataset so a sweep can be compared in the wandb UI."""
    os.environ.setdefault("WANDB_MODE", "offline")
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    return WandbLogger(
        project=project,
        group=group,
        tags=run_tags(tags),
        name=name,
        save_dir=str(save_dir),
        offline=os.environ["WANDB_MODE"] in ("offline", "dryrun"),
        **kwargs,
    )


def log_attribution(
    logger: Logger | None,
    scores: np.ndarray,
    flagged: Sequence[Mapping[str, Any]] = (),
    plots: Mapping[str, Any] | None = None,
    timings: Mapping[str, float] | None = None,
    prefix: str = "attribution",
) -> None:
    """Log the score histogram, the top flagged samples and figures of one attribution run.

    ``scores``: one per training sample, higher = more detrimental. ``flagged``: rows with keys ``index``,
    ``label`` (given), ``clean_label``, ``score`` and optionally ``image`` (HxW[xC] array, logged as a thumbnail).
    ``plots``: name -> matplotlib figure or image path. ``timings``: per-stage seconds (``train_s``, ...).
    wandb gets a Histogram, a Table and Images; csv writes ``flagged.csv`` and summary stats; None does nothing.
    """
    if logger is None:
        return
    scores = np.asarray(scores, dtype=float)
    stats = {
        f"{prefix}/score_mean": float(scores.mean()),
        f"{prefix}/score_std": float(scores.std()),
        f"{prefix}/score_max": float(scores.max()),
        f"{prefix}/n_flagged": len(flagged),
    }
    stats.update({f"timings/{k}": float(v) for k, v in (timings or {}).items()})
    if isinstance(logger, WandbLogger):
        _log_wandb(logger, scores, flagged, plots or {}, stats, prefix)
    elif isinstance(logger, CSVLogger):
        logger.log_metrics(stats)
        logger.save()
        _write_flagged_csv(Path(logger.log_dir) / "flagged.csv", flagged)
    else:
        logger.log_metrics(stats)


def _log_wandb(logger: WandbLogger, scores: np.ndarray, flagged: Sequence[Mapping[str, Any]],
               plots: Mapping[str, Any], stats: dict[str, Any], prefix: str) -> None:
    import wandb

    run = logger.experiment
    columns = ["index", "given_label", "clean_label", "score"]
    with_images = any("image" in row for row in flagged)
    table = wandb.Table(columns=columns + (["image"] if with_images else []))
    for row in flagged:
        cells = [int(row["index"]), _plain(row.get("label")), _plain(row.get("clean_label")), float(row["score"])]
        if with_images:
            cells.append(wandb.Image(np.asarray(row["image"])) if row.get("image") is not None else None)
        table.add_data(*cells)
    payload: dict[str, Any] = {f"{prefix}/score_hist": wandb.Histogram(scores), f"{prefix}/flagged": table}
    payload.update({f"{prefix}/plots/{name}": wandb.Image(fig) for name, fig in sorted(plots.items())})
    run.log(payload)
    run.summary.update(stats)


def _plain(value: Any) -> Any:
    """numpy / torch scalars -> Python scalars (wandb tables reject numpy ints)."""
    return value.item() if hasattr(value, "item") else value


def _write_flagged_csv(path: Path, flagged: Sequence[Mapping[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "given_label", "clean_label", "score"])
        for row in flagged:
            w.writerow([row["index"], row.get("label"), row.get("clean_label"), row["score"]])


def log_run(cfg: DictConfig, result: dict, flagged: pd.DataFrame, datamodule, top: int = 50) -> None:
    """One experiment-logger run per job (``logger=wandb|csv``); nothing with ``logger=none``.

    Logs the config, metrics, per-stage timings, the score histogram, the top flagged samples (with thumbnails for
    images) and the score plot.

    Args:
        cfg: the run config (its ``logger`` section).
        result: the run record (``config``, ``metrics``, ``timings``, ``method``, ``dataset``, ``seed``).
        flagged: the attribution's flagged table, most detrimental first.
        datamodule: the run's data (for image thumbnails).
        top: flagged rows to log.
    """
    lg = _run_logger(cfg, "attribution")
    if not lg:
        return
    from gradsift.viz.scores import score_plot

    lg.log_hyperparams(result["config"])
    scalars = {f"metrics/{k}": float(v) for k, v in result["metrics"].items() if isinstance(v, (int, float))}
    scalars.update({f"metrics/{k}/{kk}": float(vv) for k, v in result["metrics"].items() if isinstance(v, dict)
                    for kk, vv in v.items() if isinstance(vv, (int, float))})  # e.g. test_best_vs_base/p (McNemar)
    lg.log_metrics(scalars)
    rows = flagged.head(top).to_dict("records")
    x = datamodule.full_train_set.columns.get("x")
    if isinstance(x, torch.Tensor) and x.ndim == 4:
        rows_at = datamodule.full_train_set.positions([row["index"] for row in rows])
        for row, p in zip(rows, rows_at):
            img = x[int(p)]
            row["image"] = (img.permute(1, 2, 0) if img.shape[0] in (1, 3) else img).cpu().numpy()
    fig = score_plot(flagged, title=f"{result['method']} | {result['dataset']} | seed {result['seed']}")
    log_attribution(lg, flagged["score"].to_numpy(), rows, plots={"scores": fig}, timings=result["timings"])
    lg.finalize("success")


def _run_logger(cfg: DictConfig, stage: str) -> Logger | bool:
    lg = cfg.get("logger")
    if not lg or "_target_" not in lg:
        return False
    return instantiate(lg, **({"name": stage} if "name" in lg else {}))
