"""OmegaConf resolvers the configs use; registered when ``gradsift`` is imported (also in launcher workers, which
import it to unpickle the task function before they resolve the job's folder name).

``${gradsift.dirname:<text>}``: a sweep job's folder name. Hydra's ``override_dirname`` joins every override, so
a long command line passes the file system's 255-byte name limit (and the job fails before it starts): beyond
``MAX_DIRNAME`` characters the name is cut and ends with a hash of the whole text, so it stays unique per job.

``${gradsift.stem:<path>}``: a file's name without folder and suffix (``data/my_data.csv`` -> ``my_data``), the
dataset name of ``data=generic``; ``arrays`` for no path.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from omegaconf import OmegaConf

MAX_DIRNAME = 150


def short_dirname(text: str, limit: int = MAX_DIRNAME) -> str:
    text = str(text)
    if len(text) <= limit:
        return text
    digest = hashlib.sha1(text.encode()).hexdigest()[:10]
    return f"{text[:limit - len(digest) - 1]}~{digest}"


def file_stem(path: str | None) -> str:
    return "arrays" if path is None else Path(str(path)).stem


def register() -> None:
    if not OmegaConf.has_resolver("gradsift.dirname"):
        OmegaConf.register_new_resolver("gradsift.dirname", short_dirname)
    if not OmegaConf.has_resolver("gradsift.stem"):
        OmegaConf.register_new_resolver("gradsift.stem", file_stem)
