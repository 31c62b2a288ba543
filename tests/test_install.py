"""The installed import names: everything under `harness`, no generic top-level names claimed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

PROBE = """
import importlib.util, json
import harness, harness.backends, harness.kernels
print(json.dumps({
    "harness": harness.__file__,
    "harness.backends": harness.backends.__file__,
    "harness.kernels": harness.kernels.__file__,
    "kernels": getattr(importlib.util.find_spec("kernels"), "origin", None),
    "backends": getattr(importlib.util.find_spec("backends"), "origin", None),
}))
"""


def test_folders_install_under_the_harness_namespace_only(tmp_path):
    # Run from an unrelated folder so the repository is not on sys.path by accident.
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, capture_output=True, text=True, check=True)
    found = json.loads(out.stdout)
    assert Path(found["harness"]) == REPO / "harness" / "__init__.py"
    assert Path(found["harness.backends"]) == REPO / "backends" / "__init__.py"
    assert Path(found["harness.kernels"]) == REPO / "kernels" / "__init__.py"
    for generic in ("kernels", "backends"):
        origin = found[generic]
        assert origin is None or not Path(origin).is_relative_to(REPO), f"we claim top-level {generic!r}: {origin}"


# The packages the installed distribution provides, {dotted name: folder}, read from its file list:
# setuptools' editable finder maps each package to a folder (the default editable install); a .pth
# line names a folder whose packages it puts on sys.path (editable_mode=strict's link tree); an
# __init__.py in the record is a package (a regular install).
DIST_PROBE = """
import ast, json, pathlib
from importlib.metadata import distribution

def packages_under(root):
    return {".".join(p.parent.relative_to(root).parts): str(p.parent) for p in root.rglob("__init__.py")}

packages = {}
for f in distribution("harness").files or []:
    path = pathlib.Path(f.locate())
    if f.name.startswith("__editable__") and f.name.endswith("_finder.py"):
        mapping = path.read_text().split("MAPPING: dict[str, str] = ", 1)[1].splitlines()[0]
        packages.update(ast.literal_eval(mapping))
    elif f.suffix == ".pth":
        for line in path.read_text().splitlines():
            if line.strip() and not line.startswith(("import ", "#")) and pathlib.Path(line.strip()).is_dir():
                packages.update(packages_under(pathlib.Path(line.strip())))
    elif f.name == "__init__.py":
        packages[".".join(f.parts[:-1])] = str(path.parent)
print(json.dumps(packages))
"""


def test_distribution_provides_harness_and_its_two_mapped_packages_only(tmp_path):
    # Outside the repository, so the metadata read is the installed one, not the checkout's harness.egg-info.
    out = subprocess.run([sys.executable, "-c", DIST_PROBE], cwd=tmp_path, capture_output=True, text=True, check=True)
    packages = json.loads(out.stdout)
    assert {"harness", "harness.backends", "harness.kernels"} <= set(packages), packages
    assert {name.split(".")[0] for name in packages} == {"harness"}, packages  # no top-level kernels/backends


def test_help_does_not_import_the_runtimes():
    probe = "import sys, harness.cli as c\ntry:\n    c.main(['--help'])\nexcept SystemExit:\n    pass\n" \
            "print(sorted(m for m in ('torch', 'onnxruntime', 'llama_cpp', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_run_from_the_checkout_transformers_gets_hugging_faces_kernels_not_ours():
    # `python -m harness` in the checkout (the README's first command) puts its root on sys.path, where
    # kernels/ would shadow the `kernels` distribution transformers imports with every model.
    probe = ("import harness, kernels, transformers.activations\n"
             "print(kernels.__file__)")
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert Path(out.stdout.strip()).resolve() != REPO / "kernels" / "__init__.py"
