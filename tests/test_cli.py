"""The console scripts find the packaged configs from any working directory (no repository-relative path)."""

from __future__ import annotations

import subprocess
import sys

import yaml


def test_gradsift_run_composes_the_packaged_configs_from_anywhere(tmp_path):
    code = "import sys; from gradsift.cli import run; sys.argv = ['gradsift-run', '--cfg', 'job', 'scorer=l2']; run()"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    cfg = yaml.safe_load(out.stdout)
    assert cfg["scorer"]["_target_"] == "gradsift.scoring.outliers.NormScorer"
    assert cfg["compressor"]["_target_"] == "gradsift.attribution.compressors.IdentityCompressor"
