"""``retrain_from``: retrain on what an earlier detection run flagged, in another job or on another machine.

A detection run (``retrain=false``) of a trim config writes ``result.json`` and ``flagged.csv``. Both are small,
unlike the base model and gradients behind them, so they can travel where the cache cannot: a later job of the same
config with ``retrain_from=<that run's folder, or its sweep's>`` takes the flags, the base and detection metrics
from there and only retrains. The retrain is cached under the same key as in one job (base model key, kept set), so
both ways give one cache entry. The OGA authors' recipe needs this on a GPU whose cache lasts only while it is warm:
one call trains the 100-epoch base model and scores every method, later calls retrain
(``scripts/gpu/authors.sh``, ``FROM=``).

A scorer that needs no model (``Scorer.needs_model`` False: the random control, whose scores are drawn from the
seed) needs no flags either: :func:`kept_rows` scores such a run here, and takes from the detection run of any scorer
of the same base model (its :data:`MODEL_KEYS` sections equal) only the base model's facts. So a control can be
retrained from the committed detection runs of a base call that never scored it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from gradsift.artifacts import MODEL_KEYS
from gradsift.cache import without_locations

log = logging.getLogger(__name__)

#: the config sections that decide what a run flags: the base model's (``MODEL_KEYS``), the gradients' and the
#: scoring's; a detection run can stand in for this run's scoring only when all of them are equal
FLAG_KEYS = [*MODEL_KEYS, "gradients", "compressor", "attribution", "scorer", "trim"]
#: the files a detection run's flags may be in, first found wins (``flagged.npz``: as committed under
#: ``multirun_summaries``, :func:`compact_flags`; ``flagged.csv.gz``: the older committed form)
FLAGGED_FILES = ("flagged.csv", "flagged.npz", "flagged.csv.gz")


def model_free(cfg: DictConfig) -> bool:
    """Whether ``cfg.scorer`` scores without a model or gradients (its class sets ``needs_model = False``)."""
    target = OmegaConf.select(cfg, "scorer._target_")
    if not target:
        return False
    from hydra.utils import get_class

    try:
        cls = get_class(target)
    except Exception:  # noqa: BLE001 - an unimportable scorer is refused where it is built, with its own message
        return False
    return not getattr(cls, "needs_model", True)


def differing_sections(cfg: DictConfig, recorded: dict, keys: list[str] | None = None) -> list[str]:
    """The ``keys`` sections (default :data:`FLAG_KEYS`; dotted keys, one level down) where ``recorded`` differs from
    ``cfg``.

    :data:`gradsift.cache.LOCATION_KEYS` are left out.
    """
    here = OmegaConf.to_container(cfg, resolve=True)
    out = []
    for key in FLAG_KEYS if keys is None else keys:
        a, b = without_locations(here.get(key)), without_locations(recorded.get(key))
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{key}.{k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        else:
            out.append(key)
    return out


def find_detection_run(cfg: DictConfig, path: str | Path) -> tuple[Path, dict]:
    """The finished run under ``path`` whose scoring config is this run's (for a :func:`model_free` scorer: that
    run if there is one, else any finished run of the same base model, flags or not).

    Args:
        cfg: this run's config.
        path: a run folder (with ``result.json``) or a folder above several (a sweep): every ``result.json`` below it
            is a candidate.

    Returns:
        ``(run folder, its record)``.

    Raises:
        FileNotFoundError: ``path`` does not exist or holds no ``result.json``.
        ValueError: no finished (``ok``) run with flags matches; the message lists, per candidate, the config keys
            that differ.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"retrain_from={path}: no such folder")
    records = [root / "result.json"] if (root / "result.json").exists() else sorted(root.rglob("result.json"))
    if not records:
        raise FileNotFoundError(f"retrain_from={path}: no result.json there or below it; expected the folder of a "
                                "finished detection run (retrain=false) or of its sweep")
    free = model_free(cfg)
    keys = list(MODEL_KEYS) if free else FLAG_KEYS
    why: list[str] = []
    base_only: tuple[Path, dict] | None = None
    for file in records:
        try:
            rec = json.loads(file.read_text())
        except (OSError, ValueError) as e:
            why.append(f"{file}: unreadable ({e})")
            continue
        if rec.get("status") != "ok":
            why.append(f"{file}: status {rec.get('status')!r}, not 'ok'")
            continue
        if not free and not any((file.parent / name).exists() for name in FLAGGED_FILES):
            why.append(f"{file.parent}: no {' or '.join(FLAGGED_FILES)}")
            continue
        if free and not any(k.startswith("base_test_") for k in rec.get("metrics", {})):
            why.append(f"{file.parent}: records no base model metrics (base_test_*)")
            continue
        if diff := differing_sections(cfg, rec.get("config", {}), keys):
            why.append(f"{file.parent}: differs in {', '.join(diff[:6])}{' ...' if len(diff) > 6 else ''}")
            continue
        if free and differing_sections(cfg, rec.get("config", {})):
            base_only = base_only or (file.parent, rec)  # this base model, another scorer: taken if no run of its own
            continue
        return file.parent, rec
    if base_only:
        return base_only
    what = ("trained this run's base model (the scorer needs no model, so any scorer's run will do)" if free
            else "flagged with this run's config")
    raise ValueError(f"retrain_from={path}: none of its {len(records)} run(s) {what} (sections "
                     f"{', '.join(keys)} must be equal):\n  " + "\n  ".join(why[:20]))


def read_flags(folder: Path, sample_index: np.ndarray) -> tuple[pd.DataFrame, np.ndarray]:
    """The detection run's ``flagged`` table and, in ``sample_index`` order, which rows it removes.

    Args:
        folder: the detection run's folder.
        sample_index: the training samples' indices, as this run's datamodule has them.

    Returns:
        ``(flagged table, most detrimental first; boolean mask over sample_index, True = removed)``.

    Raises:
        ValueError: the table's samples are not this run's training samples (another dataset or subset).
    """
    file = next(folder / name for name in FLAGGED_FILES if (folder / name).exists())
    flagged = read_flag_table(file)
    missing = {"index", "flagged"} - set(flagged.columns)
    if missing:
        raise ValueError(f"{file}: no column(s) {sorted(missing)}; expected the flagged.csv a run writes")
    by_index = flagged.set_index("index")["flagged"].astype(bool)
    if len(by_index) != len(sample_index) or not by_index.index.isin(sample_index).all():
        raise ValueError(f"{file}: flags for {len(by_index)} samples, but this run trains on {len(sample_index)} "
                         "others; the detection run used other data (retrain_from must come from the same data)")
    return flagged, by_index.reindex(sample_index).to_numpy()


def source_facts(folder: Path, rec: dict) -> dict:
    """What this run records about the run it took the flags from (``result["retrain_from"]``)."""
    return {"path": str(folder), "config_hash": rec.get("config_hash"), "finished_at": rec.get("finished_at"),
            "commit": rec.get("versions", {}).get("commit"), "model_key": rec.get("model_key")}



def kept_rows(cfg: DictConfig, datamodule, found: tuple[Path, dict] | None = None
              ) -> tuple[Path, dict, pd.DataFrame, np.ndarray, np.ndarray]:
    """What ``cfg.retrain_from`` says this run keeps.

    Args:
        cfg: the run config (``retrain_from`` set).
        datamodule: the training data, set up.
        found: :func:`find_detection_run`'s answer, when the caller has it already (else it is looked up here).

    Returns:
        ``(detection run folder, its record, its flagged table, the training sample indices, removed mask)``.

    For a :func:`model_free` scorer the flags are this run's own (:func:`score_here`): the table then has every
    column a detection run writes, ``score`` and ``clean_label`` included.
    """
    source, rec = found or find_detection_run(cfg, cfg.retrain_from)
    index = np.asarray(getattr(datamodule.train_set, "index", np.arange(len(datamodule.train_set))))
    if model_free(cfg):
        flagged = score_here(cfg, datamodule, index)
        return source, rec, flagged, index, flagged.sort_index()["flagged"].to_numpy(bool)
    flagged, remove = read_flags(source, index)
    return source, rec, flagged, index, remove


def score_here(cfg: DictConfig, datamodule, index: np.ndarray) -> pd.DataFrame:
    """The flagged table of a :func:`model_free` scorer, computed without a model: the scorer sees the training
    rows (their indices, labels and the run's seed) and no gradient, as it would ignore them in a detection run."""
    from hydra.utils import instantiate

    from gradsift.attribution.gradient_set import GradientSet
    from gradsift.attributor import flag_samples
    from gradsift.scoring.base import ScoringInputs

    ds = datamodule.train_set
    labels = ds.column("label") if hasattr(ds, "column") else np.zeros(len(index), dtype=np.int64)
    train = GradientSet(grads=np.zeros((len(index), 0), dtype=np.float32), index=index, labels=np.asarray(labels))
    scorer, trim = instantiate(cfg.scorer), instantiate(cfg.trim)
    scores = scorer.fit_score(ScoringInputs(train=train, seed=cfg.seed))
    return flag_samples(train, scores, scorer, trim, datamodule)


def read_flag_table(file: Path) -> pd.DataFrame:
    """A flags file as a table: ``flagged.csv`` / ``.csv.gz`` as written, ``flagged.npz`` as ``index`` + ``flagged``
    in index order (:func:`compact_flags`)."""
    if file.suffix != ".npz":
        return pd.read_csv(file)
    with np.load(file) as z:
        n = int(z["n"])
        index = np.cumsum(np.concatenate([z["index_first"], z["index_diff"]]).astype(np.int64))[:n]
        flagged = np.unpackbits(z["flagged_bits"], count=n).astype(bool)
    return pd.DataFrame({"index": index, "flagged": flagged})


def compact_flags(folder: str | Path) -> Path:
    """Rewrite a run's ``flagged.csv`` (or an older ``flagged.csv.gz``) as ``flagged.npz``: what ``retrain_from``
    reads and nothing else.

    The sample indices in increasing order as their first value and differences (all 1 for a whole dataset) and the
    flags as bits: about 5 kB for 50,000 samples, against 111 kB for ``index,flagged`` as gzipped CSV and ~0.65 MB
    for the full table with its float scores. Committed detection runs stay small enough to travel with the tree.

    Args:
        folder: the run's folder (one of :data:`FLAGGED_FILES` in it).

    Returns:
        The path written (the file it was made from is removed, once the written one reads back the same).

    Raises:
        FileNotFoundError: no flags file in ``folder``.
    """
    folder = Path(folder)
    file = next((folder / name for name in FLAGGED_FILES if (folder / name).exists()), None)
    if file is None:
        raise FileNotFoundError(f"{folder}: no {' or '.join(FLAGGED_FILES)} (expected a detection run's folder, "
                                "e.g. a job folder of an authors_base_* sweep)")
    table = read_flag_table(file)[["index", "flagged"]].sort_values("index", kind="stable")
    index = table["index"].to_numpy(np.int64)
    flags = table["flagged"].astype(bool).to_numpy()
    out = folder / "flagged.npz"
    with open(out, "wb") as fh:  # a file handle: numpy adds no .npz suffix and the zip has no extra path
        np.savez_compressed(fh, n=np.int64(len(index)), index_first=index[:1], index_diff=np.diff(index),
                            flagged_bits=np.packbits(flags))
    back = read_flag_table(out)
    if not (np.array_equal(back["index"].to_numpy(), index) and np.array_equal(back["flagged"].to_numpy(), flags)):
        out.unlink()
        raise RuntimeError(f"{out}: did not read back as {file}; {file} left as it was")
    for name in FLAGGED_FILES:
        if folder / name != out and (folder / name).exists():
            (folder / name).unlink()
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m gradsift.handoff RUN_DIR...``: compact each run folder's flags for committing."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m gradsift.handoff",
                                     description="Rewrite each detection run's flagged.csv as flagged.npz "
                                                 "(sample indices and one bit per sample), what retrain_from= reads.")
    parser.add_argument("runs", nargs="+", type=Path, help="run folders holding flagged.csv")
    args = parser.parse_args(argv)
    failed = 0
    for folder in args.runs:  # every folder is tried: one without flags does not stop the others
        try:
            print(compact_flags(folder))
        except (FileNotFoundError, RuntimeError) as err:
            print(f"error: {err}", file=sys.stderr)
            failed += 1
    return 2 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
