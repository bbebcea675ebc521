"""The package's shape (docs/ARCHITECTURE.md): no import cycle, no private name imported across modules, imports
only along the allowed layer edges, and Google-style docstrings on the public API (ruff's pydocstyle rules)."""

from __future__ import annotations

import ast
import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "gradsift"

#: layer of every module, by the longest matching dotted prefix
LAYERS = {
    "gradsift": "base", "gradsift.lazy": "base", "gradsift.resolvers": "base", "gradsift.hub": "base",
    "gradsift.cache": "base", "gradsift.conf": "base", "gradsift.fetch": "base", "gradsift.carry": "base",
    "gradsift.paired": "base",
    "gradsift.data": "data",
    "gradsift.models": "models",
    "gradsift.attribution": "attribution",
    "gradsift.scoring": "scoring",
    "gradsift.trim": "trim",
    "gradsift.attributor": "attributor", "gradsift.callback": "attributor",
    "gradsift.viz": "viz",
    "gradsift.training": "run", "gradsift.artifacts": "run", "gradsift.record": "run", "gradsift.loggers": "run",
    "gradsift.report": "run", "gradsift.handoff": "run", "gradsift.parallel": "run", "gradsift.overlap": "run",
    "gradsift.identification": "flows",
    "gradsift.pipeline": "pipeline",
    "gradsift.summarize": "reports", "gradsift.viz.curves": "reports", "gradsift.hydra_callbacks": "reports",
    "gradsift.cli": "cli", "gradsift.audit": "cli",
}
#: the flow data -> models -> attribution -> scoring -> trim -> attributor -> run -> flows -> pipeline, plots
#: beside it, reports reading only result files, and the command line on top
_CHAIN = ["base", "data", "models", "attribution", "scoring", "trim", "attributor"]
ALLOWED = {layer: set(_CHAIN[:i + 1]) for i, layer in enumerate(_CHAIN)}
ALLOWED["viz"] = {"base", "viz"}
ALLOWED["run"] = set(_CHAIN) | {"viz", "run"}
ALLOWED["flows"] = ALLOWED["run"] | {"flows"}
ALLOWED["pipeline"] = ALLOWED["flows"] | {"pipeline"}
ALLOWED["reports"] = {"base", "viz", "reports"}
ALLOWED["cli"] = set(ALLOWED) | {"cli"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_package(module: str) -> bool:
    return (SRC / module.replace(".", "/") / "__init__.py").exists()


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if _is_package(module) else module.split(".")[:-1]
    base = base[:len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _imports() -> dict[str, list[tuple[str, str | None, int]]]:
    """module -> [(imported gradsift module, imported name or None, line)], lazy (function-level) imports included."""
    out: dict[str, list[tuple[str, str | None, int]]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        edges = out.setdefault(module, [])
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                edges += [(a.name, None, node.lineno) for a in node.names if a.name.split(".")[0] == "gradsift"]
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(module, node)
                if target.split(".")[0] != "gradsift":
                    continue
                for a in node.names:
                    sub = f"{target}.{a.name}"
                    if (SRC / (sub.replace(".", "/") + ".py")).exists() or _is_package(sub):
                        edges.append((sub, None, node.lineno))  # "from gradsift import training": the module
                    else:
                        edges.append((target, a.name, node.lineno))
    return out


def _layer(module: str) -> str:
    prefix = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len, default=None)
    assert prefix is not None, f"{module} has no layer in tests/test_architecture.py (and docs/ARCHITECTURE.md)"
    return LAYERS[prefix]


def test_no_import_cycle():
    graph = {m: {t for t, _, _ in edges if t != m} for m, edges in _imports().items()}
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> None:
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt in path:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            if nxt not in done:
                visit(nxt)
        path.pop()
        done.add(node)

    for module in sorted(graph):
        if module not in done:
            visit(module)


def test_no_private_name_is_imported_from_another_module():
    bad = [f"{m}:{line} imports {name} from {target}" for m, edges in _imports().items()
           for target, name, line in edges
           if (name and name.startswith("_") and name != "__version__") or any(p.startswith("_") and p != "__init__"
                                                                              for p in target.split("."))]
    assert not bad, "\n".join(bad)


def test_imports_follow_the_layers():
    bad = []
    for module, edges in _imports().items():
        layer = _layer(module)
        for target, _, line in edges:
            if _layer(target) in ALLOWED[layer]:
                continue
            bad.append(f"{module}:{line} ({layer}) imports {target} ({_layer(target)})")
    assert not bad, "\n".join(bad)


PUBLIC_PACKAGES = ["gradsift", "gradsift.attribution", "gradsift.scoring", "gradsift.data", "gradsift.models"]


def _public_api_files() -> list[Path]:
    """The packages' __init__ files and every module that defines a name of their ``__all__``."""
    files = set()
    for name in PUBLIC_PACKAGES:
        pkg = importlib.import_module(name)
        files.add(Path(pkg.__file__))
        for export in pkg.__all__:
            obj = getattr(pkg, export)
            defining = getattr(obj, "__module__", None)
            if defining and defining.startswith("gradsift"):
                files.add(Path(sys.modules[defining].__file__))
    return sorted(files)


def test_every_public_name_resolves():
    for name in PUBLIC_PACKAGES:
        pkg = importlib.import_module(name)
        assert pkg.__all__ and all(getattr(pkg, export) is not None for export in pkg.__all__)
        assert set(pkg.__all__) <= set(dir(pkg))


def test_public_api_has_google_style_docstrings():
    ruff = shutil.which("ruff") or shutil.which("ruff", path=str(Path(sys.executable).parent))
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -e '.[dev]' installs it); the docstring check needs it")
    files = [str(f.relative_to(SRC.parent)) for f in _public_api_files()]
    # the project's [tool.ruff.lint]: select D (pydocstyle), convention google (a --select here would drop its ignores)
    out = subprocess.run([ruff, "check", "--no-cache", *files], cwd=SRC.parent,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
