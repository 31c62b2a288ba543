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


def test_distribution_declares_only_harness_packages():
    from importlib.metadata import distribution

    dist = distribution("harness")
    text = dist.read_text("top_level.txt")
    if text is not None:
        assert set(text.split()) <= {"harness"}, text
    mapping = [f for f in dist.files or [] if "editable" in f.name and f.name.endswith(".py")]
    for finder in mapping:  # setuptools' editable finder names every package it maps
        source = finder.read_text()
        assert "'kernels'" not in source and "'backends'" not in source, source
        assert "'harness.kernels'" in source and "'harness.backends'" in source


def test_help_does_not_import_the_runtimes():
    probe = "import sys, harness.cli as c\ntry:\n    c.main(['--help'])\nexcept SystemExit:\n    pass\n" \
            "print(sorted(m for m in ('torch', 'onnxruntime', 'llama_cpp', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
