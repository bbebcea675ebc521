"""Per-sample gradient gathering on N ranks of one host through the Attributor's DDP path (issue #21).

    python benchmarks/bench_multigpu.py --out /tmp/mg                         # CUDA: N = 1, 2, 4, 8 (NCCL)
    python benchmarks/bench_multigpu.py --out /tmp/mg --tiny --device cpu --ranks 1,2   # CPU dry run (gloo)

For each model and each N the parent launches N worker processes (torchrun's environment: RANK, LOCAL_RANK,
WORLD_SIZE, MASTER_ADDR/PORT), each builds the same model and data (fixed seeds) and calls
``Attributor.gather(dist=torch_process_group())`` (every rank gathers rows ``rank, rank + N, ...`` into a shared
:class:`GradientStore`, rank 0 merges in dataset order: the path ``AttributionCallback`` takes under DDP). The
parent then compares every N's merged store with N = 1's row for row (index and labels exactly, gradients to
``--rtol`` of each row's largest entry) and records samples/s and the scaling ratio against N = 1.

Models: GPT-2 small built from a config (random weights, seq 256, ``conf/compressor/dropout.yaml`` r = 4096 on the
attention/MLP weights, as ``bench_gradients.py``) and the CIFAR ResNet-34 last layer on random CIFAR-shaped images.
Writes ``bench_multigpu.json`` (every record) and ``bench_multigpu.md`` (the table) into ``--out``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
GPT2_PARAMS = r"(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight$"
GPT2_SMALL = {"model_type": "gpt2", "n_layer": 12, "n_head": 12, "n_embd": 768, "n_positions": 1024,
              "vocab_size": 50257}
GPT2_TINY = {"model_type": "gpt2", "n_layer": 2, "n_head": 2, "n_embd": 32, "n_positions": 64, "vocab_size": 101}


def sizes(args) -> dict:
    """Per-model sample counts, batch sizes and sequence length (``--tiny``: seconds on a CPU)."""
    if args.tiny:
        return {"gpt2": {"n": 24, "batch": 4, "seq": 16, "r": 256}, "resnet34": {"n": 40, "batch": 8}}
    return {"gpt2": {"n": args.gpt2_samples, "batch": 32, "seq": args.seq_len, "r": 4096},
            "resnet34": {"n": args.resnet_samples, "batch": 256}}


class RandomData:
    """A gradsift-style datamodule (``attribution_dataloader``) over fixed-seed random samples, no val split."""

    def __init__(self, model: str, size: dict):
        g = torch.Generator().manual_seed(1)
        n = size["n"]
        if model == "gpt2":
            ids = torch.randint(0, size["vocab"], (n, size["seq"]), generator=g)
            self.train_set = [{"input_ids": ids[i], "labels": ids[i], "label": torch.tensor(0), "index": torch.tensor(i)}
                              for i in range(n)]
        else:
            x, y = torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)
            self.train_set = [{"x": x[i], "label": y[i], "index": torch.tensor(i)} for i in range(n)]
        self.batch = size["batch"]

    def attribution_dataloader(self, split: str = "train"):
        """The unshuffled loader of ``split`` (only ``train`` exists)."""
        return torch.utils.data.DataLoader(self.train_set, batch_size=self.batch, shuffle=False)


def build(model: str, size: dict, tiny: bool):
    """(module, Attributor without a scorer) for ``model``, both from gradsift's classes and conf/ files."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from gradsift.attribution.gradients import PerSampleGradients
    from gradsift.attributor import Attributor

    conf = ROOT / "src" / "gradsift" / "conf"
    if model == "gpt2":
        from gradsift.models.causal_lm import CausalLM

        module = CausalLM(model=None, config=dict(GPT2_TINY if tiny else GPT2_SMALL), lora_rank=None, seed=0)
        comp = OmegaConf.load(conf / "compressor" / "dropout.yaml")
        comp.seed, comp.r = 0, size["r"]
        engine = PerSampleGradients(GPT2_PARAMS, instantiate(comp), progress=False)
    else:
        from gradsift.models.image_classifier import ImageClassifier
        from gradsift.models.resnet import resnet34

        torch.manual_seed(0)
        module = ImageClassifier(resnet34(num_classes=10))
        engine = instantiate(OmegaConf.load(conf / "gradients" / "last_layer.yaml"), progress=False)
    return module, engine, Attributor


def worker(args) -> None:
    """One rank: gather ``args.model``'s training split into ``args.store`` and write ``timing-rank<r>.json``."""
    from gradsift.attribution.distributed import torch_process_group

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    torch.set_num_threads(args.threads)
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # fp32: rows comparable
    if world > 1:
        torch.distributed.init_process_group("nccl" if cuda else "gloo", init_method="env://")
    dist = torch_process_group()
    size = sizes(args)[args.model]
    size["vocab"] = (GPT2_TINY if args.tiny else GPT2_SMALL)["vocab_size"]
    module, engine, attributor = build(args.model, size, args.tiny)
    module = module.to(f"cuda:{torch.cuda.current_device()}" if cuda else "cpu")
    data = RandomData(args.model, size)
    warm = RandomData(args.model, {**size, "n": size["batch"] * max(world, 1)})  # one batch per rank
    attributor(engine, store_dir=f"{args.store}-warmup", batches_per_shard=4).gather(module, warm, dist)

    def sync():
        if cuda:
            torch.cuda.synchronize()
        if dist:
            dist["barrier"]()

    sync()
    t0 = time.perf_counter()
    inputs = attributor(engine, store_dir=args.store, batches_per_shard=4).gather(module, data, dist)
    sync()
    wall = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    Path(args.store).with_name(f"timing-{Path(args.store).name}-rank{rank}.json").write_text(json.dumps(
        {"rank": rank, "world_size": world, "wall_s": wall, "rows": int(inputs.train.n), "peak_gib": peak}))
    if dist:
        torch.distributed.destroy_process_group()


def free_port() -> int:
    """A TCP port free on this host now (for MASTER_PORT)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args, model: str, world: int, store: Path, timeout: float) -> list[dict]:
    """Run ``world`` worker processes (torchrun's environment variables) and return their timing records."""
    for stale in (store, store.with_name(f"{store.name}-warmup")):  # a left store would resume, not re-gather
        shutil.rmtree(stale, ignore_errors=True)
    port = free_port()
    procs = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
               "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "OMP_NUM_THREADS": str(args.threads),
               # NVLink multicast off (NCCL, PyTorch symmetric memory, NVSHMEM): the lent machines' notes say a
               # program using it can put the host's shared GPUs out of service for a day or more; keep it off even
               # where the caller's environment did not set it. The gather needs only barriers anyway.
               "NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1",
               "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--model", model, "--store", str(store),
               "--device", args.device, "--threads", str(args.threads), "--seq-len", str(args.seq_len),
               "--gpt2-samples", str(args.gpt2_samples), "--resnet-samples", str(args.resnet_samples)]
        cmd += ["--tiny"] if args.tiny else []
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        outs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    if any(p.returncode != 0 for p in procs):
        raise RuntimeError(f"{model} on {world} ranks failed:\n" + "\n".join(o[-3000:] for o in outs))
    return [json.loads(store.with_name(f"timing-{store.name}-rank{r}.json").read_text()) for r in range(world)]


def compare(store: Path, ref: Path, rtol: float) -> dict:
    """``store``'s merged set against ``ref``'s: same index/labels, gradients within ``rtol`` of each row's max."""
    from gradsift.attribution.store import GradientStore

    a, b = GradientStore(store / "train").gradient_set(), GradientStore(ref / "train").gradient_set()  # <store_dir>/<split>
    index_equal = bool(np.array_equal(a.index, b.index)) and bool(np.array_equal(a.labels, b.labels))
    ga, gb = np.asarray(a.grads, dtype=np.float64), np.asarray(b.grads, dtype=np.float64)
    same_shape = ga.shape == gb.shape
    rel = float((np.abs(ga - gb).max(1) / np.maximum(np.abs(gb).max(1), 1e-30)).max()) if same_shape and len(ga) else 0.0
    return {"rows": int(a.n), "index_equal": index_equal, "bitwise_equal": same_shape and bool(np.array_equal(ga, gb)),
            "max_row_rel_diff": rel, "equal": index_equal and same_shape and rel <= rtol}


def run(args) -> list[dict]:
    """Every model x N: launch, compare with N = 1, add the scaling ratio; each record printed as measured."""
    stores = Path(args.store_root or Path(args.out) / "stores")
    ranks = sorted({int(n) for n in args.ranks.split(",")} | {1})
    have = torch.cuda.device_count() if args.device == "cuda" else os.cpu_count() or 1
    records = []
    for model in args.models.split(","):
        base = None
        for world in ranks:
            rec = {"model": model, "world_size": world, "device": args.device,
                   "backend": "nccl" if args.device == "cuda" else "gloo", **sizes(args)[model]}
            if args.device == "cuda" and world > have:
                rec["status"] = f"skipped: {have} GPUs visible"
            else:
                store = stores / f"{model}-n{world}"
                t = launch(args, model, world, store, args.timeout)
                wall = max(x["wall_s"] for x in t)
                rec.update(status="ok", wall_s=wall, samples_per_s=rec["n"] / wall,
                           peak_gib_per_rank=[x["peak_gib"] for x in t])
                base = rec["samples_per_s"] if world == 1 else base
                rec["scaling"] = rec["samples_per_s"] / base
                rec["efficiency"] = rec["scaling"] / world
                rec["vs_single_rank"] = compare(store, stores / f"{model}-n1", args.rtol)
            print(json.dumps(rec), file=sys.stderr, flush=True)
            records.append(rec)
    return records


def report(records: list[dict], meta: dict) -> str:
    """The markdown table of ``records``."""
    lines = [f"command: `{meta['command']}`", f"hardware: {meta['hardware']}; torch {meta['torch']}; {meta['date']}", "",
             "| model | N | backend | samples | wall s | samples/s | x N=1 | per rank (x/N) | merged store = N=1 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        if r["status"] != "ok":
            lines.append(f"| {r['model']} | {r['world_size']} | {r['backend']} | {r['n']} | | | | | {r['status']} |")
            continue
        c = r["vs_single_rank"]
        same = ("bitwise" if c["bitwise_equal"] else f"yes (max row rel diff {c['max_row_rel_diff']:.1e})") \
            if c["equal"] else f"NO (index {c['index_equal']}, rel {c['max_row_rel_diff']:.1e})"
        lines.append(f"| {r['model']} | {r['world_size']} | {r['backend']} | {r['n']} | {r['wall_s']:.2f} | "
                     f"{r['samples_per_s']:.1f} | {r['scaling']:.2f} | {r['efficiency']:.2f} | {same} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/bench_multigpu")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--ranks", default="1,2,4,8", help="world sizes; N=1 always runs (the reference)")
    ap.add_argument("--models", default="gpt2,resnet34")
    ap.add_argument("--tiny", action="store_true", help="tiny GPT-2 and few samples: a code-path check")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--gpt2-samples", type=int, default=2048)
    ap.add_argument("--resnet-samples", type=int, default=50000)
    ap.add_argument("--store-root", help="where the gradient stores go (default <out>/stores; ResNet-34 at 50k "
                    "samples: 1 GiB per N)")
    ap.add_argument("--rtol", type=float, default=1e-4, help="gradient tolerance, relative to each row's largest entry")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per launch")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--store", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    hw = (f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}" if args.device == "cuda"
          else f"CPU ({platform.machine()}, {os.cpu_count()} cores)")
    meta = {"command": "python benchmarks/bench_multigpu.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "hardware": hw, "torch": torch.__version__, "threads_per_rank": args.threads,
            "date": f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
            "commit": os.environ.get("GRADSIFT_COMMIT", "")}
    records = run(args)
    (out / "bench_multigpu.json").write_text(json.dumps({"meta": meta, "records": records}, indent=1))
    md = report(records, meta)
    (out / "bench_multigpu.md").write_text(md + "\n")
    print(md)
    bad = [r for r in records if r["status"] == "ok" and not r["vs_single_rank"]["equal"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
