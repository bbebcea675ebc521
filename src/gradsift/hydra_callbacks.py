"""Hydra callbacks: write the sweep's summary into the sweep's own folder when a multirun ends, and say how its jobs
went."""

from __future__ import annotations

import atexit
import json
import logging
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from gradsift.summarize import PAPER_DIR, SummaryRegression, write_summary

log = logging.getLogger(__name__)


@dataclass
class SweepJobs:
    """The jobs found in a sweep folder, by how they ended.

    Attributes:
        total: job folders (Hydra's ``.hydra/`` or a ``result.json`` in them).
        ran: finished ``ok`` in this sweep.
        skipped: finished ``ok`` before this sweep started (the re-run skipped them).
        failed: ``(job folder, error line)`` of every job that did not finish ``ok``.
    """

    total: int = 0
    ran: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)

    def lines(self, sweep_dir: Path) -> list[str]:
        """The report: one count line, then one line per failed job."""
        parts = [f"{self.ran} ran"] + ([f"{self.skipped} skipped (finished before with the same config; force=true "
                                         "runs them again)"] if self.skipped else [])
        head = f"{sweep_dir}: {self.total} jobs, " + ", ".join(parts)
        if not self.failed:
            return [head + ", none failed"]
        return [head, f"{len(self.failed)} of {self.total} jobs failed (re-run the same command with "
                      f"hydra.sweep.dir={sweep_dir} to run only these):"] + [f"  {job}: {why}" for job, why in self.failed]


def sweep_jobs(sweep_dir: Path, started: float | None = None) -> SweepJobs:
    """Read every job's ``result.json`` under ``sweep_dir``; a job that finished before ``started`` (a Unix time)
    counts as skipped."""
    jobs = SweepJobs()
    marks = [p for p in sweep_dir.rglob(".hydra") if p.is_dir()] + list(sweep_dir.rglob("result.json"))
    folders = sorted({p.parent for p in marks}, key=_job_order)
    for folder in folders:
        jobs.total += 1
        name = str(folder.relative_to(sweep_dir))
        record = folder / "result.json"
        try:
            result = json.loads(record.read_text())
        except FileNotFoundError:
            jobs.failed.append((name, "no result.json: it failed before the run started (see its run.log)"))
            continue
        except (OSError, ValueError) as e:
            jobs.failed.append((name, f"result.json does not read ({e})"))
            continue
        status = result.get("status")
        if status == "ok":
            if started is not None and record.stat().st_mtime < started:
                jobs.skipped += 1
            else:
                jobs.ran += 1
        elif status == "running":
            jobs.failed.append((name, "did not finish (killed or interrupted)"))
        else:
            jobs.failed.append((name, (str(result.get("error") or f"status {status}").splitlines() or [""])[0][:300]))
    return jobs


def _job_order(folder: Path) -> tuple:
    num = re.match(r"\d+", folder.name)
    return (int(num.group()) if num else 1 << 30, folder.name)


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
    a "failed" cell and the others are still summarized. Summary errors are logged, not raised. Last it prints how
    the jobs went (:class:`SweepJobs`): how many ran, were skipped as already finished, and "N of M jobs failed"
    with each failed job's folder and error line.
    """

    def __init__(self, out_dir: str | None = None, paper_dir: str | None = None) -> None:
        self.out_dir = Path(out_dir).absolute() if out_dir else None
        self.paper_dir = Path(paper_dir) if paper_dir else PAPER_DIR
        self._pending: DictConfig | None = None
        self._started: float | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._pending = config
        self._started = time.time()
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
        # printed, not logged: after the jobs, the root logger still writes into the last job's run.log
        try:
            write_summary([sweep_dir], str(table) if table else None, out, self.paper_dir,
                          force=self.out_dir is None, provenance=True)
            print(f"sweep summary: {out}.md", flush=True)
        except SummaryRegression as e:
            print(f"SummaryCallback: {e}", file=sys.stderr, flush=True)
        except Exception:  # noqa: BLE001 - a broken summary must not turn a finished sweep into a failure
            log.exception("SummaryCallback: could not summarize %s into %s", sweep_dir, out)
        jobs = sweep_jobs(sweep_dir, self._started)
        print("\n".join(jobs.lines(sweep_dir)), file=sys.stderr if jobs.failed else sys.stdout, flush=True)
