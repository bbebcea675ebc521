"""``gradsift-audit``: score the training samples of an already-trained model, write the flagged ones, and
optionally retrain without them.

    gradsift-audit --overrides experiment=table1_moons seed=0 \\
        --checkpoint .cache/gradsift/model/<key>/model.pt --scorer iforest --budget 0.05 --out flagged.csv
    gradsift-audit --config-dir myconf --overrides data=mydata model=mynet --checkpoint my_model.pt --retrain

The config is composed exactly as ``gradsift-run`` composes it: the packaged configs, with ``--config-dir`` added to
their search path (a folder of your own holding only, say, ``data/mydata.yaml``; ``gradsift-run --config-dir`` and
``hydra.searchpath=[file:///abs/path]`` do the same), or that folder alone when it has its own ``config.yaml``.
The data and model are instantiated from it, the checkpoint's weights are loaded weights-only (a state dict such as
``torch.save(net.state_dict())`` writes or the pipeline caches in ``.cache/gradsift/model/<key>/model.pt``, or a
Lightning ``.ckpt``'s ``state_dict``; ``--key-map`` renames key prefixes), and an
:class:`~gradsift.attributor.Attributor` gathers per-sample gradients, scores them (higher = more detrimental) and
applies the budget. A checkpoint with a ``meta.json`` beside it (the pipeline's cache) is checked against the
config: the seed and the data / model / trainer sections must match. ``--retrain`` then trains the config's model
from scratch without the flagged samples, as a pipeline run's retrain does, and prints its test metrics.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from hydra.utils import instantiate
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from gradsift import CONFIG_DIR, artifacts, training
from gradsift.artifacts import build_attributor
from gradsift.data.base import MissingInputError
from gradsift.report import console as report_console
from gradsift.summarize import IGNORED_CONFIG_KEYS
from gradsift.trim import Trim


class AuditError(ValueError):
    """A wrong input to ``gradsift-audit``, printed as one line."""


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


def parse_key_map(text: str) -> tuple[str, str]:
    """``OLD=NEW``: key prefix ``OLD`` becomes ``NEW`` (``=net.`` prefixes every key, ``module.=`` strips one)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--key-map {text!r}: expected OLD=NEW, e.g. '=net.' or 'module.=net.'")
    old, new = text.split("=", 1)
    return old, new


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Weights from a state-dict file or a Lightning ``.ckpt`` (its ``state_dict`` entry), loaded weights-only.

    Weights-only loading reads tensors and plain containers and never runs code from the file. A Lightning
    checkpoint whose hyper-parameters pickle Python objects (optimizer factories ...) is refused with what to do.

    Args:
        path: the checkpoint file.

    Returns:
        ``{parameter name: tensor}``.
    """
    if not path.is_file():
        raise MissingInputError(f"--checkpoint {path}: no such file (expected a state dict saved with torch.save, "
                                "or a Lightning .ckpt)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if _is_torch_zip(path):  # a real torch.save file that pickles more than tensors
            raise AuditError(f"--checkpoint {path}: a PyTorch file that holds Python objects besides tensors "
                             f"({_unpickler_reason(e)}); gradsift-audit loads weights only: save its state dict "
                             "(torch.save(model.state_dict(), 'model.pt')) and audit that") from None
        raise AuditError(f"--checkpoint {path}: not a PyTorch state dict ({_file_kind(path)}; expected a file "
                         "written by torch.save(model.state_dict(), ...) or a Lightning .ckpt)") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise AuditError(f"--checkpoint {path}: not a PyTorch state dict (torch.load: "
                         f"{(str(e).splitlines() or [''])[0][:200]}; a truncated or foreign file?)") from None
    if isinstance(obj, Mapping) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise AuditError(f"--checkpoint {path}: not a PyTorch state dict (it holds a {type(obj).__name__}, not a "
                         "mapping of parameter names to tensors or a Lightning checkpoint with a 'state_dict')")
    return dict(obj)


def _is_torch_zip(path: Path) -> bool:
    import zipfile

    return zipfile.is_zipfile(path)


def _unpickler_reason(e: Exception) -> str:
    text = str(e)
    marker = "WeightsUnpickler error:"
    reason = text.split(marker, 1)[1] if marker in text else text
    return (reason.strip().splitlines() or [""])[0][:200]


def _file_kind(path: Path) -> str:
    head = path.read_bytes()[:64]
    try:
        line = head.decode("utf-8").splitlines()[0]
    except (UnicodeDecodeError, IndexError):
        return f"{path.stat().st_size:,} bytes of binary data"
    return f"a text file starting {line[:40]!r}"


def remap_keys(state: Mapping[str, torch.Tensor], key_map: Sequence[tuple[str, str]]) -> dict[str, torch.Tensor]:
    """Rename key prefixes: every key starting with ``old`` gets ``new`` instead (the first matching pair wins)."""
    out = {}
    for key, value in state.items():
        for old, new in key_map:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        out[key] = value
    return out


def suggest_key_map(have: Sequence[str], want: Sequence[str]) -> str | None:
    """A ``--key-map OLD=NEW`` that turns the keys ``have`` into ``want`` (both in module order), when changing one
    prefix does: the first keys' common ending gives the prefixes."""
    if not have or not want or len(have) != len(want):
        return None
    h, w = have[0], want[0]
    n = 0
    while n < min(len(h), len(w)) and h[len(h) - 1 - n] == w[len(w) - 1 - n]:
        n += 1
    while n and n < len(h) and h[len(h) - n - 1] != ".":  # the shared ending starts at a dotted component
        n -= 1
    if n == 0:
        return None
    old, new = h[: len(h) - n], w[: len(w) - n]
    mapped = {new + k[len(old):] if k.startswith(old) else k for k in have}
    return f"{old}={new}" if mapped == set(want) and old != new else None


def compose_config(config_dir: str, config_name: str, overrides: Sequence[str]) -> DictConfig:
    """The run config as ``gradsift-run`` would see it (Hydra's compose API, no output folder).

    Args:
        config_dir: the packaged configs (:data:`gradsift.CONFIG_DIR`), or a folder of your own: with its own
            ``<config_name>.yaml`` it is the whole config, otherwise it is added to the packaged configs' search
            path (its ``data/``, ``model/`` ... files add options to those groups).
        config_name: the root config.
        overrides: Hydra overrides.

    Returns:
        The composed config.
    """
    directory = Path(config_dir).resolve()
    if not directory.is_dir():
        raise MissingInputError(f"--config-dir {config_dir}: no such folder")
    overrides = list(overrides)
    if not (directory / f"{config_name}.yaml").is_file():
        if config_name != "config":
            raise MissingInputError(f"--config-dir {config_dir}: no {config_name}.yaml in {directory}")
        overrides.append(f"hydra.searchpath=[file://{directory}]")
        directory = Path(CONFIG_DIR)
    with initialize_config_dir(config_dir=str(directory), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)


def check_meta(cfg: DictConfig, checkpoint: Path) -> None:
    """Refuse a cached checkpoint (``meta.json`` beside it) that was trained with another seed or data / model /
    trainer config than ``cfg``, naming the differing keys."""
    meta_file = checkpoint.parent / "meta.json"
    if not meta_file.is_file():
        return
    try:
        meta = json.loads(meta_file.read_text())
    except ValueError as e:
        raise AuditError(f"{meta_file}: does not read ({e}); --ignore-meta skips this check") from None
    if "seed" in meta and int(meta["seed"]) != int(cfg.seed):
        raise AuditError(f"--checkpoint {checkpoint} was trained with seed={meta['seed']} ({meta_file.name}) but the "
                         f"config has seed={cfg.seed}: add seed={meta['seed']} to --overrides (or --ignore-meta)")
    if "config" not in meta or meta.get("config_hash") == artifacts.model_key(cfg):
        return
    ours = artifacts.model_meta(cfg)["config"]
    differ = [f"{k}={_short(b)} (checkpoint: {_short(a)})" for k, a, b in _diff(meta["config"], ours)]
    if differ:
        raise AuditError(f"--checkpoint {checkpoint} was trained with another config ({meta_file.name}): "
                         + "; ".join(differ[:6]) + ("; ..." if len(differ) > 6 else "")
                         + ". Give the checkpoint's values in --overrides (or --ignore-meta)")


def _diff(a: object, b: object, prefix: str = "") -> list[tuple[str, object, object]]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _diff(a.get(k), b.get(k), f"{prefix}{k}.")]
    key = prefix[:-1]
    parts = key.split(".")
    ignored = parts[-1].endswith("_dir") or any(".".join(parts[:i]) in IGNORED_CONFIG_KEYS for i in range(1, len(parts) + 1))
    return [] if a == b or ignored else [(key, a, b)]


def _short(value: object) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def audit(cfg: DictConfig, checkpoint: Path, budget: float | int | str, out: Path | None,
          key_map: Sequence[tuple[str, str]] = (), check: bool = True, retrain: bool = False) -> dict:
    """Load the checkpoint into ``cfg.model``, score ``cfg.data``'s training set with ``cfg.scorer``, trim, and
    optionally retrain without the flagged samples.

    Args:
        cfg: the composed config.
        checkpoint: the weights (see :func:`load_state_dict`).
        budget: how many to flag (a fraction, a count or ``n_noisy``).
        out: the CSV to write (None = none).
        key_map: ``(old, new)`` key-prefix renames applied to the checkpoint's keys.
        check: check a cached checkpoint's ``meta.json`` against the config (:func:`check_meta`).
        retrain: retrain from scratch on the kept samples and test (the checkpoint is tested too).

    Returns:
        ``{"flagged": DataFrame, "has_noise_mask": bool, "checkpoint_test": metrics, "retrained_test": metrics}``
        (the metrics only with ``retrain``).
    """
    if cfg.get("torch_threads"):
        torch.set_num_threads(int(cfg.torch_threads))
    if check:
        check_meta(cfg, checkpoint)
    trim = Trim(budget=budget)
    model = instantiate(cfg.model)  # its arguments are checked before any file is read
    state = remap_keys(load_state_dict(checkpoint), key_map)
    datamodule = instantiate(cfg.data)
    datamodule.setup()
    has_mask = bool(getattr(datamodule, "has_noise_mask", True))
    trim.validate(len(datamodule.train_set), has_mask)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        want = list(model.state_dict())
        hint = suggest_key_map(list(state), want)
        raise AuditError(f"--checkpoint {checkpoint} does not fit model={cfg.model._target_}: its keys "
                         f"({', '.join(list(state)[:3])}, ...) vs the model's ({', '.join(want[:3])}, ...)"
                         + (f"; --key-map '{hint}' maps them" if hint else f": {(str(exc).splitlines() or [''])[0]}")
                         ) from None
    flagged = build_attributor(cfg, instantiate(cfg.scorer), trim).attribute(model, datamodule).flagged
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        flagged.to_csv(out, index=False)
    result = {"flagged": flagged, "has_noise_mask": has_mask}
    if retrain:
        keep = flagged.loc[~flagged["flagged"].astype(bool), "index"].to_numpy()
        result["checkpoint_test"] = training.evaluate(cfg, model, datamodule)
        result["retrained_test"], _, _, _ = artifacts.retrain(cfg, datamodule, keep, artifacts.model_key(cfg))
        result["n_removed"] = int(len(flagged) - len(keep))
    return result


def print_top(flagged: pd.DataFrame, top: int, console: Console | None = None, has_noise_mask: bool = True) -> None:
    """The ``top`` highest-scored rows and how many flagged samples have a label that differs from the clean one."""
    console = console or Console()
    table = Table(title=f"top {min(top, len(flagged))} of {len(flagged)} training samples (higher = more detrimental)")
    for col in flagged.columns:
        table.add_column(col, justify="right")
    for row in flagged.head(top).itertuples(index=False):
        table.add_row(*(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row))
    console.print(table)
    n_flag = int(flagged["flagged"].sum())
    if not has_noise_mask:
        console.print(f"flagged {n_flag}; clean labels are unknown (no data.clean_label), so none is known to be "
                      "mislabeled")
        return
    n_bad = int((flagged["label"] != flagged["clean_label"]).sum())
    hits = int((flagged["flagged"] & (flagged["label"] != flagged["clean_label"])).sum())
    console.print(f"flagged {n_flag}; {hits} of them have a label that differs from clean_label "
                  f"({n_bad} such samples in all)")


def _metrics(m: Mapping[str, float]) -> str:
    return ", ".join(f"test_{k} {v:.4f}" for k, v in m.items() if isinstance(v, float))


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``gradsift-audit``."""
    p = argparse.ArgumentParser(prog="gradsift-audit", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-dir", default=str(CONFIG_DIR),
                   help="a config folder of your own, added to the packaged configs' search path (the whole config "
                        "when it has its own config.yaml); default: the packaged configs")
    p.add_argument("--config-name", default="config", help="root config (default: config)")
    p.add_argument("--overrides", nargs="*", default=[], help="Hydra overrides, e.g. data=moons model=mlp seed=1")
    p.add_argument("--checkpoint", required=True, type=Path, help="a state-dict .pt or a Lightning .ckpt")
    p.add_argument("--key-map", action="append", default=[], type=parse_key_map, metavar="OLD=NEW",
                   help="rename checkpoint key prefixes before loading (repeatable): '=net.' prefixes every key, "
                        "'module.=net.' replaces one")
    p.add_argument("--ignore-meta", action="store_true",
                   help="do not check the seed and config recorded in a meta.json beside the checkpoint")
    p.add_argument("--scorer", default=None, help="a scorer config name, conf/scorer/<name> (default: the config's scorer)")
    p.add_argument("--budget", default=0.05, type=parse_budget,
                   help="samples to flag: fraction, count or n_noisy (default: 0.05)")
    p.add_argument("--retrain", action="store_true",
                   help="then retrain the config's model from scratch without the flagged samples and print its test "
                        "metrics beside the checkpoint's")
    p.add_argument("--out", default=Path("flagged.csv"), type=Path, help="CSV to write (default: flagged.csv)")
    p.add_argument("--top", default=10, type=int, help="rows to print (default: 10)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``gradsift-audit``; a wrong input is one line on stderr and exit status 1."""
    args = build_parser().parse_args(argv)
    overrides = list(args.overrides) + ([f"scorer={args.scorer}"] if args.scorer else [])
    try:
        cfg = compose_config(args.config_dir, args.config_name, overrides)
        res = audit(cfg, args.checkpoint, args.budget, args.out, key_map=args.key_map, check=not args.ignore_meta,
                    retrain=args.retrain)
    except (AuditError, MissingInputError, HydraException) as e:
        print(f"gradsift-audit: {' '.join(str(e).split()) or type(e).__name__}", file=sys.stderr)
        return 1
    console = report_console()
    print_top(res["flagged"], args.top, console, has_noise_mask=res["has_noise_mask"])
    console.print(f"wrote {args.out}")
    if args.retrain:
        console.print(f"retrained without the {res['n_removed']} flagged samples: {_metrics(res['retrained_test'])} "
                      f"(the checkpoint: {_metrics(res['checkpoint_test'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
