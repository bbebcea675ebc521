"""Hydra callbacks: write the sweep's summary into the sweep's own folder when a multirun ends."""

from __future__ import annotations

import atexit
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from gradsift.summarize import PAPER_DIR, SummaryRegression, write_summary

log = logging.getLogger(__name__)


class SummaryCallback(Callback):
    """After a multirun, summarize the sweep dir into ``<sweep dir>/summary/<table>.{md,csv,tex,png}``.

    The table is ``cfg.paper_table`` (a dotted key such as ``oga.table1_synthetic_mlp_moons``); without it, a
    table of the sweep's own runs (``summary/summary.{md,csv}``: rows = methods, columns = metrics). The sweep's
    copy carries the volatile provenance lines (machines, newest result). It never writes ``multirun_summaries/``:
    publishing there is an explicit ``experiments/summarize.py ... --out multirun_summaries/...`` (the Makefile
    targets), which refuses to replace a summary that has more finished cells. ``out_dir`` writes
    ``<out_dir>/<experiment>/<table>`` instead, under that same refusal.

    It runs on the submitting machine for every launcher. Hydra skips ``on_multirun_end`` when a job raised or
    its worker was killed, so the summary is also written at interpreter exit in that case: the dead job shows as
    a "failed" cell and the others are still summarized. Summary errors are logged, not raised.
    """

    def __init__(self, out_dir: str | None = None, paper_dir: str | None = None) -> None:
        self.out_dir = Path(out_dir).absolute() if out_dir else None
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
        name = str(table).split(".", 1)[-1] if table else "summary"
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if self.out_dir is None:
            out = sweep_dir / "summary" / name
        else:
            experiment = (
                OmegaConf.select(config, "hydra.runtime.choices.experiment", default=None)
                or OmegaConf.select(config, "experiment_name", default=None)
                or OmegaConf.select(config, "hydra.job.name", default="multirun")
            )
            out = self.out_dir / str(experiment).replace("/", "_") / name
        try:
            write_summary([sweep_dir], str(table) if table else None, out, self.paper_dir,
                          force=self.out_dir is None, provenance=True)
            log.info("SummaryCallback: wrote %s.md", out)
        except SummaryRegression as e:
            log.error("SummaryCallback: %s", e)
        except Exception:  # noqa: BLE001 - a broken summary must not turn a finished sweep into a failure
            log.exception("SummaryCallback: could not summarize %s into %s", sweep_dir, out)
