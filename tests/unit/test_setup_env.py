"""scripts/host_site.py (which host packages a project venv sees) and llm_core.serving.env_check."""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import sys
from pathlib import Path

from llm_core.serving.env_check import ImportSpec, advice, check, model_imports

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("host_site", ROOT / "scripts" / "host_site.py")
host_site = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(host_site)


def _dist(site: Path, name: str, requires: tuple[str, ...] = (), files: tuple[str, ...] = ()) -> None:
    """A fake installed distribution: its dist-info (METADATA, RECORD) and its files."""
    info = site / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    meta = [f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0"] + [f"Requires-Dist: {r}" for r in requires]
    (info / "METADATA").write_text("\n".join(meta) + "\n")
    for file in files:
        (site / file).parent.mkdir(parents=True, exist_ok=True)
        (site / file).write_text("")
    (info / "RECORD").write_text("".join(f"{f},,\n" for f in files + (f"{info.name}/METADATA",)))


def _fake_host(site: Path) -> list[md.Distribution]:
    _dist(site, "numpy", files=("numpy/__init__.py", "numpy/core/_multiarray_umath.so", "numpy.libs/libx.so"))
    _dist(site, "scipy", ("numpy>=1.25",), ("scipy/__init__.py", "scipy/_lib/_ccallback_c.so"))
    _dist(site, "scikit_learn", ("numpy>=1.22", "scipy>=1.8"), ("sklearn/__init__.py", "sklearn/_c.so"))
    _dist(site, "needs_np2", ("numpy>=2.0",), ("needs_np2.py",))  # pure Python, numpy 2 only
    _dist(site, "uses_np", ("numpy>=1.17",), ("uses_np/__init__.py",))  # pure Python, numpy 1 fine
    _dist(site, "plugin", ("scikit-learn",), ("plugin/__init__.py",))  # requires a hidden one
    _dist(site, "torch", ("filelock", "numpy; extra == 'opt'"), ("torch/__init__.py", "torch/_C.so"))
    _dist(site, "transformers", ("numpy>=1.17",), ("transformers/__init__.py",))
    return list(md.distributions(path=[str(site)]))


def test_hidden_are_numpy_and_what_is_built_for_numpy_2(tmp_path):
    dists = _fake_host(tmp_path / "site-packages")
    hidden = host_site.hidden_distributions(dists, ("extra-one",))
    assert hidden == {"numpy", "scipy", "scikit-learn", "needs-np2", "plugin", "extra-one"}


def test_view_links_the_rest_and_skips_the_project(tmp_path):
    site = tmp_path / "site-packages"
    dists = _fake_host(site)
    (site / "__editable__.llm_core-0.1.0.pth").write_text("/somewhere\n")
    view = tmp_path / "view"
    host_site.build_view(view, [site], host_site.hidden_distributions(dists), dists)
    names = {p.name for p in view.iterdir()}
    assert {"torch", "transformers", "uses_np", "torch-1.0.dist-info"} <= names
    assert not names & {"numpy", "numpy.libs", "numpy-1.0.dist-info", "scipy", "sklearn", "needs_np2.py", "plugin"}
    assert not any("llm_core" in n for n in names)
    assert (view / "torch").resolve() == (site / "torch").resolve()


def test_env_check_covers_every_model_import():
    specs = model_imports()
    assert ImportSpec("transformers", ("AutoTokenizer",)) in specs  # imported inside initialize()
    assert ImportSpec("numpy", ()) in specs
    assert not any(s.module.startswith("triton_python_backend_utils") for s in specs)
    assert {"llm_core.engine", "llm_core.serving.preprocess", "llm_core.serving.visual"} <= {s.module for s in specs}


def test_env_check_names_package_and_fix(tmp_path, monkeypatch):
    assert check([ImportSpec("json", ("loads",))]) == []
    missing = check([ImportSpec("no_such_module_xyz", ())])
    assert len(missing) == 1 and "package: no_such_module_xyz" in missing[0] and "pip install" in missing[0]
    # a package built for numpy 2 failing under numpy 1.x: named from the traceback, hidden as the fix
    pkg = tmp_path / "site-packages" / "np2pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise AttributeError(\"module 'numpy' has no attribute 'long'\")\n")
    monkeypatch.syspath_prepend(str(pkg.parent))
    try:
        import np2pkg  # noqa: F401
    except AttributeError as exc:
        message = advice(ImportSpec("transformers", ("AutoTokenizer",)), exc)
    finally:
        sys.modules.pop("np2pkg", None)
    assert "package: np2pkg" in message and "LLM_HOST_HIDE=np2pkg" in message


def test_every_shell_script_parses_and_every_listed_device_check_exists():
    # The device scripts run only on a lent GPU machine, where a syntax error costs a start and a call: `bash -n`
    # here. And every `bash scripts/device/X.sh` the device README lists is a file.
    import re
    import subprocess

    tracked = subprocess.run(["git", "ls-files", "*.sh"], cwd=ROOT, capture_output=True, text=True, check=True)
    scripts = [ROOT / name for name in tracked.stdout.split()]
    assert ROOT / "scripts" / "device" / "served_ab.sh" in scripts
    for path in scripts:
        parsed = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert parsed.returncode == 0, f"{path.relative_to(ROOT)}: {parsed.stderr}"
    listed = set(re.findall(r"bash (scripts/device/\w+\.sh)", (ROOT / "scripts" / "device" / "README.md").read_text()))
    assert "scripts/device/decode_ab.sh" in listed
    assert not [name for name in listed if not (ROOT / name).is_file()]
