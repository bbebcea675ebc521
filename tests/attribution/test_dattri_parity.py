"""Row (f) of the gradient benchmark does the same job as ours: dattri 0.3.0's LoGra and our LoGra compress the
same per-sample gradients (Gram matrices of both match the exact one within JL tolerance). Skipped without dattri."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import torch

pytest.importorskip("dattri.algorithm.logra")

from gradsift.attribution.compressors import IdentityCompressor, LoGraCompressor  # noqa: E402
from gradsift.attribution.gradients import PerSampleGradients  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def test_dattri_logra_and_ours_preserve_the_same_inner_products(tmp_path):
    from dattri.algorithm.logra import LoGraAttributor
    from dattri.task import AttributionTask

    torch.set_num_threads(1)
    spec = importlib.util.spec_from_file_location("bench_gradients", ROOT / "benchmarks" / "bench_gradients.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    torch.manual_seed(0)
    model = bench.LM("tiny")
    layers = [n for n in bench.conv1d_to_linear(model) if re.search(r"(c_attn|c_proj|c_fc)$", n)]
    model.eval()
    B = 6
    batches = [{"x": torch.randint(0, 101, (B, 16)), "index": torch.arange(B) + i * B,
                "label": torch.zeros(B, dtype=torch.long)} for i in range(2)]
    pattern = r"(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.(weight|bias)$"  # dattri projects biases too

    def gather(compressor):
        eng = PerSampleGradients(pattern, compressor, progress=False)
        p, plan = eng.prepare(model)
        return torch.cat([eng.compress_batch(model, b, p, plan) for b in batches]).double()

    exact, ours = gather(IdentityCompressor()), gather(LoGraCompressor(4096, seed=0))
    task = AttributionTask(loss_func=lambda m, b, d: m.per_sample_loss(b).mean(), model=model,
                           checkpoints=model.state_dict())
    att = LoGraAttributor(task, layer_names=layers, hessian="Identity", device="cpu", proj_dim=4096, offload="cpu",
                          cache_dir=str(tmp_path))  # else dattri writes batch_metadata.json into the cwd
    att.cache(torch.utils.data.DataLoader(bench._Batches(batches), batch_size=B, shuffle=False, collate_fn=lambda b: b))
    theirs = torch.cat([c for c, _ in att.offload_manager.create_gradient_dataloader(data_type="gradients",
                                                                                      batch_size=4)]).double()
    assert theirs.shape == (2 * B, len(layers) * 4096)
    gram = exact @ exact.T

    def rel(x):
        return float((x @ x.T - gram).norm() / gram.norm())

    # both are JL sketches of the same per-sample gradients (measured: 0.20 ours, 0.21 dattri)
    assert rel(ours) < 0.35 and rel(theirs) < 0.35, (rel(ours), rel(theirs))
