"""Check that this Python can run the models: `python -I -m llm_core.serving.env_check [--clients]`.

scripts/setup_env.sh runs it with `-I`, as isolated as the Python backend stubs run
(docs/SERVING.md, 'Facts about tritonserver 2.51'), so a bad environment fails at setup, never when
tritonserver loads a model. It executes every import
statement of `model_repository/*/1/model.py`, those inside functions too (e.g.
`from transformers import AutoTokenizer`, which imports scikit-learn and scipy when they are
installed), except `triton_python_backend_utils`, which only a stub provides. It then checks that
numpy is 1.x: the stub of tritonserver 2.51 (nvidia-pytriton 0.7.0) sends empty tensors under
numpy 2. `--clients` also imports what the clients need (tritonclient).

On failure it prints which import failed, the distribution that raised (from the traceback) and
the fix, and exits 1.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.metadata as md
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
STUB_ONLY = ("triton_python_backend_utils", "__future__")
CLIENT_IMPORTS = (("tritonclient.grpc", ()), ("tritonclient.http", ()), ("tritonclient.utils", ()))
NUMPY_ABI_HINTS = ("numpy", "_ARRAY_API", "multiarray", "dtype size changed")


@dataclass(frozen=True, slots=True)
class ImportSpec:
    module: str
    names: tuple[str, ...]  # `from module import names`; () for `import module`

    def __str__(self) -> str:
        return f"from {self.module} import {', '.join(self.names)}" if self.names else f"import {self.module}"


def model_imports(repository: Path = REPO_ROOT / "model_repository") -> list[ImportSpec]:
    """Every import statement of the models' model.py files (in order, deduplicated)."""
    specs: list[ImportSpec] = []
    for path in sorted(repository.glob("*/1/model.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found = [ImportSpec(alias.name, ()) for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found = [ImportSpec(node.module, tuple(alias.name for alias in node.names))]
            else:
                continue
            specs += [s for s in found if s.module.split(".")[0] not in STUB_ONLY and s not in specs]
    return specs


def _run_import(spec: ImportSpec) -> None:
    module = importlib.import_module(spec.module)
    for name in spec.names:
        getattr(module, name)


def _distribution_of(path: str) -> str | None:
    """The installed distribution a file belongs to (by its top-level package), if any."""
    parts = Path(path).parts
    for marker in ("site-packages", "dist-packages"):
        if marker in parts:
            top = parts[parts.index(marker) + 1].removesuffix(".py")
            names = md.packages_distributions().get(top.split(".")[0])
            return names[0] if names else top
    return None


def culprit(exc: BaseException) -> str | None:
    """The deepest non-numpy distribution in the traceback: the package whose import broke."""
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        return exc.name.split(".")[0]
    found = None
    for frame in traceback.extract_tb(exc.__traceback__):
        dist = _distribution_of(frame.filename)
        if dist and dist.lower() != "numpy":
            found = dist
    return found


def advice(spec: ImportSpec, exc: BaseException) -> str:
    """What failed, which package, and the fix, in a few lines."""
    package = culprit(exc) or spec.module.split(".")[0]
    head = f"env_check: `{spec}` fails in {sys.prefix}: {type(exc).__name__}: {exc}\n  package: {package}\n"
    if isinstance(exc, ModuleNotFoundError):
        return head + (
            f"  fix: install it into this environment ({sys.executable} -m pip install {package}; offline: put "
            "its wheel in the folder LLM_WHEELS names), or rerun scripts/setup_env.sh"
        )
    if any(hint in str(exc) for hint in NUMPY_ABI_HINTS):
        return head + (
            f"  fix: {package} is built for numpy 2, but the Python backend stub needs numpy<2. Hide it from the "
            f"project venv: LLM_HOST_HIDE={package} bash scripts/setup_env.sh (or uninstall it from the host "
            "environment; see README, 'On a GPU host')"
        )
    return head + f"  fix: reinstall {package} for this Python, or hide it: LLM_HOST_HIDE={package}"


def check(specs: list[ImportSpec]) -> list[str]:
    """Run the imports; return one message per failure (empty: the environment is good)."""
    problems = []
    for spec in specs:
        try:
            _run_import(spec)
        except Exception as exc:  # any import error is a finding, not a crash of the check
            problems.append(advice(spec, exc))
    if not problems:
        import numpy

        if not numpy.__version__.startswith("1."):
            problems.append(
                f"env_check: numpy {numpy.__version__} ({numpy.__file__}): the Python backend stub of "
                "tritonserver 2.51 needs numpy<2 (every output tensor arrives empty under numpy 2)\n"
                "  fix: rerun scripts/setup_env.sh (it installs numpy<2 into the project venv)"
            )
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", action="store_true", help="also import tritonclient (the clients, the tests)")
    args = ap.parse_args(argv)
    specs = model_imports()
    if args.clients:
        specs += [ImportSpec(module, names) for module, names in CLIENT_IMPORTS]
    problems = check(specs)
    for message in problems:
        print(message, file=sys.stderr)
    if not problems:
        import numpy
        import torch

        print(f"env_check: ok ({len(specs)} imports; numpy {numpy.__version__}, torch {torch.__version__} from "
              f"{Path(torch.__file__).resolve().parent})")  # fmt: skip
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
