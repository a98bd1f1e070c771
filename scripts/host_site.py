"""Let a project venv reuse a host Python's packages (its CUDA torch above all) without numpy 2 ABIs.

Run by the HOST python (standard library only; setup_env.sh does this):

    python scripts/host_site.py VIEW_DIR VENV_SITE_PACKAGES [--hide DIST ...]

It writes VIEW_DIR: one symlink per entry of every site-packages directory the host python sees
(system python, venv or conda env alike), less what must not reach an environment that runs
numpy 1.x (the Python backend stub of tritonserver 2.51 needs numpy<2: docs/SERVING.md,
'Facts about tritonserver 2.51'):
- numpy itself (the venv installs numpy<2 over it);
- every distribution that requires numpy and either ships compiled modules (built against the
  host's numpy, e.g. scipy, scikit-learn, pandas) or whose numpy requirement excludes 1.26;
- every distribution that requires a hidden one, and the names given with --hide.
Then it writes VENV_SITE_PACKAGES/zz_llm_core_host_site.pth, which appends VIEW_DIR to sys.path
after the venv's own site-packages, so what pip installs into the venv wins.

Why not `venv --system-site-packages`: from a python that is itself a venv (or a conda env) that
shows the *base* interpreter's packages, not the env's, and it cannot hide anything.
VIEW_DIR must lie outside the venv's prefix: pip then treats the host packages as "outside
environment" and never uninstalls them through the symlinks.
Prints one JSON line: {"view", "site_dirs", "hidden", "fingerprint"}.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata as md
import json
import re
import shutil
import sys
from pathlib import Path

NUMPY_1 = "1.26.4"  # the numpy<2 the venv gets; a numpy requirement that excludes it means numpy 2
ALWAYS_HIDDEN = ("numpy",)
NEVER_HIDDEN = ("torch", "transformers")  # pure Python against numpy, or numpy-optional (torch)
PROJECT = "llm_core"  # an editable install of the project in the host would shadow the checkout
PTH_NAME = "zz_llm_core_host_site.pth"
COMPILED = (".so", ".pyd")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def host_site_dirs() -> list[Path]:
    """The site-packages directories of this interpreter, in sys.path order."""
    dirs = []
    for entry in sys.path:
        path = Path(entry)
        if path.name in ("site-packages", "dist-packages") and path.is_dir() and path not in dirs:
            dirs.append(path)
    return dirs


def _requirement_names(dist: md.Distribution) -> dict[str, str]:
    """{canonical name: specifier text} of the requirements that hold without extras."""
    names = {}
    for req in dist.requires or ():
        body, _, marker = req.partition(";")
        if "extra" in marker:
            continue
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*\(?([^)]*)\)?", body)
        if match:
            names[canonical(match.group(1))] = match.group(3).strip()
    return names


def _admits_numpy_1(spec: str) -> bool:
    """Whether a numpy specifier admits NUMPY_1 (an unparsable one counts as not admitting it)."""
    try:
        from packaging.specifiers import SpecifierSet
    except ImportError:
        try:
            from pip._vendor.packaging.specifiers import SpecifierSet
        except ImportError:
            return not re.search(r">=?\s*2", spec)
    try:
        return SpecifierSet(spec).contains(NUMPY_1, prereleases=True)
    except Exception:
        return False


def _is_compiled(dist: md.Distribution) -> bool:
    return any(str(f).endswith(COMPILED) or ".so." in str(f) for f in dist.files or ())


def hidden_distributions(dists: list[md.Distribution], extra: tuple[str, ...] = ()) -> set[str]:
    """Canonical names of the distributions to leave out of the view (see the module docstring)."""
    requires = {canonical(d.metadata["Name"]): _requirement_names(d) for d in dists if d.metadata["Name"]}
    by_name = {canonical(d.metadata["Name"]): d for d in dists if d.metadata["Name"]}
    hidden = {canonical(n) for n in ALWAYS_HIDDEN + tuple(extra)}
    keep = {canonical(n) for n in NEVER_HIDDEN}
    for name, reqs in requires.items():
        if "numpy" in reqs and name not in keep:
            if _is_compiled(by_name[name]) or not _admits_numpy_1(reqs["numpy"]):
                hidden.add(name)
    changed = True
    while changed:  # whatever requires a hidden distribution would fail to import: hide it too
        changed = False  # (numpy is replaced by the venv's numpy<2, not missing)
        for name, reqs in requires.items():
            if name not in hidden and name not in keep and (hidden - {"numpy"}) & set(reqs):
                hidden.add(name)
                changed = True
    return hidden


def _owned_entries(dist: md.Distribution, site_dir: Path) -> set[str]:
    """Top-level names in site_dir that belong to dist (packages, modules, .libs, its dist-info)."""
    owned = set()
    for file in dist.files or ():
        top = Path(file).parts[0] if Path(file).parts else ""
        if top and top != ".." and (site_dir / top).exists():
            owned.add(top)
    info = getattr(dist, "_path", None)
    if info is not None:
        owned.add(Path(info).name)
    return owned


def build_view(view: Path, site_dirs: list[Path], hide: set[str], dists: list[md.Distribution]) -> list[str]:
    """Recreate `view` as symlinks to the site dirs' entries not owned by hidden distributions."""
    excluded: dict[Path, set[str]] = {d: set() for d in site_dirs}
    for dist in dists:
        name = canonical(dist.metadata["Name"] or "")
        location = Path(str(dist.locate_file(""))).resolve()
        for site_dir in site_dirs:
            if site_dir.resolve() == location and (name in hide or name == canonical(PROJECT)):
                excluded[site_dir] |= _owned_entries(dist, site_dir)
    tmp = view.with_name(view.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    linked = []
    for site_dir in site_dirs:
        for entry in sorted(site_dir.iterdir()):
            if entry.name in excluded[site_dir] or PROJECT in entry.name or (tmp / entry.name).exists():
                continue
            if entry.name == "__pycache__":
                continue
            (tmp / entry.name).symlink_to(entry)
            linked.append(str(entry))
    shutil.rmtree(view, ignore_errors=True)
    tmp.rename(view)
    return linked


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("view", type=Path, help="folder of symlinks to (re)create; outside the venv's prefix")
    ap.add_argument("venv_site", type=Path, help="the venv's site-packages (gets the .pth)")
    ap.add_argument("--hide", nargs="*", default=[], help="more distribution names to leave out")
    args = ap.parse_args(argv)
    site_dirs = host_site_dirs()
    dists = list(md.distributions(path=[str(d) for d in site_dirs]))
    hide = hidden_distributions(dists, tuple(args.hide))
    view = args.view.absolute()
    linked = build_view(view, site_dirs, hide, dists)
    (args.venv_site / PTH_NAME).write_text(f"import site; site.addsitedir({str(view)!r})\n")
    fingerprint = hashlib.sha256("\n".join(linked + sorted(hide)).encode()).hexdigest()[:16]
    present = sorted(hide & {canonical(d.metadata["Name"] or "") for d in dists})
    print(json.dumps({"view": str(view), "site_dirs": [str(d) for d in site_dirs], "hidden": present,
                      "fingerprint": fingerprint}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
