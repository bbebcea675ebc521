"""Loggers: a wandb run written offline (read back from its .wandb file), csv and none."""

from __future__ import annotations

import csv
import json
import struct
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from pytorch_lightning.loggers import CSVLogger

from gradsift.loggers import log_attribution, run_tags, wandb_logger

FLAGGED = [
    {"index": 7, "label": 1, "clean_label": 0, "score": 0.9, "image": np.zeros((8, 8, 3), np.uint8)},
    {"index": 3, "label": 0, "clean_label": 0, "score": 0.5, "image": np.full((8, 8, 3), 255, np.uint8)},
]


def wandb_records(path: Path) -> Iterator:
    """Records of a .wandb file: wandb's LevelDB-style log (7-byte ':W&B' header, 32 KiB blocks, chunk headers
    crc32/len/type with FULL=1 FIRST=2 MIDDLE=3 LAST=4) holding wandb_internal_pb2.Record protobufs."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B", f"{path} is not a .wandb file"
    pos, buf = 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            pos += block - pos % block
            continue
        if pos + 7 + length > len(data):  # still being written
            return
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            buf = b""
            yield record


def _finished_records(path: Path, timeout_s: float = 60.0) -> list:
    """The run's records once wandb-core has flushed its exit record (finish() can return slightly before)."""
    deadline = time.monotonic() + timeout_s
    while True:
        records = list(wandb_records(path)) if path.stat().st_size > 7 else []
        if any(r.HasField("exit") for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def _keys(items) -> set[str]:
    return {i.key or "/".join(i.nested_key) for i in items}


def test_run_tags() -> None:
    tags = {"scorer": "iforest", "compressor": None, "budget": {"kind": "fraction", "value": 0.05}, "dataset": "moons"}
    assert run_tags(tags) == ["budget=fraction:0.05", "dataset=moons", "scorer=iforest"]
    assert run_tags(None) == []


def test_wandb_offline_run_logs_config_metrics_and_attribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for key, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true",
                       "WANDB_X_DISABLE_STATS": "true", "WANDB_X_DISABLE_MACHINE_INFO": "true",
                       "WANDB_DISABLE_GIT": "true", "WANDB_DISABLE_CODE": "true"}.items():
        monkeypatch.setenv(key, value)
    logger = wandb_logger(group="table1_moons", save_dir=tmp_path,
                          tags={"scorer": "iforest", "compressor": "dropout", "budget": {"kind": "fraction", "value": 0.05}})
    logger.log_hyperparams({"scorer": {"n_estimators": 100}, "seed": 0})
    logger.log_metrics({"metrics/test_acc": 0.9})
    fig, ax = plt.subplots()
    ax.hist([0.1, 0.5, 0.9])
    log_attribution(logger, np.linspace(0, 1, 20), FLAGGED, plots={"score_hist": fig}, timings={"score_s": 1.5})
    plt.close(fig)
    logger.experiment.finish()

    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    records = _finished_records(next(run_dir.glob("run-*.wandb")))
    kinds = {r.WhichOneof("record_type") for r in records}
    assert {"run", "config", "history", "summary"} <= kinds
    (run,) = [r.run for r in records if r.HasField("run")]
    assert run.run_group == "table1_moons" and run.project == "gradsift"
    assert set(run.tags) == {"scorer=iforest", "compressor=dropout", "budget=fraction:0.05"}
    assert {"scorer", "seed"} <= set().union(*(_keys(r.config.update) for r in records if r.HasField("config")))
    history = set().union(*(_keys(r.history.item) for r in records if r.HasField("history")))
    assert {"metrics/test_acc", "attribution/score_hist/_type", "attribution/flagged/_type",
            "attribution/plots/score_hist/_type"} <= history
    summary = set().union(*(_keys(r.summary.update) for r in records if r.HasField("summary")))
    assert {"attribution/score_mean", "attribution/n_flagged", "timings/score_s"} <= summary
    (table_file,) = (run_dir / "files" / "media" / "table").rglob("*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"] == ["index", "given_label", "clean_label", "score", "image"]
    assert [row[:4] for row in table["data"]] == [[7, 1, 0, 0.9], [3, 0, 0, 0.5]]


def test_csv_logger_writes_flagged_rows(tmp_path: Path) -> None:
    logger = CSVLogger(save_dir=tmp_path, name="csv")
    log_attribution(logger, np.array([0.0, 1.0, 2.0]), FLAGGED, timings={"score_s": 2.0})
    rows = list(csv.DictReader((Path(logger.log_dir) / "flagged.csv").read_text().splitlines()))
    assert [(r["index"], r["given_label"], r["clean_label"], r["score"]) for r in rows] == [
        ("7", "1", "0", "0.9"), ("3", "0", "0", "0.5")]
    metrics = list(csv.DictReader((Path(logger.log_dir) / "metrics.csv").read_text().splitlines()))
    assert float(metrics[0]["attribution/score_mean"]) == pytest.approx(1.0)
    assert float(metrics[0]["timings/score_s"]) == pytest.approx(2.0)


def test_no_logger_is_a_no_op() -> None:
    log_attribution(None, np.zeros(3), FLAGGED)
