"""Build the git-ignored inputs that the GPU scripts carry (`scripts/gpu/README.md`), from a local data folder.

    python scripts/gpu_inputs.py                      # .gpu/c10, .gpu/c5k from ../shared/data, and .whl
    python scripts/gpu_inputs.py --data DIR --only c10 --no-wheels

- `.gpu/c10`: `cifar10-jpeg/cifar10_jpeg.npz` and `cifar-n/cifar10n_labels.npz` (OGA Table 2, `authors.sh`,
  `cifar10n.sh`). The JPEG archive is rewritten with `np.savez_compressed`: the same arrays, read back and checked
  equal, in 18.5 MB instead of 56.7 MB (every image's JPEG header and tables repeat; deflate removes them), so that
  a call that carries it keeps ~38 MB more of its 64 MiB for the tree. The loader
  (`gradsift.data.cifar_n.read_jpeg_archive`) reads both forms alike.
- `.gpu/c5k`: `cifar10-partial/cifar10_partial.npz` (already compressed) and the CIFAR-N labels (`methods.sh`,
  `recipe_r.sh`).
- `.whl`: the wheels the device lacks (hydra-core, omegaconf, antlr4 runtime, cleanlab, the joblib launcher,
  termcolor), for Python 3.12 manylinux, from the package index (`--no-wheels` skips them).

Idempotent: an output whose arrays already equal the source's is left as it is.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
#: (set, file under the data folder) for each input set
SETS = {
    "c10": ("cifar10-jpeg/cifar10_jpeg.npz", "cifar-n/cifar10n_labels.npz"),
    "c5k": ("cifar10-partial/cifar10_partial.npz", "cifar-n/cifar10n_labels.npz"),
}
#: files rewritten compressed (the others are copied byte for byte)
COMPRESS = {"cifar10-jpeg/cifar10_jpeg.npz"}
#: pip download arguments of the device's missing wheels (the device: Python 3.12, manylinux x86-64)
WHEELS = ["hydra-core==1.3.8", "omegaconf==2.3.1", "cleanlab==2.9.0", "hydra-joblib-launcher==1.2.0",
          "termcolor==3.3.0"]
SDIST_WHEELS = ["antlr4-python3-runtime==4.9.3"]  # sdist only on the index: built here (pure Python)


def same_arrays(a: Path, b: Path) -> bool:
    """Whether two ``.npz`` files hold the same keys with equal arrays (dtype and shape included)."""
    with np.load(a, allow_pickle=False) as x, np.load(b, allow_pickle=False) as y:
        return sorted(x.files) == sorted(y.files) and all(
            x[k].dtype == y[k].dtype and x[k].shape == y[k].shape and np.array_equal(x[k], y[k]) for k in x.files)


def is_compressed(path: Path) -> bool:
    """Whether every member of the ``.npz`` (a zip) is deflated, as ``np.savez_compressed`` writes them."""
    with zipfile.ZipFile(path) as z:
        return all(info.compress_type == zipfile.ZIP_DEFLATED for info in z.infolist())


def compress_npz(src: Path, dst: Path) -> None:
    """``src`` rewritten with ``np.savez_compressed`` at ``dst`` (via a temporary file), checked equal to ``src``."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.stem + ".tmp.npz")
    with np.load(src, allow_pickle=False) as z:
        np.savez_compressed(tmp, **{k: z[k] for k in z.files})
    if not same_arrays(src, tmp):
        tmp.unlink()
        raise RuntimeError(f"{src}: the compressed copy does not read back equal; nothing written to {dst}")
    tmp.replace(dst)


def _up_to_date(rel: str, src: Path, dst: Path) -> bool:
    """A copied file: the same size as its source; a compressed one: deflated, with the source's arrays."""
    if not dst.is_file():
        return False
    if rel in COMPRESS:
        return is_compressed(dst) and same_arrays(src, dst)
    return dst.stat().st_size == src.stat().st_size


def build_set(name: str, data: Path, out: Path) -> list[str]:
    """Write input set ``name`` under ``out/name`` from ``data``; returns one line per file (what was done)."""
    lines = []
    for rel in SETS[name]:
        src, dst = data / rel, out / name / rel
        if not src.is_file():
            raise FileNotFoundError(f"{src}: missing (expected the data folder of ../shared/data, see --data)")
        if _up_to_date(rel, src, dst):
            lines.append(f"{dst}: up to date ({dst.stat().st_size:,} B)")
            continue
        if rel in COMPRESS:
            compress_npz(src, dst)
            lines.append(f"{dst}: {src.stat().st_size:,} B -> {dst.stat().st_size:,} B compressed, arrays equal")
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            lines.append(f"{dst}: copied ({dst.stat().st_size:,} B)")
    return lines


def fetch_wheels(dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
                    "--platform", "manylinux_2_17_x86_64", "-d", str(dest), *WHEELS], check=True)
    subprocess.run([*pip, "wheel", "-q", "--no-deps", "-w", str(dest), *SDIST_WHEELS], check=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data", help="the data folder")
    p.add_argument("--out", type=Path, default=REPO / ".gpu", help="where the sets go (git-ignored)")
    p.add_argument("--only", choices=sorted(SETS), action="append", help="build only this set (repeatable)")
    p.add_argument("--wheels", type=Path, default=REPO / ".whl", help="where the wheels go (git-ignored)")
    p.add_argument("--no-wheels", action="store_true", help="do not fetch the wheels")
    args = p.parse_args(argv)
    for name in args.only or sorted(SETS):
        print("\n".join(build_set(name, args.data, args.out)))
    if not args.no_wheels:
        fetch_wheels(args.wheels)
        print(f"{args.wheels}: " + ", ".join(sorted(f.name for f in args.wheels.glob("*.whl"))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
