"""Hydra callbacks: write the paper-table summary when a multirun ends."""

from __future__ import annotations

import atexit
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from gradsift.summarize import PAPER_DIR, write_summary

log = logging.getLogger(__name__)


class SummaryCallback(Callback):
    """After a multirun, summarize the sweep dir into ``<out_dir>/<experiment>/<table>.{md,csv,tex,png}``.

    The table is ``cfg.paper_table`` (a dotted key such as ``oga.table1_synthetic_mlp_moons``); without it the
    callback does nothing. It runs on the submitting machine for every launcher. Hydra skips ``on_multirun_end``
    when a job raised or its worker was killed, so the summary is also written at interpreter exit in that case:
    the dead job shows as a "failed" cell and the others are still summarized. Summary errors are logged, not raised.
    """

    def __init__(self, out_dir: str = "multirun_summaries", paper_dir: str | None = None) -> None:
        self.out_dir = Path(out_dir).absolute()
        self.paper_dir = Path(paper_dir) if paper_dir else PAPER_DIR
        self._pending: DictConfig | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._pending = config
        atexit.register(self._write_pending)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._pending = config
        self._write_pending()

    def _write_pending(self) -> None:
        config, self._pending = self._pending, None
        if config is None:
            return
        table = OmegaConf.select(config, "paper_table", default=None)
        if not table:
            log.info("SummaryCallback: no paper_table in the config; no summary written")
            return
        experiment = (
            OmegaConf.select(config, "hydra.runtime.choices.experiment", default=None)
            or OmegaConf.select(config, "experiment_name", default=None)
            or OmegaConf.select(config, "hydra.job.name", default="multirun")
        )
        sweep_dir = Path(str(config.hydra.sweep.dir))
        out = self.out_dir / str(experiment).replace("/", "_") / str(table).split(".", 1)[-1]
        try:
            write_summary([sweep_dir], str(table), out, self.paper_dir)
            log.info("SummaryCallback: wrote %s.md", out)
        except Exception:  # noqa: BLE001 - a broken summary must not turn a finished sweep into a failure
            log.exception("SummaryCallback: could not summarize %s into %s", sweep_dir, out)
