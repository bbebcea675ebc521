"""Influential-data identification for LLMs (OGA Section 7, Table 3 and Figure 4) as one pipeline flow.

``flow: identification`` in the config sends :func:`gradsift.pipeline.run` here. One run = one benchmark x one
method x one seed:

1. instantiate the datamodule (a DataInf benchmark: ``label`` = class id) and train the base model through
   :func:`gradsift.artifacts.base_artifacts` (cached: the methods of a sweep share one fine-tuned model and its
   gradients). ``attribution.reference: test`` makes the base run also gather the TEST prompts' gradients
   (stored as the reference split, ``grads_reference.npz``).
2. build the [n_test, n_train] score matrix of the configured method with its own
   :meth:`~gradsift.scoring.base.Scorer.pairwise`: per-class iForest for ``scorer=iforest`` (Outlier Gradient),
   ``-g_test . g_train`` for ``scorer=tracin``, DataInf with one test prompt as the reference for
   ``scorer=datainf``, and one fit per test prompt for any other reference-based influence scorer.
3. class-detection AUC and recall@top-k (k = training prompts per class = 90) per test prompt, as the OGA paper
   defines them (:func:`~gradsift.scoring.class_detection.class_detection_metrics`), mean and std over the test
   prompts; write ``result.json`` (same shape as the trim flow's), ``scores.npy`` (float32 [n_test, n_train]),
   ``classes.npz`` (train / test class ids), ``per_test.csv`` and the Figure-4 heatmap ``heatmap.png``
   (:func:`figure4_grid` draws all benchmarks x methods of a sweep in one PNG).

Switches under ``identification`` (defaults = ours; the OGA authors' choices cite ``nlp/`` of
anshuman23/outlier-gradient-analysis):

* ``features: all | last_layer``: score on every gradient block (ours; also the authors' Tracing / DataInf,
  ``LLM_INFL_ID_1.py`` -> ``src/lora_model.py`` ``compute_gradient`` keeps every ``lora_A`` / ``lora_B``) or only
  the blocks of the highest-numbered layer (the authors' Outlier Gradient, ``LLM_INFL_ID_2.py`` lines 20-33:
  ``layers.39`` q_proj / v_proj ``lora_A`` and ``lora_B`` of Llama-2-13B), see :func:`last_layer`.
* ``projection: none | srp`` with ``projection_components`` (``auto`` = sklearn's Johnson-Lindenstrauss bound at
  eps 0.1 for n_train + n_test rows, or an int) and ``projection_seed`` (null = the run seed; the authors leave it
  unseeded): a SparseRandomProjection fitted on the training and test rows stacked, as ``LLM_INFL_ID_2.py`` lines
  42-46 do (:func:`project`).
* ``scoring: ours | authors`` picks the value each metric ranks (:func:`metric_convention`), unless ``auc_on`` /
  ``recall_on`` (``abs | signed | negated``) are set.

The forests' own switch is ``scorer.calibration`` (:class:`~gradsift.scoring.outliers.PerClassIsolationForest`).
A run with any non-default switch gets it in its method name (``Outlier Gradient (last layer, SRP, authors'
metrics)``), so a summary keeps the conventions in separate rows; ``result["identification"]`` records them all.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
from hydra.utils import instantiate
from omegaconf import DictConfig

from gradsift.artifacts import base_artifacts
from gradsift.attribution.gradient_set import Block, GradientSet
from gradsift.record import finished_result, now, recorded, start_run, write_result
from gradsift.scoring.base import Scorer
from gradsift.scoring.class_detection import class_detection_metrics
from gradsift.viz import save_figure


def run(cfg: DictConfig, output_dir: str | Path, choices: dict | None = None) -> dict:
    """One identification run; writes ``result.json`` (status running -> ok/failed), ``scores.npy``,
    ``per_test.csv`` and ``heatmap.png`` in ``output_dir`` and returns the result dict (a run that already finished
    there with the same config is skipped, see :func:`gradsift.record.finished_result`)."""
    if (done := finished_result(cfg, output_dir)) is not None:
        return done
    t_start = time.perf_counter()
    # only rank 0 of a multi-process launch writes the run's files
    output_dir, result = start_run(cfg, output_dir, dataset=cfg.data.get("benchmark"), flow="identification")
    ident = cfg.get("identification") or {}
    with recorded(result, output_dir):  # result.json is written whatever happens, errors included
        scorer: Scorer = instantiate(cfg.scorer)
        settings = identification_settings(ident, getattr(scorer, "calibration", "none"))
        method = cfg.get("method") or scorer.pairwise_name + settings["tag"]
        result.update(method=method, scorer=(choices or {}).get("scorer") or type(scorer).__name__,
                      compressor=(choices or {}).get("compressor") or cfg.compressor._target_.rsplit(".", 1)[-1],
                      selection="identification", paper_table=cfg.get("paper_table"))
        if cfg.attribution.reference != "test":
            raise ValueError("flow=identification scores training prompts per TEST prompt: set "
                             f"attribution.reference=test (got {cfg.attribution.reference!r})")
        write_result(output_dir, result)
        datamodule = instantiate(cfg.data)
        datamodule.setup()
        art = base_artifacts(cfg, datamodule)
        result["base_key"], result["cache_hit"], result["model_cache_hit"] = art.key, art.hit, art.model_hit
        train, test = art.inputs.train, art.inputs.reference
        if test is None:
            raise RuntimeError("the base run gathered no test gradients (attribution.reference=test and a "
                               "datamodule with a test split are needed)")
        full_dim = int(train.dim)
        t0 = time.perf_counter()
        if settings["features"] == "last_layer":
            train, test = last_layer(train), last_layer(test)
        if settings["projection"] == "srp":
            seed = settings["projection_seed"]
            train, test = project(train, test, settings["projection_components"],
                                  int(cfg.seed) if seed is None else int(seed))
        scores = scorer.pairwise(train, test, seed=int(cfg.seed), device=ident.get("device", "auto"))
        score_s = time.perf_counter() - t0
        class_constant = getattr(scorer, "pairwise_class_scores", None) is not None
        auc_on, recall_on = metric_convention(settings["scoring"], class_constant, settings["auc_on"],
                                              settings["recall_on"])
        settings.update(auc_on=auc_on, recall_on=recall_on)
        result["identification"] = {k: v for k, v in settings.items() if k != "tag"}
        m = class_detection_metrics(scores, train.labels, test.labels, top_k=ident.get("top_k"), auc_on=auc_on,
                                    recall_on=recall_on)
        metrics = {f"base_test_{k}": v for k, v in art.model_meta["base_test"].items()}
        metrics.update({"detection_auc": m["auc"], "detection_auc_std": float(np.std(m["auc_per_test"])),
                        "recall": m["recall"], "recall_std": float(np.std(m["recall_per_test"])),
                        "top1": m["top1"], "top_k": int(ident.get("top_k") or train.n // len(np.unique(train.labels))),
                        "n_train": int(train.n), "n_test": int(test.n), "grad_dim": int(train.dim),
                        "grad_dim_full": full_dim})
        result["metrics"] = metrics
        result["timings"] = {"train_s": art.model_meta["train_s"], "gradients_s": art.meta["gradients_s"],
                             "score_s": score_s, "total_s": time.perf_counter() - t_start}
        result["finished_at"] = now()
        np.save(output_dir / "scores.npy", scores.astype(np.float32))
        np.savez(output_dir / "classes.npz", train=train.labels, test=test.labels)
        pd.DataFrame({"test_index": test.index, "class": test.labels, "auc": m["auc_per_test"],
                      "recall": m["recall_per_test"]}).to_csv(output_dir / "per_test.csv", index=False)
        if ident.get("heatmap", True):
            _heatmaps(output_dir, scores, scorer.pairwise_class_scores, train, test, datamodule,
                      f"{method} | {result['dataset']} | seed {cfg.seed} | AUC {m['auc']:.3f} recall {m['recall']:.3f}")
        result["status"] = "ok"
    return result


FEATURES = ("all", "last_layer")
PROJECTIONS = ("none", "srp")
SCORINGS = ("ours", "authors")


def identification_settings(ident, calibration: str = "none") -> dict:
    """The ``identification`` switches with their defaults, checked.

    Args:
        ident: the ``identification`` config (or a dict).
        calibration: the scorer's ``scorer.calibration``.

    Returns:
        The switches, plus ``tag``: the method-name suffix that names the non-default ones (empty for ours).
    """
    get = ident.get
    out = {"scoring": get("scoring") or "ours", "auc_on": get("auc_on"), "recall_on": get("recall_on"),
           "features": get("features") or "all", "projection": get("projection") or "none",
           "projection_components": get("projection_components") or "auto",
           "projection_seed": get("projection_seed"), "calibration": calibration}
    for key, allowed in (("scoring", SCORINGS), ("features", FEATURES), ("projection", PROJECTIONS)):
        if out[key] not in allowed:
            raise ValueError(f"identification.{key} must be one of {allowed}, got {out[key]!r}")
    pc = out["projection_components"]
    if pc != "auto" and not (isinstance(pc, int) and pc > 0):
        raise ValueError(f"identification.projection_components must be 'auto' or a positive int, got {pc!r}")
    tags = (["last layer"] if out["features"] == "last_layer" else []) + \
        (["SRP"] if out["projection"] == "srp" else []) + \
        ([f"{calibration}-calibrated"] if calibration != "none" else []) + \
        (["authors' metrics"] if out["scoring"] == "authors" else []) + \
        [f"{k} {out[k]}" for k in ("auc_on", "recall_on") if out[k] is not None]
    out["tag"] = f" ({', '.join(tags)})" if tags else ""
    return out


def metric_convention(scoring: str, class_constant: bool, auc_on: str | None = None,
                      recall_on: str | None = None) -> tuple[str, str]:
    """``(auc_on, recall_on)``: what the class-detection AUC and recall rank.

    See :func:`~gradsift.scoring.class_detection.ranked_value`; an explicit ``auc_on`` / ``recall_on`` wins.

    * ``ours``: ``|score|`` for an influence matrix (Tracing, DataInf: the sign says helpful or harmful, the
      magnitude how much); for the per-class forests (``class_constant``: every training prompt of class c holds
      class c's forest score) the score as it is, which is positive and so ``|score|`` without calibration, and
      keeps a z-score's sign with ``scorer.calibration=zscore``.
    * ``authors``: per-class forests ``signed`` / ``signed`` (``nlp/LLM_INFL_ID_2.py`` lines 73 and 81:
      ``roc_auc_score(gt_array, preds[i, :])`` and ``np.argsort(preds[i])[::-1]`` on ``score_samples``);
      Tracing / DataInf ``signed`` AUC and ``abs`` recall (``nlp/LLM_INFL_ID_1.py`` lines 86-87:
      ``roc_auc_score(gt_array, identity_df.iloc[i, :])``, and lines 96 and 100: ``np.argsort(np.abs(...))``).
      Their influence engine ships only as a ``.pyc``; DataInf's public ``IFEngineGeneration.compute_IF`` returns
      ``-g_test . H^-1 g_train`` (our sign, helpful = negative: DataInf's notebooks pick the most influential
      prompt by ``argmin``), and a copy of DataInf's AUC cell in the code index (repository not confirmed) takes
      ``-IF`` for the AUC, which ``auc_on=negated`` gives.
    """
    if scoring not in SCORINGS:
        raise ValueError(f"identification.scoring must be one of {SCORINGS}, got {scoring!r}")
    if class_constant:
        default = ("signed", "signed")
    else:
        default = ("abs", "abs") if scoring == "ours" else ("signed", "abs")
    return auc_on or default[0], recall_on or default[1]


_LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks)\.(\d+)\.")


def last_layer(gs: GradientSet) -> GradientSet:
    """The gradient blocks of the highest-numbered layer, in their order.

    The layer is the ``N`` of ``layers.N.`` / ``h.N.`` / ``layer.N.`` / ``blocks.N.`` in the block name; these are
    the authors' Outlier Gradient features (``nlp/LLM_INFL_ID_2.py`` lines 20-33 keep
    ``layers.39.self_attn.{q,v}_proj.lora_{A,B}`` of the 40-layer Llama-2-13B).

    Args:
        gs: per-sample gradients with per-parameter blocks.

    Returns:
        The same rows with the last layer's columns and blocks.
    """
    layers = [int(m.group(1)) if (m := _LAYER.search(b.name)) else None for b in gs.blocks]
    if all(n is None for n in layers):
        raise ValueError("identification.features=last_layer needs per-layer gradient blocks (names with "
                         f"'layers.N.' or 'h.N.'), got blocks {[b.name for b in gs.blocks][:5]}")
    top = max(n for n in layers if n is not None)
    keep = [b for b, n in zip(gs.blocks, layers) if n == top]
    cols = np.concatenate([np.arange(b.start, b.stop) for b in keep])
    blocks, start = [], 0
    for b in keep:
        blocks.append(Block(b.name, start, start + b.size))
        start += b.size
    return GradientSet(gs.grads[:, cols], gs.index, gs.labels, blocks=blocks)


def project(train: GradientSet, test: GradientSet, n_components: int | str = "auto",
            seed: int = 0) -> tuple[GradientSet, GradientSet]:
    """Sparse random projection of the training and test gradients, fitted on both stacked.

    The authors' ``SparseRandomProjection(n_components='auto').fit_transform(np.vstack((tr_grads, val_grads)))``
    (``nlp/LLM_INFL_ID_2.py`` lines 42-46).

    Args:
        train: the training gradients.
        test: the test gradients.
        n_components: ``auto`` = sklearn's Johnson-Lindenstrauss dimension at eps 0.1 for ``n_train + n_test``
            rows (5,920 for the 1,000 DataInf prompts), or an int.
        seed: the projection's seed (the authors' is unseeded).

    Returns:
        The projected training and test sets, each with one block ``srp``.
    """
    from sklearn.random_projection import SparseRandomProjection

    x = np.vstack([np.asarray(train.grads, dtype=np.float64), np.asarray(test.grads, dtype=np.float64)])
    try:
        z = np.asarray(SparseRandomProjection(n_components=n_components, random_state=seed).fit_transform(x))
    except ValueError as e:  # 'auto' above the gradient dimension
        raise ValueError(f"identification.projection_components={n_components!r} does not fit gradients of "
                         f"dimension {x.shape[1]} ({e}); set an int below it") from e
    block = [Block("srp", 0, z.shape[1])]
    return (GradientSet(z[: train.n], train.index, train.labels, blocks=block),
            GradientSet(z[train.n :], test.index, test.labels, blocks=block))


def _heatmaps(output_dir: Path, scores: np.ndarray, per_class: np.ndarray | None, train: GradientSet,
              test: GradientSet, datamodule, title: str) -> None:
    """Figure 4: |score| of every (test, train) pair grouped by class; per-class iForest also by class."""
    import matplotlib.pyplot as plt

    from gradsift.viz.heatmap import influence_heatmap

    names = getattr(datamodule, "class_names", None)
    names = list(names) if names is not None and len(names) > int(np.max(test.labels)) else None
    fig = influence_heatmap(scores, test.labels, train.labels, path=output_dir / "heatmap.png", title=title,
                            class_names=names)
    plt.close(fig)
    if per_class is not None:
        fig = influence_heatmap(per_class, test.labels, None, path=output_dir / "heatmap_classes.png", title=title,
                                class_names=names)
        plt.close(fig)


def figure4_grid(runs_root: str | Path, path: str | Path, ranks: bool = True) -> Path:
    """Figure 4 as one PNG: benchmarks (rows) x methods (columns) from the ``result.json`` + ``scores.npy`` of
    the identification runs under ``runs_root``. ``ranks=True`` draws each test prompt's row as the percentile
    rank of ``|score|`` over the training prompts (what AUC and recall use; raw magnitudes are dominated by a few
    large-gradient samples), both axes grouped by class; the first seed of each (benchmark, method) is drawn."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.stats import rankdata

    runs = {}
    for f in sorted(Path(runs_root).rglob("result.json")):
        r = json.loads(f.read_text())
        if r.get("flow") == "identification" and r.get("status") == "ok" and (f.parent / "scores.npy").exists():
            runs.setdefault((r["dataset"], r["method"]), (r, f.parent))
    if not runs:
        raise FileNotFoundError(f"no finished identification runs under {runs_root}")
    def by(order: list[str]):
        return lambda x: (order.index(x) if x in order else len(order), x)

    datasets_ = sorted({d for d, _ in runs}, key=by(["grammars", "math_without_reason", "math_with_reason"]))
    methods = sorted({m for _, m in runs}, key=by(["Outlier Gradient", "Gradient Tracing", "DataInf"]))
    fig, axes = plt.subplots(len(datasets_), len(methods), figsize=(4.2 * len(methods), 3.4 * len(datasets_)),
                             squeeze=False)
    for i, d in enumerate(datasets_):
        for j, m in enumerate(methods):
            ax = axes[i][j]
            if (d, m) not in runs:
                ax.axis("off")
                continue
            r, folder = runs[(d, m)]
            s = np.abs(np.load(folder / "scores.npy").astype(np.float64))
            test_cls = pd.read_csv(folder / "per_test.csv")["class"].to_numpy()
            if (folder / "classes.npz").exists():
                with np.load(folder / "classes.npz") as z:
                    train_cls = z["train"]
            else:  # runs written before classes.npz existed: the release lists training prompts class by class
                train_cls = np.repeat(np.unique(test_cls), s.shape[1] // len(np.unique(test_cls)))
            rows, cols = np.argsort(test_cls, kind="stable"), np.argsort(train_cls, kind="stable")
            img, train_cls = s[rows][:, cols], train_cls[cols]
            if ranks:
                img = np.stack([rankdata(row) / len(row) for row in img])
            ax.imshow(img, aspect="auto", cmap="magma", interpolation="nearest")
            for e in np.flatnonzero(np.diff(train_cls)) + 0.5:
                ax.axvline(e, color="white", linewidth=0.3)
            for e in np.flatnonzero(np.diff(test_cls[rows])) + 0.5:
                ax.axhline(e, color="white", linewidth=0.3)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{m} | {d}\nAUC {r['metrics']['detection_auc']:.3f}, recall {r['metrics']['recall']:.3f}",
                         fontsize=8)
            if j == 0:
                ax.set_ylabel("test prompts (by class)", fontsize=7)
            if i == len(datasets_) - 1:
                ax.set_xlabel("training prompts (by class)", fontsize=7)
    fig.suptitle("|score| " + ("percentile rank per test prompt" if ranks else "") + " (OGA Figure 4 layout)",
                 fontsize=9)
    return save_figure(fig, path, dpi=130)
