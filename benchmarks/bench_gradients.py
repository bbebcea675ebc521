"""Benchmark the per-sample gradient engine against plain training and the naive per-sample loop.

    python benchmarks/bench_gradients.py --device cuda --model gpt2-small --seq-len 256 --batch-size 32 --r 4096

Prints a markdown table (hardware, date, command). Imports only torch/transformers and gradsift.attribution
(and dattri for row (f), when installed: ``pip install dattri==0.3.0``).

Row (f) runs dattri 0.3.0's ``LoGraAttributor`` (block-projected influence, Kronecker projection of inputs and
output gradients with r_in = r_out = sqrt(r) per layer, hessian="Identity", gradients offloaded to the CPU).
dattri hooks only ``nn.Linear`` while HF GPT-2 uses ``Conv1D``, so rows (e') and (f) run on a copy of the model
whose Conv1D layers are converted to ``nn.Linear`` (transposed weights, same math), ours and dattri's alike.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import platform
import re
import sys
import tempfile
import time

import torch
import torch._dynamo
import torch.nn.functional as F
from torch import nn

from gradsift.attribution.compressors import DropoutCompressor, GaussianCompressor, LoGraCompressor
from gradsift.attribution.gradients import PerSampleGradients, select_parameters


class LM(nn.Module):
    """GPT-2 (random weights) with a per-sample next-token loss (sum over tokens, one row per sequence)."""

    def __init__(self, size: str):
        super().__init__()
        from transformers import GPT2Config, GPT2LMHeadModel

        cfg = GPT2Config() if size == "gpt2-small" else GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=101, n_positions=64)
        cfg.attn_pdrop = cfg.resid_pdrop = cfg.embd_pdrop = 0.0
        self.gpt = GPT2LMHeadModel(cfg)

    def forward(self, x: torch.Tensor, **_) -> torch.Tensor:  # dattri runs model(**batch) to size its projections
        return self.gpt(input_ids=x).logits

    def per_sample_loss(self, batch: dict) -> torch.Tensor:
        x = batch["x"]
        logits = self.gpt(input_ids=x).logits[:, :-1].float()
        return F.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="none").mean(1)


def conv1d_to_linear(model: nn.Module) -> list[str]:
    """Replace every HF ``Conv1D`` (y = x W + b, W[in, out]) by an ``nn.Linear`` with weight W^T, in place.

    Returns the names of the converted modules."""
    from transformers.pytorch_utils import Conv1D

    names = []
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Conv1D):
                w = child.weight
                lin = nn.Linear(w.shape[0], w.shape[1], device=w.device, dtype=w.dtype)
                with torch.no_grad():
                    lin.weight.copy_(w.T)
                    lin.bias.copy_(child.bias)
                setattr(parent, name, lin)
                names.append(f"{parent_name}.{name}" if parent_name else name)
    return names


class _Batches(torch.utils.data.Dataset):
    """The benchmark's prebuilt batches as a DataLoader dataset (``__getitems__`` returns whole slices: no collation
    cost), for libraries that want a DataLoader (dattri)."""

    def __init__(self, batches: list[dict]):
        self.cat = {k: torch.cat([b[k] for b in batches]) for k in batches[0]}

    def __len__(self) -> int:
        return len(self.cat["x"])

    def __getitems__(self, idx: list[int]) -> dict:
        s = slice(idx[0], idx[-1] + 1)
        return {k: v[s] for k, v in self.cat.items()}


def bench_dattri(args, device: torch.device, model: "LM", batches: list[dict], spec: str, base: float,
                 rate_c: float) -> list[tuple[str, float, float, str]]:
    """Rows (e') our engine + logra and (f) dattri 0.3.0 LoGra, both on the Linear copy of the model."""
    import copy

    try:
        from dattri.algorithm.logra import LoGraAttributor
        from dattri.task import AttributionTask
    except ImportError as e:
        return [("(f) dattri LoGra", float("nan"), float("nan"),
                 f"not run: dattri is not installed ({e}); pip install dattri==0.3.0")]
    model.to("cpu")  # only the Linear copy on the device while (e') and (f) run
    try:
        lin = copy.deepcopy(model)
        layers = [n for n in conv1d_to_linear(lin) if re.search(r"(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)$", n)]
        return _bench_linear(args, device, lin.to(device).eval(), layers, batches, spec, base, rate_c,
                             LoGraAttributor, AttributionTask)
    finally:
        model.to(device)


def _bench_linear(args, device, lin, layers, batches, spec, base, rate_c, LoGraAttributor, AttributionTask):
    rows = _Rows()
    eng = PerSampleGradients(spec, LoGraCompressor(args.r, seed=0), progress=False, autocast="bf16" if args.bf16 else None)
    p, plan = eng.prepare(lin)
    s, mem_lin = _timed(lambda: [eng.compress_batch(lin, b, p, plan).cpu() for b in batches], device, 0)
    ours_lin = len(batches) * args.batch_size / s
    rows.append((f"(e') engine + logra r={args.r}, Linear GPT-2", ours_lin, mem_lin, f"{ours_lin / base:.0%} of (a)"))
    ac = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if args.bf16 else contextlib.nullcontext

    def loss_func(mod, batch, dev):  # mean over the batch: dattri multiplies its projected grads by the batch size
        with ac():
            return mod.per_sample_loss(batch).mean()

    loader = torch.utils.data.DataLoader(_Batches(batches), batch_size=args.batch_size, shuffle=False,
                                         collate_fn=lambda b: b)
    task = AttributionTask(loss_func=loss_func, model=lin, checkpoints=lin.state_dict())
    from importlib.metadata import version

    label = f"(f) dattri {version('dattri')} LoGra r={args.r}"
    n = len(batches) * args.batch_size
    for eager in (False, True):  # dattri's compressor is @torch.compile'd; retry eager if compiling fails here
        try:
            torch._dynamo.config.disable = eager
            # cache_dir: dattri writes (and re-reads!) batch_metadata.json there, "." by default
            att = LoGraAttributor(task, layer_names=layers, hessian="Identity", device=str(device), proj_dim=args.r,
                                  offload="cpu", cache_dir=tempfile.mkdtemp(prefix="dattri-"))
            s, m = _timed(lambda: att.cache(loader), device, n)
            rate = n / s
            mem = f", peak memory (e')/(f) {mem_lin / m:.2f}" if m == m and m > 0 else ""
            rows.append((label + (" (torch.compile disabled)" if eager else ""), rate, m,
                         f"{rate / base:.0%} of (a); (e') {ours_lin / rate:.2f}x, (c) {rate_c / rate:.2f}x its "
                         f"samples/s{mem}; {att.total_proj_dim} dims/sample"))
            break
        except Exception as e:  # noqa: BLE001 - record a peer library's failure in the table, do not hide it
            msg = f"{type(e).__name__}: {e}".replace("|", "/").replace("\n", " ")[:300]
            rows.append((label + (" (torch.compile disabled)" if eager else ""), float("nan"), float("nan"),
                         f"failed: {msg}"))
        finally:
            torch._dynamo.config.disable = False
    return rows


class _Rows(list):
    """Rows that are also printed (stderr) as soon as they are measured: a killed run keeps what it measured."""

    def append(self, row) -> None:
        print(f"ROW | {row[0]} | {row[1]:.2f} | {row[2]:.2f} | {row[3]} |", file=sys.stderr, flush=True)
        super().append(row)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device: torch.device, n: int) -> tuple[float, float]:
    """(seconds, peak GiB) of ``fn()``; one warm-up call first."""
    fn()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    fn()
    _sync(device)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return time.perf_counter() - t, peak


def bench_lm(args, device: torch.device) -> list[tuple[str, float, float, str]]:
    torch.manual_seed(0)
    model = LM(args.model).to(device).eval()
    vocab = model.gpt.config.vocab_size
    batches = [{"x": torch.randint(0, vocab, (args.batch_size, args.seq_len), device=device),
                "index": torch.arange(args.batch_size) + i * args.batch_size,
                "label": torch.zeros(args.batch_size, dtype=torch.long)} for i in range(args.n_batches)]
    n = args.n_batches * args.batch_size
    spec = r"(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight$"
    params = select_parameters(model, spec)
    ac = torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16 else torch.autocast(device.type, enabled=False)
    rows = _Rows()

    def train():
        for b in batches:
            with ac:
                loss = model.per_sample_loss(b).mean()
            loss.backward()
        model.zero_grad(set_to_none=True)

    s, m = _timed(train, device, n)
    rows.append(("(a) plain batched fwd+bwd", n / s, m, ""))
    base = n / s

    keep = DropoutCompressor(args.r, seed=0)
    eng = PerSampleGradients(spec, keep, progress=False, autocast="bf16" if args.bf16 else None)
    eng.prepare(model)
    flat_idx = torch.from_numpy(keep.indices).to(device)
    naive_n = max(1, min(n, args.naive_samples))

    def naive():
        for b in range(naive_n):
            one = {k: v[b % args.batch_size:b % args.batch_size + 1] for k, v in batches[0].items()}
            with ac:
                loss = model.per_sample_loss(one).sum()
            g = torch.autograd.grad(loss, list(params.values()))
            torch.cat([x.reshape(-1) for x in g])[flat_idx].cpu()

    s, m = _timed(naive, device, naive_n)
    rows.append((f"(b) naive per-sample loop ({naive_n} samples)", naive_n / s, m, ""))
    naive_rate = naive_n / s

    for label, comp in (("(c) engine + dropout", keep), ("(d) engine + gaussian", GaussianCompressor(args.r, seed=0)),
                        ("(e) engine + logra", LoGraCompressor(args.r, seed=0))):
        eng = PerSampleGradients(spec, comp, progress=False, autocast="bf16" if args.bf16 else None)
        p, plan = eng.prepare(model)
        use = batches[:1] if isinstance(comp, GaussianCompressor) else batches
        s, m = _timed(lambda: [eng.compress_batch(model, b, p, plan).cpu() for b in use], device, 0)
        rate = len(use) * args.batch_size / s
        note = f"{rate / base:.0%} of (a), {rate / naive_rate:.1f}x (b)" if "dropout" in label else f"{rate / base:.0%} of (a)"
        rows.append((f"{label} r={args.r}", rate, m, note))
    args._lm = (model, batches, spec, base, rows[2][1])  # for the peer-library rows, run last (see main)
    # Table 11 setting: seconds to compress n_table11 samples, dropout vs gaussian (gaussian extrapolated)
    for name in ("c", "d"):
        r = [x for x in rows if x[0].startswith(f"({name})")][0]
        rows.append((f"Table 11: {args.table11} samples, {r[0][4:].split(' r=')[0]}", args.table11 / r[1], float("nan"),
                     "seconds (extrapolated from the rate above)"))
    return rows


def bench_resnet(args, device: torch.device) -> list[tuple[str, float, float, str]]:
    from gradsift.models.resnet import resnet34  # CIFAR ResNet-34 (3x3 stem, no max-pool)

    net = resnet34(num_classes=10)

    class Cls(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def per_sample_loss(self, batch):
            return F.cross_entropy(self.net(batch["x"]), batch["label"], reduction="none")

    model = Cls().to(device).eval()
    bs = args.resnet_batch
    batches = [{"x": torch.randn(bs, 3, 32, 32, device=device), "label": torch.randint(0, 10, (bs,), device=device),
                "index": torch.arange(bs)} for _ in range(args.n_batches)]
    n = bs * len(batches)

    @torch.no_grad()
    def infer():
        for b in batches:
            model.net(b["x"]).cpu()

    s, m = _timed(infer, device, n)
    base = n / s
    eng = PerSampleGradients("last_layer", progress=False)
    p, plan = eng.prepare(model)
    s2, m2 = _timed(lambda: [eng.compress_batch(model, b, p, plan).cpu() for b in batches], device, n)
    return [("ResNet-34 CIFAR plain inference", base, m, ""),
            ("ResNet-34 CIFAR last-layer per-sample grads", n / s2, m2, f"{n / s2 / base:.0%} of inference")]


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model", choices=("gpt2-small", "tiny"), default="gpt2-small")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--r", type=int, default=4096)
    ap.add_argument("--n-batches", type=int, default=4)
    ap.add_argument("--naive-samples", type=int, default=32)
    ap.add_argument("--table11", type=int, default=2000)
    ap.add_argument("--resnet-batch", type=int, default=256)
    ap.add_argument("--no-bf16", dest="bf16", action="store_false")
    ap.add_argument("--no-resnet", dest="resnet", action="store_false")
    ap.add_argument("--no-dattri", dest="dattri", action="store_false", help="skip rows (e') and (f)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    hw = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    rows = bench_lm(args, device) + (bench_resnet(args, device) if args.resnet else [])
    if args.dattri:  # last: a peer library that misbehaves cannot cost the other rows
        at = [i for i, r in enumerate(rows) if r[0].startswith("(e)")][0] + 1
        rows[at:at] = bench_dattri(args, device, *args._lm)
    lines = [f"command: `python benchmarks/bench_gradients.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
             f"hardware: {hw}; torch {torch.__version__}; date {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
             f"model {args.model}, seq {args.seq_len}, batch {args.batch_size}, bf16 autocast {args.bf16}", "",
             "| setting | samples/s (or s) | peak GPU GiB | note |", "|---|---|---|---|"]
    lines += [f"| {a} | {b:.2f} | {c:.2f} | {d} |" for a, b, c, d in rows]
    out = "\n".join(lines)
    print(out)
    return out


if __name__ == "__main__":
    main()
