"""Export an encoder as bf16 and pack it into pieces that consecutive GPU calls carry (gradsift.carry).

    python scripts/export_gpu_model.py mpnet [--folder .gpu/models/mpnet_bf16] [--out .gpu/carry/mpnet_bf16] \\
        [--piece-mib 50]

Writes the bf16 folder (``--folder``; it also serves CPU dry runs) and, in ``--out``, ``<stem>.zip.NNN`` pieces
of at most ``--piece-mib`` MiB plus ``<stem>.manifest.json`` (stem = the folder's name). On the device,
``python3 scripts/gpu/assemble_model.py <out> /root/gradsift-models/<stem>`` takes them in (scripts/gpu/README.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gradsift.carry import pack
from gradsift.models.pretrained import export_bf16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a model name for resolve_model (mpnet, minilm) or a folder")
    parser.add_argument("--folder", default=None, help="bf16 export folder (default .gpu/models/<model>_bf16)")
    parser.add_argument("--out", default=None, help="pieces + manifest folder (default .gpu/carry/<stem>)")
    parser.add_argument("--piece-mib", type=float, default=50, help="largest piece in MiB (default 50)")
    args = parser.parse_args()
    folder = Path(args.folder or f".gpu/models/{Path(args.model).name}_bf16")
    out = Path(args.out or f".gpu/carry/{folder.name}")
    export_bf16(args.model, folder, limit_bytes=None)
    manifest = pack(folder, out, folder.name, piece_bytes=int(args.piece_mib * 2**20))
    print(f"{folder}: {sum(s for s, _ in manifest['files'].values()) / 2**20:.1f} MiB in "
          f"{len(manifest['files'])} files")
    for file, size, digest in manifest["pieces"]:
        print(f"{out / file}  {size / 2**20:.1f} MiB  sha256 {digest}")
    print(f"{out / (folder.name + '.manifest.json')}  zip {manifest['zip_size'] / 2**20:.1f} MiB "
          f"sha256 {manifest['zip_sha256']}")


if __name__ == "__main__":
    main()
