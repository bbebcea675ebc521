"""Publish what `scripts/gpu/authors.sh` calls brought back: the steps its header lists, in one command.

    .venv/bin/python scripts/gpu/publish_authors.py /work/.device/2 /work/.device/3 \\
        --label "2026-12-05 (H200, code abc1234)"

For each call folder (what `run` put under `files_at`: `command.txt`, `progress.txt`, `results.tgz`, maybe
`parallel.json`), in the order given:
1. unpacks `results.tgz` into `--runs` (default `multirun_summaries/runs/gpu_authors`). A file already there with
   other bytes is never overwritten: a `result.json` that differs stops the script (two runs in one job folder), a
   `*.log.tail` that differs is written beside it with the call's suffix (`parallel_worst_s1.log.tail` ->
   `parallel_worst_s1.<suffix>.log.tail`);
2. copies `parallel.json` to `parallel_<noise>_s<seed>_<methods>.json` (from the call's `gradsift.parallel` line);
3. appends the call's `command.txt` and `progress.txt` to `COMMANDS.txt` and `progress.txt` under a
   `== call <label> <letter>` header;
4. compacts each new `authors_base_*` job's `flagged.csv` to `flagged.npz` (`gradsift.handoff`).
`--rename OLD=NEW` publishes the archives' top-level folder `OLD` (and `OLD.log.tail`) as `NEW`: for a sweep run again
under a published name, e.g. a second base model of one (noise, seed) trained on a cold machine
(`--rename authors_base_worst_s0=authors_base_worst_s0_20261204`); its retrains record the base they paired with.
Then (unless `--no-summaries`) regenerates the three summaries (`--accuracy best|final|cross --paired`, and
`--versus` the random-5% control once a retrain of it is published), the curves
and the overlap of the flagged sets. Nothing is committed: read `git status` and `git diff`, then commit.
"""

from __future__ import annotations

import argparse
import re
import shlex
import string
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RUNS = REPO / "multirun_summaries" / "runs" / "gpu_authors"
TABLE = "oga.table2_cifar_n_resnet34_authors"
#: the random-5% control's row (conf/table2_authors/random.yaml), which the summaries pair every row with
CONTROL = "Random 5% [control, not in the paper]"


def renamed(rel: Path, rename: dict[str, str]) -> Path:
    """``rel`` with its top-level folder (or ``<folder>.log.tail``) renamed by ``rename``."""
    parts = rel.parts
    if not parts:
        return rel
    head = parts[0]
    if head in rename:
        return Path(rename[head], *parts[1:])
    stem = head.removesuffix(".log.tail")
    if len(parts) == 1 and stem != head and stem in rename:
        return Path(f"{rename[stem]}.log.tail")
    return rel


def parse_renames(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        old, sep, new = pair.partition("=")
        if not sep or not old or not new or "/" in old + new:
            raise ValueError(f"--rename {pair!r}: expected OLD=NEW, two top-level folder names")
        out[old] = new
    return out


def unpack(archive: Path, runs: Path, suffix: str, rename: dict[str, str] | None = None) -> list[str]:
    """Extract ``archive`` into ``runs`` without overwriting; returns one line per file written or renamed. Every
    member is checked before any is written, so a refused archive leaves ``runs`` as it was."""
    plan: list[tuple[Path, bytes]] = []
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            if not member.isfile():
                continue
            rel = Path(member.name)
            if rel.is_absolute() or ".." in rel.parts:
                raise ValueError(f"{archive}: member {member.name!r} points outside the results folder")
            rel = renamed(rel, rename or {})
            data = tar.extractfile(member).read()
            dst = runs / rel
            if dst.exists():
                if dst.read_bytes() == data:
                    continue  # the same file, brought back again by a later call of the same warm machine
                if dst.name.endswith(".log.tail"):
                    stem = dst.name.removesuffix(".log.tail")
                    if any(o.read_bytes() == data for o in dst.parent.glob(f"{stem}.*.log.tail")):
                        continue  # published beside it by an earlier call already
                    dst = dst.with_name(f"{stem}.{suffix}.log.tail")
                elif dst.name == "multirun.yaml":
                    continue  # a sweep folder's config, rewritten by each run of the sweep: the first one stays
                else:
                    raise FileExistsError(f"{dst}: already published with other contents; {archive} brings "
                                          "another version (two runs in one job folder?): nothing overwritten. A "
                                          "sweep run again (a second base model) is published under another name "
                                          f"with --rename {rel.parts[0]}=<new name>")
            plan.append((dst, data))
    for dst, data in plan:
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(data)
    return [str(dst.relative_to(runs)) for dst, _ in plan]


def parallel_name(command_txt: str) -> str | None:
    """``parallel_<noise>_s<seed>_<m1>_<m2>.json`` from the call's ``gradsift.parallel`` line (None without one);
    a ``MODE=mix`` call's jobs of several (noise, seed): ``parallel_mix_<noise>_s<seed>_<m>_...json``."""
    line = next((ln for ln in command_txt.splitlines() if "gradsift.parallel" in ln), None)
    if line is None:
        return None
    words = shlex.split(line.replace("$OUT", "OUT"))

    def value(ws: list[str], key: str, default: str | None = None) -> str | None:
        return next((w.split("=", 1)[1] for w in ws if w.startswith(f"{key}=")), default)

    noise, seed = value(words, "data.noise"), value(words, "seed")
    jobs = []  # (noise, seed, method) per --each: MODE=mix puts the noise and seed there
    for i, w in enumerate(words[:-1]):
        if w == "--each":
            each = words[i + 1].split()
            jobs.append((value(each, "data.noise", noise), value(each, "seed", seed), value(each, "+table2_authors")))
    if len({(n, sd) for n, sd, _ in jobs}) == 1:
        n, sd, _ = jobs[0]
        return f"parallel_{n}_s{sd}_{'_'.join(m for _, _, m in jobs)}.json"
    return "parallel_mix_" + "_".join(f"{n}_s{sd}_{m}" for n, sd, m in jobs) + ".json"


def publish_call(call: Path, runs: Path, header: str, suffix: str, rename: dict[str, str] | None = None) -> list[str]:
    """Steps 1-3 for one call folder; returns what was written."""
    for need in ("command.txt", "results.tgz"):
        if not (call / need).is_file():
            raise FileNotFoundError(f"{call / need}: missing (expected the files of one authors.sh call)")
    written = unpack(call / "results.tgz", runs, suffix, rename)
    command = (call / "command.txt").read_text()
    name = parallel_name(command)
    if name and (call / "parallel.json").is_file():
        dst = runs / name
        if dst.exists() and dst.read_bytes() != (call / "parallel.json").read_bytes():
            dst = runs / name.replace(".json", f".{suffix}.json")
        dst.write_bytes((call / "parallel.json").read_bytes())
        written.append(dst.name)
    with tarfile.open(call / "results.tgz") as tar:
        heads = {Path(m.name).parts[0].removesuffix(".log.tail") for m in tar.getmembers() if Path(m.name).parts}
    applied = {o: n for o, n in (rename or {}).items() if o in heads}
    if applied:
        header += " (published as: " + ", ".join(f"{o} -> {n}" for o, n in applied.items()) + ")"
    with open(runs / "COMMANDS.txt", "a") as f:
        f.write(f"== call {header}\n{command}" + ("" if command.endswith("\n") else "\n"))
    progress = (call / "progress.txt").read_text() if (call / "progress.txt").is_file() else ""
    with open(runs / "progress.txt", "a") as f:
        f.write(f"== call {header}\n{progress}" + ("" if progress.endswith("\n") or not progress else "\n"))
    return written


def _rel(path: Path | str) -> str:
    """``path`` relative to the repository where it is inside it (so the commands the summaries record read as the
    docs quote them), else as given."""
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def _run(*cmd: str) -> None:
    print("$", " ".join(shlex.quote(c) for c in cmd))
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)


def regenerate(runs: Path, out_dir: Path) -> None:
    py = sys.executable
    # each row against the random-5% control of the same seed too, once one has run
    versus = ["--versus", CONTROL] if any(CONTROL in p.read_text() for p in runs.glob("authors_*_s*_random/*/result.json")) else []
    for acc in ("best", "final", "cross"):
        _run(py, "experiments/summarize.py", _rel(runs), "--table", TABLE, "--accuracy", acc, "--paired", *versus,
             "--out", _rel(out_dir / f"table2_cifar10n_authors_{acc}"))
    curves = sorted(_rel(p) for p in runs.glob("authors_*_s*_*") if p.is_dir() and not p.name.startswith("authors_base"))
    _run(py, "-m", "gradsift.viz.curves", *curves, "--out", _rel(out_dir / "table2_cifar10n_authors_curves"),
         "--band", "minmax", "--title", "OGA Table 2, authors' recipe: test accuracy per epoch (CIFAR-10N, ResNet-34, H200)")
    bases = sorted(_rel(p) for p in runs.glob("authors_base_*") if p.is_dir() and any(p.glob("*/flagged.*")))
    if bases:
        _run(py, "-m", "gradsift.overlap", *bases, "--out", _rel(out_dir / "table2_cifar10n_authors_overlap"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("calls", nargs="+", type=Path, help="call folders (files_at of each run), in the order they ran")
    p.add_argument("--label", required=True, help="e.g. '2026-12-05 (H200, code abc1234)'; each call adds a letter")
    p.add_argument("--runs", type=Path, default=RUNS)
    p.add_argument("--summaries", type=Path, default=REPO / "multirun_summaries")
    p.add_argument("--no-summaries", action="store_true", help="publish the files only")
    p.add_argument("--rename", action="append", default=[], metavar="OLD=NEW",
                   help="publish the archives' top-level folder OLD (and OLD.log.tail) as NEW (repeatable)")
    args = p.parse_args(argv)
    try:
        rename = parse_renames(args.rename)
    except ValueError as e:
        p.error(str(e))
    stamp = re.sub(r"[^0-9a-z]+", "", args.label.split()[0].lower()) or "call"
    for letter, call in zip(string.ascii_lowercase, args.calls):
        written = publish_call(call, args.runs, f"{args.label} {letter}", f"{stamp}{letter}", rename)
        print(f"{call}: {len(written)} file(s) published" + "".join(f"\n  {w}" for w in written))
    new_flags = sorted({p.parent for p in args.runs.glob("authors_base_*/*/flagged.csv")})
    if new_flags:
        _run(sys.executable, "-m", "gradsift.handoff", *map(str, new_flags))
    if not args.no_summaries:
        regenerate(args.runs, args.summaries)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
