"""One rank of the 2-process gloo test in test_distributed.py (also importable: the tiny model and datamodule).

    python tests/attribution/ddp_worker.py RANK WORLD_SIZE INIT_FILE OUT_DIR [direct|attributor]
"""

from __future__ import annotations

import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

N_TRAIN, N_VAL, BATCH = 23, 9, 4


class TinyModel(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.norm, self.fc2 = nn.Linear(5, 8), nn.LayerNorm(8), nn.Linear(8, 3)

    def per_sample_loss(self, batch):
        return F.cross_entropy(self.fc2(self.norm(torch.tanh(self.fc1(batch["x"])))), batch["label"], reduction="none")


class TinyData:
    """Minimal gradsift-style datamodule: ``attribution_dataloader(split)`` over dict samples with ``index``."""

    def __init__(self):
        g = torch.Generator().manual_seed(1)
        self.train_set = self._make(N_TRAIN, g, offset=100)
        self.val_set = self._make(N_VAL, g, offset=0)

    @staticmethod
    def _make(n, g, offset):
        x, y = torch.randn(n, 5, generator=g), torch.randint(0, 3, (n,), generator=g)
        return [{"x": x[i], "label": y[i], "index": torch.tensor(offset + i)} for i in range(n)]

    def attribution_dataloader(self, split="train"):
        return DataLoader({"train": self.train_set, "val": self.val_set}[split], batch_size=BATCH, shuffle=False)


def make_engine():
    from gradsift.attribution.compressors import LoGraCompressor
    from gradsift.attribution.gradients import PerSampleGradients

    return PerSampleGradients("all", LoGraCompressor(r=16, seed=3), progress=False)


def make_attributor(store_dir=None):
    from gradsift.attributor import Attributor

    return Attributor(make_engine(), store_dir=store_dir, batches_per_shard=2)


def gathered(inputs) -> dict:
    """An Attributor's gathered inputs as ``{"train", "val"}`` gradient sets (TinyData's reference split is val)."""
    return {"train": inputs.train, "val": inputs.reference}


def _broadcast(obj, src=0):
    box = [obj]
    torch.distributed.broadcast_object_list(box, src)
    return box[0]


def main(rank: int, world: int, init_file: str, out_dir: str, mode: str = "direct") -> None:
    """Gather train + val twice: into a temporary store (removed) and into ``out_dir/store`` (kept)."""
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        data, model, res = TinyData(), TinyModel(), {}
        for tag, root in (("tmp", None), ("kept", f"{out_dir}/store")):
            if mode == "attributor":  # the Attributor's DDP path, as AttributionCallback.on_fit_end drives it
                sets = gathered(make_attributor(root).gather(
                    model, data, dist={"rank": rank, "world_size": world, "barrier": torch.distributed.barrier,
                                       "broadcast": _broadcast}))
            else:  # what Attributor.gather calls under DDP
                from gradsift.attribution.distributed import gather_distributed

                loaders = {s: data.attribution_dataloader(s) for s in ("train", "val")}
                sets = gather_distributed(make_engine(), model, loaders, rank, world, root=root, batches_per_shard=2)
            res.update({f"{tag}_{s}_{k}": np.asarray(getattr(gs, k)) for s, gs in sets.items()
                        for k in ("grads", "index", "labels")})
        np.savez(f"{out_dir}/rank{rank}.npz", **res)
    finally:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], *(sys.argv[5:6]))
