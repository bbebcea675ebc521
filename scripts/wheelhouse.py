"""Collect the wheels an offline machine needs to ``pip install gradsift``, given what it already has.

    .venv/bin/python scripts/wheelhouse.py --target target-freeze.txt --python-version 3.11 --glibc 2.28 \\
        --dest wheelhouse

``target-freeze.txt`` is ``pip freeze`` (or ``pip list --format=freeze``) run on the target, e.g. a GPU box that
already has torch, lightning, transformers, peft and scikit-learn. The dependency closure of gradsift is read
from THIS venv's installed metadata (``importlib.metadata``, recursively, environment markers evaluated for the
target's Python and platform) and pinned to the versions installed here; what the target already has (by
name, whatever its version) is left out, the rest is fetched as binary wheels with ``pip download
--only-binary=:all: --no-deps`` for the target's Python/platform, and gradsift's own wheel is built with
``pip wheel --no-deps .``. Then on the target: ``pip install --no-index --find-links wheelhouse gradsift``.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]


def parse_freeze(text: str) -> dict[str, str | None]:
    """``{canonical name: version or None}`` from ``pip freeze`` / ``pip list --format=freeze`` text.

    ``name==1.2``, ``name @ file:///...`` (version unknown), ``-e git+...#egg=name`` and comments are handled.
    """
    out: dict[str, str | None] = {}
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-e ") or line.startswith("--editable"):
            if "#egg=" in line:
                out[canonicalize_name(line.split("#egg=", 1)[1].split("&", 1)[0])] = None
            continue
        if line.startswith("-"):  # pip options such as --index-url
            continue
        if " @ " in line:
            out[canonicalize_name(line.split(" @ ", 1)[0])] = None
            continue
        name, _, version = line.partition("==")
        out[canonicalize_name(name)] = version.strip() or None
    return out


def target_environment(python_version: str, machine: str = "x86_64") -> dict[str, str]:
    """Marker environment of a Linux target (``packaging.markers``), for evaluating ``; python_version < ...``."""
    env = default_environment()
    major_minor = ".".join(python_version.split(".")[:2])
    full = python_version if python_version.count(".") >= 2 else f"{major_minor}.0"
    env.update(python_version=major_minor, python_full_version=full, sys_platform="linux", os_name="posix",
               platform_system="Linux", platform_machine=machine, implementation_name="cpython",
               platform_python_implementation="CPython")
    return env


def closure(root: str, env: dict[str, str], extras: Iterable[str] = (), have: Iterable[str] = (),
            installed=md.version, requires=md.requires) -> dict[str, str]:
    """``{canonical name: installed version}`` of every distribution ``root`` needs on the target (``root`` excluded).

    ``installed(name)`` and ``requires(name)`` default to this environment's ``importlib.metadata``; a
    requirement whose marker is false for the target is skipped, one that is true but not installed here is an
    error (we could not pin it). Distributions in ``have`` (already on the target) are listed but not descended
    into: the target's own copy already has its dependencies, possibly of other versions than ours.
    """
    have = {canonicalize_name(h) for h in have}
    found: dict[str, str] = {}
    todo: list[tuple[str, frozenset[str]]] = [(root, frozenset(extras))]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, want = todo.pop()
        if (name, want) in seen:
            continue
        seen.add((name, want))
        for spec in requires(name) or []:
            req = Requirement(spec)
            active = req.marker is None or any(req.marker.evaluate({**env, "extra": e}) for e in (want or {""}))
            if not active:
                continue
            dep = canonicalize_name(req.name)
            try:
                found[dep] = installed(dep)
            except md.PackageNotFoundError:
                raise SystemExit(f"{name} requires {spec!r} but {dep} is not installed in {sys.prefix}; "
                                 "install it here first so its version can be pinned") from None
            if dep not in have:
                todo.append((dep, frozenset(req.extras)))
    found.pop(canonicalize_name(root), None)
    return found


def missing(needed: dict[str, str], target: dict[str, str | None]) -> dict[str, str]:
    """The needed distributions the target does not have at all (a different version there is kept as is)."""
    return {name: ver for name, ver in sorted(needed.items()) if name not in target}


def manylinux_platforms(glibc: str = "2.28", arch: str = "x86_64") -> list[str]:
    """Every manylinux tag a glibc ``glibc`` Linux runs: pip expands ``manylinux2014`` to older tags itself, but
    not ``manylinux_2_28`` (pip/_internal/utils/compatibility_tags.py), so the PEP 600 tags are listed here."""
    major, minor = (int(x) for x in glibc.split("."))
    if major != 2 or minor < 17:
        raise SystemExit(f"--glibc {glibc}: expected 2.17 or newer (manylinux2014 is glibc 2.17)")
    return [f"manylinux_2_{m}_{arch}" for m in range(minor, 16, -1)] + [f"manylinux2014_{arch}"]


def download(pins: dict[str, str], dest: Path, python_version: str, platforms: list[str]) -> None:
    """Binary wheels of exactly these pins for the target (``pip download --only-binary=:all: --no-deps``).

    A pin published only as an sdist (e.g. ``antlr4-python3-runtime==4.9.3``, which omegaconf pins) is built
    here with ``pip wheel --no-deps``; that is only kept when the result is pure Python (``*-none-any.whl``).
    """
    base = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--no-deps", "--dest", str(dest),
            "--python-version", python_version, "--implementation", "cp",
            *[a for p in platforms for a in ("--platform", p)]]
    failed = []
    for name, version in pins.items():
        if subprocess.run([*base, f"{name}=={version}"], stdout=subprocess.DEVNULL).returncode == 0:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", tmp,
                                    f"{name}=={version}"], stdout=subprocess.DEVNULL).returncode == 0
            wheels = list(Path(tmp).glob("*-none-any.whl")) if built else []
            if not wheels:
                failed.append(f"{name}=={version}")
                continue
            shutil.move(str(wheels[0]), dest / wheels[0].name)
            print(f"built {wheels[0].name} from its sdist (no wheel on the index)")
    if failed:
        raise SystemExit(f"no wheel for {' '.join(failed)} on python {python_version} / {platforms[0]} and older "
                         "and no pure-Python build: pass another --platform or install them on the target")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", type=Path, required=True, help="pip freeze output of the target machine")
    p.add_argument("--python-version", default=f"{sys.version_info.major}.{sys.version_info.minor}",
                   help="target Python, e.g. 3.11 (default: this interpreter's)")
    p.add_argument("--glibc", default="2.28", help="target glibc (`ldd --version`), default 2.28")
    p.add_argument("--arch", default="x86_64", choices=["x86_64", "aarch64"])
    p.add_argument("--platform", action="append", default=None,
                   help="explicit wheel platform tag(s) instead of the manylinux tags of --glibc/--arch")
    p.add_argument("--extras", default="", help="gradsift extras to include, comma-separated, e.g. nlp-offline")
    p.add_argument("--dest", type=Path, default=REPO / "wheelhouse")
    p.add_argument("--dry-run", action="store_true", help="only print what would be downloaded")
    args = p.parse_args(argv)

    if not args.target.is_file():
        raise SystemExit(f"--target {args.target}: no such file (expected the target's `pip freeze` output)")
    target = parse_freeze(args.target.read_text())
    platforms = args.platform or manylinux_platforms(args.glibc, args.arch)
    env = target_environment(args.python_version, machine=args.arch)
    extras = [e for e in args.extras.split(",") if e]
    needed = closure("gradsift", env, extras, have=target)
    todo = missing(needed, target)
    for name in sorted(set(needed) & set(target)):
        if target[name] not in (None, needed[name]):
            print(f"note: target has {name}=={target[name]} (here {needed[name]}); keeping the target's")
    print(f"{len(needed)} dependencies, {len(needed) - len(todo)} already on the target, {len(todo)} to fetch:")
    print("  " + " ".join(f"{n}=={v}" for n, v in todo.items()))
    if args.dry_run:
        return 0
    args.dest.mkdir(parents=True, exist_ok=True)
    download(todo, args.dest, args.python_version, platforms)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(args.dest), str(REPO)],
                   check=True)
    spec = f"gradsift[{','.join(extras)}]" if extras else "gradsift"
    print(f"\ncopy {args.dest} to the target, then run there:\n"
          f"  pip install --no-index --find-links {args.dest.name} '{spec}'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
