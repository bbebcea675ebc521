"""scripts/wheelhouse.py: which of gradsift's dependencies the target lacks (fake metadata, no network)."""

from __future__ import annotations

import importlib.util
import importlib.metadata as md
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("wheelhouse", REPO / "scripts" / "wheelhouse.py")
wheelhouse = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(wheelhouse)

# a fake installed world: name -> (version, requirements)
WORLD = {
    "gradsift": ("0.1.0", ["torch>=2.4", "Hydra_Core>=1.3", "rich", "pytest; extra == 'dev'",
                           "tomli; python_version < '3.11'", "pywin32; sys_platform == 'win32'"]),
    "torch": ("2.13.0", ["sympy", "nvidia-cublas; platform_system == 'Linux'"]),
    "sympy": ("1.14.0", ["mpmath"]),
    "mpmath": ("1.3.0", []),
    "nvidia-cublas": ("13.0", []),
    "hydra-core": ("1.3.8", ["omegaconf>=2.3", "packaging"]),
    "omegaconf": ("2.3.1", ["antlr4-python3-runtime==4.9.*", "PyYAML", "packaging"]),
    "antlr4-python3-runtime": ("4.9.3", []),
    "pyyaml": ("6.0.3", []),
    "packaging": ("26.3", []),
    "rich": ("15.0.0", ["markdown-it-py[plugins]>=2.2", "pygments"]),
    "markdown-it-py": ("4.3.0", ["mdurl", "mdit-py-plugins; extra == 'plugins'"]),
    "mdit-py-plugins": ("0.5.0", []),
    "mdurl": ("0.1.2", []),
    "pygments": ("2.21.0", []),
    "pytest": ("9.0.0", ["pluggy"]),
    "pluggy": ("1.6.0", []),
}


def _installed(name: str) -> str:
    if name not in WORLD:
        raise md.PackageNotFoundError(name)
    return WORLD[name][0]


def _requires(name: str) -> list[str]:
    return WORLD[name][1]


FREEZE = """\
# pip freeze of the GPU box
torch==2.11.0
sympy==1.13.3
mpmath==1.3.0
nvidia-cublas==12.8
PyYAML==6.0.2
rich @ file:///tmp/wheels/rich-14.0.0-py3-none-any.whl
-e git+https://example.org/x.git@abc#egg=Some_Tool
--index-url https://download.pytorch.org/whl/cu128
"""


def test_parse_freeze_normalises_names_and_forms() -> None:
    assert wheelhouse.parse_freeze(FREEZE) == {"torch": "2.11.0", "sympy": "1.13.3", "mpmath": "1.3.0",
                                               "nvidia-cublas": "12.8", "pyyaml": "6.0.2", "rich": None,
                                               "some-tool": None}


def test_missing_is_closure_minus_target() -> None:
    target = wheelhouse.parse_freeze(FREEZE)
    env = wheelhouse.target_environment("3.11")
    needed = wheelhouse.closure("gradsift", env, have=target, installed=_installed, requires=_requires)
    # torch and rich are on the target: listed, but their dependencies are the target's business
    assert needed == {"torch": "2.13.0", "hydra-core": "1.3.8", "omegaconf": "2.3.1",
                      "antlr4-python3-runtime": "4.9.3", "pyyaml": "6.0.3", "packaging": "26.3", "rich": "15.0.0"}
    assert wheelhouse.missing(needed, target) == {"antlr4-python3-runtime": "4.9.3", "hydra-core": "1.3.8",
                                                  "omegaconf": "2.3.1", "packaging": "26.3"}


def test_closure_follows_extras_and_target_markers() -> None:
    env = wheelhouse.target_environment("3.10")  # tomli's marker is now true, but it is not installed here
    with pytest.raises(SystemExit, match="tomli"):
        wheelhouse.closure("gradsift", env, installed=_installed, requires=_requires)
    env = wheelhouse.target_environment("3.11")
    needed = wheelhouse.closure("gradsift", env, extras=["dev"], installed=_installed, requires=_requires)
    assert {"pytest", "pluggy", "nvidia-cublas", "mdit-py-plugins", "mdurl", "pygments", "sympy", "mpmath"} <= set(needed)
    assert "pywin32" not in needed and "gradsift" not in needed


def test_manylinux_platforms_lists_older_glibc_tags() -> None:
    tags = wheelhouse.manylinux_platforms("2.28")
    assert tags[0] == "manylinux_2_28_x86_64" and tags[-2:] == ["manylinux_2_17_x86_64", "manylinux2014_x86_64"]
    assert len(tags) == 28 - 17 + 2
    with pytest.raises(SystemExit, match="--glibc"):
        wheelhouse.manylinux_platforms("2.5")
