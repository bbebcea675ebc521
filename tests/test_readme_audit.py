"""The README's "Audit your own data" walkthrough, run exactly as written (its bash blocks, in an empty folder, with
the console scripts of this environment), and what it promises checked (issue #19, a user's own data and model)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
SECTION = "## Audit your own data"


def readme_commands() -> str:
    """The bash blocks of the README section, joined in order."""
    text = (REPO / "README.md").read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    blocks = re.findall(r"```bash\n(.*?)```", text[start:end if end > 0 else None], flags=re.S)
    assert blocks, f"no bash block under {SECTION!r}"
    return "\n".join(blocks)


def test_the_readme_walkthrough_runs_end_to_end(tmp_path: Path) -> None:
    script = tmp_path / "walkthrough.sh"
    script.write_text("set -euo pipefail\n" + readme_commands())
    bin_dir = Path(sys.executable).parent  # gradsift-run and gradsift-audit of this environment
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": str(REPO / "src"), "GRADSIFT_CACHE": str(tmp_path / "cache")}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run(["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout

    run = json.loads((tmp_path / "runs" / "mydata" / "result.json").read_text())
    assert run["status"] == "ok" and run["dataset"] == "my_data"
    m = run["metrics"]
    assert m["n_trimmed"] == 21  # 5% of the 420 training rows (600 less 20% test, 10% val)
    assert m["true_positives"] >= 8 and m["detection_auc"] > 0.75  # the flipped labels stand out (11, 0.86 here)
    assert 0.8 < m["test_acc"] <= 1
    assert "wrote runs/mydata (flagged.csv, result.json, run.log, scores.npy)" in out
    assert "base model" in (tmp_path / "runs" / "mydata" / "run.log").read_text()

    flagged = pd.read_csv(tmp_path / "flagged.csv")
    assert len(flagged) == 420 and flagged["flagged"].sum() == 21
    (hits,) = re.findall(r"flagged 21; (\d+) of them have a label that differs from clean_label", out)
    assert int(hits) >= 8
    (line,) = [ln for ln in out.splitlines() if ln.startswith("retrained without the 21 flagged samples: ")]
    assert re.search(r"test_acc 0\.\d+ .*\(the checkpoint: test_loss 0\.\d+, test_acc 0\.\d+\)", line), line
    assert "Tip:" not in proc.stdout + proc.stderr and "GPU available" not in proc.stdout + proc.stderr
