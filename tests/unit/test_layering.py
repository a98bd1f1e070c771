"""The package's layering: no import cycles inside llm_core, and the lower layers never import the upper ones.

Read from the source (ast), imports anywhere in a module included (a function-level import is still a
dependency); `if TYPE_CHECKING:` blocks are left out.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "llm_core"

# module prefix -> prefixes it must not import
FORBIDDEN = {
    "llm_core.scheduler": ("torch", "llm_core.worker", "llm_core.models", "llm_core.kernels", "llm_core.serving"),
    "llm_core.kernels": ("llm_core.ops", "llm_core.models", "llm_core.worker", "llm_core.serving"),
    "llm_core.ops": ("llm_core.models", "llm_core.worker", "llm_core.serving"),
    "llm_core.models": ("llm_core.worker", "llm_core.serving", "llm_core.engine"),
    "llm_core.batch": ("llm_core.worker", "llm_core.models"),
    "llm_core.worker": ("llm_core.serving", "llm_core.engine"),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(path: Path) -> set[str]:
    """Absolute names of every module `path` imports (llm_core modules resolved to existing files)."""
    tree = ast.parse(path.read_text())
    skip = {
        id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and _type_checking(node) for n in ast.walk(node)
    }
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in names if not name.startswith("llm_core") or _exists(name)}


def _exists(name: str) -> bool:
    base = ROOT.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def import_graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in PACKAGE.rglob("*.py")}


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_lower_layers_do_not_import_upper_ones(layer):
    bad = [
        (module, name)
        for module, names in import_graph().items()
        if module == layer or module.startswith(layer + ".")
        for name in names
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[layer])
    ]
    assert not bad, bad


def test_no_import_cycles():
    full = import_graph()
    # Edges between llm_core modules; a package's __init__ re-exporting its own modules is not a cycle.
    graph = {m: {n for n in names if n in full and n != m and not n.startswith(m + ".")} for m, names in full.items()}
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for name in sorted(graph[module]):
            if state.get(name) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(name) :] + [name]))
            if name not in state:
                visit(name)
        stack.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_a_request_never_calls_back_into_a_file_that_called_it():
    """One served text request (scripts/request_path.py: the serving steps and the engine's worker, with a
    profile hook in each process): in each process its file-level call graph has no cycle."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "request_path.py"), "--cycles", "--max-tokens", "4"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    verdicts = [line.strip() for line in done.stdout.splitlines() if "call back into" in line]
    assert "engine worker" in done.stdout and len(verdicts) == 2, done.stdout
    assert all(v.endswith(": none") for v in verdicts), done.stdout


@pytest.mark.parametrize("folder", ["benchmarks", "scripts", "clients"])
def test_scripts_do_not_shadow_installed_packages(folder):
    # `python benchmarks/x.py` puts benchmarks/ first on sys.path: a script named like an installed package
    # (benchmarks/kernels.py against Hugging Face's `kernels`, which transformers imports) breaks every import of it.
    # A fresh interpreter outside the checkout: tests may have put these folders on this one's sys.path.
    stems = sorted(p.stem for p in (ROOT / folder).rglob("*.py") if p.stem != "__init__")
    code = "import importlib.util, sys; print(' '.join(s for s in sys.argv[1:] if importlib.util.find_spec(s)))"
    found = subprocess.run(
        [sys.executable, "-c", code, *stems], cwd=ROOT.parent, capture_output=True, text=True, check=True,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    ).stdout.split()  # fmt: skip
    assert not found, f"{folder}/: {found} shadow installed modules"
