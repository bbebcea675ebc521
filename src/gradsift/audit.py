"""``gradsift-audit``: score the training samples of an already-trained model and write the flagged ones.

    gradsift-audit --overrides data=moons model=mlp \\
        --checkpoint .cache/gradsift/model/<key>/model.pt --scorer iforest --budget 0.05 --out flagged.csv

The config is composed exactly as ``gradsift-run`` composes it (the packaged configs, or ``--config-dir``; same
groups, same overrides), the data and model are instantiated from it, the checkpoint's weights are loaded (a
Lightning ``.ckpt``'s ``state_dict`` or a plain state dict such as the pipeline caches in
``.cache/gradsift/model/<key>/model.pt``), and an :class:`~gradsift.attributor.Attributor` gathers per-sample
gradients, scores them (higher = more detrimental) and applies the trim budget. No training happens.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from gradsift import CONFIG_DIR
from gradsift.artifacts import build_attributor
from gradsift.trim import Trim


def parse_budget(text: str) -> float | int | str:
    """``0.05`` -> fraction, ``12`` -> count, ``n_noisy`` -> as many as flipped labels (see ``gradsift.trim.Trim``)."""
    if text == "n_noisy":
        return text
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--budget {text!r}: expected a fraction, a count or 'n_noisy'") from None


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Weights from a Lightning ``.ckpt`` (its ``state_dict`` entry) or from a plain state-dict file.

    A Lightning checkpoint also pickles hyper-parameters and loop state, so it is loaded with
    ``weights_only=False``: only audit checkpoints you trust.
    """
    if not path.is_file():
        raise FileNotFoundError(f"--checkpoint {path}: no such file (expected a Lightning .ckpt or a state-dict .pt)")
    obj = torch.load(path, map_location="cpu", weights_only=path.suffix != ".ckpt")
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"--checkpoint {path}: expected a state dict (name -> tensor) or a Lightning checkpoint "
                         f"with a 'state_dict' entry, got {type(obj).__name__}")
    return obj


def compose_config(config_dir: str, config_name: str, overrides: Sequence[str]) -> DictConfig:
    """The run config as ``gradsift-run`` would see it (Hydra's compose API, no output folder)."""
    directory = Path(config_dir).resolve()
    if not (directory / f"{config_name}.yaml").is_file():
        raise FileNotFoundError(f"--config-dir {config_dir}: no {config_name}.yaml in {directory}")
    with initialize_config_dir(config_dir=str(directory), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


def audit(cfg: DictConfig, checkpoint: Path, budget: float | int | str, out: Path | None) -> pd.DataFrame:
    """Load the checkpoint into ``cfg.model``, score ``cfg.data``'s training set with ``cfg.scorer``, trim."""
    if cfg.get("torch_threads"):
        torch.set_num_threads(int(cfg.torch_threads))
    datamodule = instantiate(cfg.data)
    datamodule.setup()
    model = instantiate(cfg.model)
    try:
        model.load_state_dict(load_state_dict(checkpoint))
    except RuntimeError as exc:
        raise ValueError(f"--checkpoint {checkpoint} does not fit model={cfg.model._target_}: {exc}") from exc
    flagged = build_attributor(cfg, instantiate(cfg.scorer), Trim(budget=budget)).attribute(model, datamodule).flagged
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        flagged.to_csv(out, index=False)
    return flagged


def print_top(flagged: pd.DataFrame, top: int, console: Console | None = None) -> None:
    table = Table(title=f"top {min(top, len(flagged))} of {len(flagged)} training samples (higher = more detrimental)")
    for col in flagged.columns:
        table.add_column(col, justify="right")
    for row in flagged.head(top).itertuples(index=False):
        table.add_row(*(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row))
    (console or Console()).print(table)
    n_flag, n_bad = int(flagged["flagged"].sum()), int((flagged["label"] != flagged["clean_label"]).sum())
    hits = int((flagged["flagged"] & (flagged["label"] != flagged["clean_label"])).sum())
    (console or Console()).print(f"flagged {n_flag}; {hits} of them have a label that differs from clean_label "
                                 f"({n_bad} such samples in all)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gradsift-audit", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-dir", default=str(CONFIG_DIR), help="Hydra config folder (default: the packaged configs)")
    p.add_argument("--config-name", default="config", help="root config in it (default: config)")
    p.add_argument("--overrides", nargs="*", default=[], help="Hydra overrides, e.g. data=moons model=mlp seed=1")
    p.add_argument("--checkpoint", required=True, type=Path, help="Lightning .ckpt or a state-dict .pt")
    p.add_argument("--scorer", default=None, help="a scorer config name, conf/scorer/<name> (default: the config's scorer)")
    p.add_argument("--budget", default=0.05, type=parse_budget,
                   help="samples to flag: fraction, count or n_noisy (default: 0.05)")
    p.add_argument("--out", default=Path("flagged.csv"), type=Path, help="CSV to write (default: flagged.csv)")
    p.add_argument("--top", default=10, type=int, help="rows to print (default: 10)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = list(args.overrides) + ([f"scorer={args.scorer}"] if args.scorer else [])
    cfg = compose_config(args.config_dir, args.config_name, overrides)
    flagged = audit(cfg, args.checkpoint, args.budget, args.out)
    print_top(flagged, args.top)
    Console().print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
