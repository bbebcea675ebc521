"""Training and evaluation from the config: fit a fresh model, test it, record per-epoch test curves, load weights.

Every model the pipeline trains (the base model and each retrain) goes through :func:`fit_and_evaluate`, so the
recipe (``cfg.model``, ``cfg.trainer``, ``cfg.seed``) is applied in one place. Those fits run under
:func:`quiet_lightning`: Lightning's per-fit console chatter and known deprecation warnings are left out of
gradsift's own runs (and only of those: filters are removed when the fit returns).
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from gradsift import paired
from gradsift.cache import read_file
from gradsift.data.base import NoisyLabelDataModule

log = logging.getLogger(__name__)


#: Lightning's info lines that every fit prints and that say nothing about a gradsift run (which accelerators exist,
#: a logger advertisement, that max_epochs was reached)
LIGHTNING_CHATTER = ("GPU available:", "TPU available:", "HPU available:", "\N{ELECTRIC LIGHT BULB} Tip:",
                     "`Trainer.fit` stopped:")
#: (category, message pattern) of warnings that gradsift's fits raise through no choice of the user's: a Lightning /
#: torch deprecation, the in-memory datasets' single-process loaders, CPU trainers on a GPU machine
KNOWN_WARNINGS = ((FutureWarning, r".*isinstance\(treespec, LeafSpec\)"), (Warning, r".*does not have many workers"),
                  (Warning, r".*GPU available but not used"))
_LIGHTNING_LOGGERS = ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero",
                      "lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


class _DropChatter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(LIGHTNING_CHATTER)


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Within the block, drop :data:`LIGHTNING_CHATTER` and :data:`KNOWN_WARNINGS`; everything else Lightning says
    (warnings about the user's own settings included) still shows."""
    chatter = _DropChatter()
    loggers = [logging.getLogger(name) for name in _LIGHTNING_LOGGERS]
    for logger in loggers:
        logger.addFilter(chatter)
    try:
        with warnings.catch_warnings():
            for category, pattern in KNOWN_WARNINGS:
                warnings.filterwarnings("ignore", message=pattern, category=category)
            yield
    finally:
        for logger in loggers:
            logger.removeFilter(chatter)


#: held while a fit seeds the global RNG and builds its model, so fits in threads of one process
#: (:mod:`gradsift.parallel`) initialise their weights exactly as one fit alone does
_SEED_LOCK = threading.Lock()


class EpochTestCurve(pl.Callback):
    """Clean test metrics after every training epoch (OGA Figure 3's accuracy-per-epoch curves).

    Accuracy for classifiers (the module has ``logits``), otherwise the mean per-sample test loss.

    Args:
        datamodule: gives the test loader.

    Attributes:
        values: one value per finished epoch.
        halves: per finished epoch, the same value on the test samples of even and of odd ``index``: two disjoint
            halves, for choosing an epoch on one and reporting it on the other (:func:`with_best_epoch`,
            ``cross_acc``).
        correct: classifiers only, per finished epoch, which test samples are classified correctly (bool, in the
            order of ``index``), for the paired test of two models on the same samples (:mod:`gradsift.paired`).
        index: the test samples' ``index``, sorted (the order of every ``correct`` vector).
    """

    def __init__(self, datamodule: NoisyLabelDataModule):
        self.datamodule = datamodule
        self.values: list[float] = []
        self.halves: list[list[float]] = []
        self.correct: list[np.ndarray] = []
        self.index: np.ndarray | None = None

    @torch.no_grad()
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Evaluate on the test split (eval mode, the trainer's device and precision) and append the value."""
        was_training = pl_module.training
        pl_module.eval()
        classifier = hasattr(pl_module, "logits")
        # correct predictions (classifier) or per-sample losses, summed on the device: read back once per epoch,
        # not once per batch (each read waits for everything queued)
        # [even, odd] index halves of the test split; their sum is the whole split
        summed = torch.zeros(2, dtype=torch.float64, device=pl_module.device)
        counts = torch.zeros(2, dtype=torch.float64, device=pl_module.device)
        hits, seen = [], []  # classifiers: per batch, which samples are right, and their index (kept on the device)
        for batch in self.datamodule.test_dataloader():
            batch = trainer.strategy.batch_to_device(batch)
            with trainer.precision_plugin.forward_context():
                if classifier:
                    pred = pl_module.logits(batch).argmax(-1)
                    value = (pred == batch.get("clean_label", batch["label"])).double()
                else:
                    value = pl_module.per_sample_loss(batch).float().double()
            index = torch.as_tensor(batch["index"], device=summed.device).long()
            summed.index_add_(0, index % 2, value)
            counts.index_add_(0, index % 2, torch.ones_like(value))
            if classifier:
                hits.append(value > 0.5)
                seen.append(index)
        if hits:
            index = torch.cat(seen).cpu().numpy()
            order = np.argsort(index, kind="stable")
            self.correct.append(torch.cat(hits).cpu().numpy()[order])
            self.index = index[order]
        summed, counts = summed.tolist(), counts.tolist()
        self.values.append(sum(summed) / max(sum(counts), 1))
        self.halves.append([v / c if c else float("nan") for v, c in zip(summed, counts)])
        pl_module.train(was_training)


class UninitializedMemoryFill(pl.Callback):
    """``torch.utils.deterministic.fill_uninitialized_memory`` for one trainer's fit and test, restored after each.

    With deterministic algorithms on (``trainer.deterministic: true | warn``) torch fills every new tensor with NaN
    (integers with their largest value), one fill kernel per allocation, so that a kernel that reads memory it never
    wrote gives the same, visible, result every run. ``enabled=False`` keeps the deterministic algorithms and skips
    the fill: the values computed stay the same as long as no kernel reads unwritten memory (one that did would
    most likely have turned the loss NaN with the fill on). Config key ``fill_uninitialized_memory``.

    Args:
        enabled: the flag's value while the trainer runs.
    """

    #: trainers inside a setup/teardown in this process, and the flag's value before the first of them: trainings
    #: in threads of one process (gradsift.parallel) share the process-wide flag, so the last one out restores it
    _active = 0
    _before: bool | None = None
    _lock = threading.Lock()

    def __init__(self, enabled: bool):
        self.enabled = bool(enabled)
        self._inside = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Set the flag (the value before the first active trainer is kept for :meth:`teardown`)."""
        cls = type(self)
        with cls._lock:
            if not self._inside:
                if cls._active == 0:
                    cls._before = torch.utils.deterministic.fill_uninitialized_memory
                cls._active += 1
                self._inside = True
            torch.utils.deterministic.fill_uninitialized_memory = self.enabled

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Restore the value the flag had before :meth:`setup` once no other trainer is inside one."""
        cls = type(self)
        with cls._lock:
            if not self._inside:
                return
            self._inside = False
            cls._active -= 1
            if cls._active == 0 and cls._before is not None:
                torch.utils.deterministic.fill_uninitialized_memory = cls._before
                cls._before = None


def fit_and_evaluate(cfg: DictConfig, datamodule: NoisyLabelDataModule, callbacks: list | None = None,
                     stage: str = "train") -> tuple[pl.LightningModule, dict, float]:
    """Train a fresh model from ``cfg.model`` on ``datamodule`` and test it.

    Args:
        cfg: the run config (``model``, ``trainer``, ``seed``, ``eval_every_epoch``, ``fill_uninitialized_memory``).
        datamodule: the data to fit on (possibly a kept subset, :meth:`NoisyLabelDataModule.with_keep`).
        callbacks: extra Lightning callbacks for the fit.
        stage: what this fit is for (``base``, ``retrain``, ...), for callers that count fits.

    Returns:
        ``(model, test metrics, seconds)``. Test metrics are every ``test/<name>`` the module logs, as
        ``{name: value}`` (``acc`` for classifiers, ``perplexity`` for causal LMs); with ``eval_every_epoch: true``
        also ``curve``, the per-epoch test accuracy (or loss), see :class:`EpochTestCurve`, and for classifiers
        ``best_acc`` / ``best_epoch`` (:func:`with_best_epoch`).
    """
    with quiet_lightning():
        with _SEED_LOCK:  # the global RNG seeds the weights: one initialisation at a time (gradsift.parallel)
            pl.seed_everything(cfg.seed, workers=True, verbose=False)
            model = instantiate(cfg.model)
        curve = EpochTestCurve(datamodule) if cfg.get("eval_every_epoch") else None
        fill = cfg.get("fill_uninitialized_memory")
        extra = ([curve] if curve else []) + ([UninitializedMemoryFill(fill)] if fill is not None else [])
        trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=(callbacks or []) + extra, logger=False)
        t0 = time.perf_counter()
        trainer.fit(model, datamodule=datamodule)
        seconds = time.perf_counter() - t0
        metrics = _test_metrics(trainer, model, datamodule)
    if curve is not None:
        metrics = with_best_epoch({**metrics, "curve": curve.values, "curve_halves": curve.halves,
                                   **({"curve_correct": curve.correct, "curve_index": curve.index}
                                      if curve.correct else {})})  # with_best_epoch checks one vector per epoch
    log.info("%s model: trained in %.2f s; test %s", stage, seconds,
             ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
    return model, metrics, seconds


def with_best_epoch(test: dict) -> dict:
    """``test`` plus ``best_acc`` = max of its per-epoch accuracy ``curve`` and ``best_epoch`` (1-based, the first
    epoch reaching it), where it has both ``acc`` and a ``curve`` (else ``test`` unchanged); with ``curve_halves``
    also ``cross_acc`` and ``cross_epochs``.

    With ``curve_correct`` (per epoch, which test samples are right, ordered as ``curve_index``: what
    :class:`EpochTestCurve` records for classifiers), also ``correct`` (the last epoch's), ``best_correct`` (the best
    epoch's) and ``cross_correct`` (odd-index samples from the epoch chosen on the even half, even-index ones from the
    epoch chosen on the odd half), each :func:`gradsift.paired.pack`-ed; ``curve_correct`` / ``curve_index`` are
    dropped (too large to keep: one vector per epoch).

    ``acc`` stays the final epoch's test accuracy. ``best_acc`` is the OGA authors' reported number
    (``cifar-10-100n/OD-experiment.py``: ``np.max`` over the 100 epochs' test accuracies, base and retrained
    model alike): an epoch chosen on the test set itself, so an optimistic estimate; summaries mark it so
    (``gradsift-summarize --accuracy best``).

    ``cross_acc`` is the same early stopping without the optimism: the epoch is chosen on one half of the test
    samples (even / odd ``index``) and its accuracy read on the other half, both ways, and the two readings averaged
    (two-fold cross-validated selection; ``cross_epochs`` = the epochs chosen on the even and on the odd half).
    No sample both chooses the epoch and measures it, so this is what a held-out validation split of half the test
    set's size would give, without taking any training sample (``gradsift-summarize --accuracy cross``).

    Args:
        test: test metrics as :func:`fit_and_evaluate` returns them.

    Returns:
        A new dict.
    """
    curve = test.get("curve")
    per_epoch, index = test.get("curve_correct"), test.get("curve_index")
    test = {k: v for k, v in test.items() if k not in ("curve_correct", "curve_index")}
    if "acc" not in test or not curve:
        return test
    best = _first_argmax(curve)
    out = {**test, "best_acc": float(curve[best]), "best_epoch": best + 1}
    vectors = per_epoch is not None and index is not None and len(per_epoch) == len(curve)
    if vectors:
        out["correct"], out["best_correct"] = paired.pack(per_epoch[-1]), paired.pack(per_epoch[best])
    halves = test.get("curve_halves")
    # both halves non-empty (a test split whose indices are all even, say, has no odd half to choose on)
    if halves and len(halves) == len(curve) and np.isfinite(np.asarray(halves, dtype=float)).all():
        on_even, on_odd = _first_argmax([h[0] for h in halves]), _first_argmax([h[1] for h in halves])
        out["cross_acc"] = (float(halves[on_even][1]) + float(halves[on_odd][0])) / 2
        out["cross_epochs"] = [on_even + 1, on_odd + 1]
        if vectors:
            odd = np.asarray(index) % 2 == 1
            out["cross_correct"] = paired.pack(np.where(odd, per_epoch[on_even], per_epoch[on_odd]))
    return out


def _first_argmax(values: list[float]) -> int:
    """The first position of the largest value (NaNs never chosen)."""
    return max(range(len(values)), key=lambda i: (values[i] if values[i] == values[i] else -np.inf, -i))


def evaluate(cfg: DictConfig, model: pl.LightningModule, datamodule: NoisyLabelDataModule) -> dict:
    """Test metrics of an already-trained ``model`` on ``datamodule``'s test split, with the config's trainer.

    Args:
        cfg: the run config (``trainer``).
        model: the trained module.
        datamodule: gives the test split.

    Returns:
        ``{name: value}`` for every ``test/<name>`` the module logs, as :func:`fit_and_evaluate` returns them.
    """
    with quiet_lightning():
        trainer: pl.Trainer = instantiate(cfg.trainer, logger=False)
        return _test_metrics(trainer, model, datamodule)


def _test_metrics(trainer: pl.Trainer, model: pl.LightningModule, datamodule: NoisyLabelDataModule) -> dict:
    logged = trainer.test(model, datamodule=datamodule, verbose=False)[0]
    return {k.split("/", 1)[1]: float(v) for k, v in logged.items() if k.startswith("test/")}


def fit_and_test(cfg: DictConfig, datamodule: NoisyLabelDataModule, callbacks: list | None = None,
                 stage: str = "train") -> tuple[pl.LightningModule, float, float]:
    """:func:`fit_and_evaluate` reduced to ``(model, clean test accuracy, seconds)``."""
    model, metrics, seconds = fit_and_evaluate(cfg, datamodule, callbacks, stage=stage)
    return model, metrics.get("acc", float("nan")), seconds


def load_model(cfg: DictConfig, path: Path) -> pl.LightningModule:
    """``cfg.model`` with the weights in ``path/model.pt``, in eval mode, on the device the trainer would use."""
    model = instantiate(cfg.model)
    model.load_state_dict(read_file(path / "model.pt", lambda p: torch.load(p, weights_only=True, map_location="cpu")))
    accel = str(cfg.trainer.get("accelerator", "auto"))
    if torch.cuda.is_available() and accel in ("auto", "gpu", "cuda"):
        model = model.cuda()
    return model.eval()
