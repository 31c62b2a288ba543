"""Who may import whom: the layer rules of the code, read from its imports with ``ast``.

Every import counts, the function-local ones too (a lazy import is still a
dependency). Module names are the installed ones: ``backends/x.py`` is
``harness.backends.x``, ``kernels/x.py`` is ``harness.kernels.x``.
"""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FOLDERS = {"harness": "harness", "backends": "harness.backends", "kernels": "harness.kernels"}

LEAVES = ("harness.defaults", "harness.errors", "harness.manifest", "harness.paths", "harness.results", "harness.stats")
RUNTIME_SETTINGS = ("harness.backends.llamacpp.config", "harness.backends.ort.config", "harness.backends.pytorch.config")

# package or module -> the harness modules (or packages) it may import, besides its own package's.
# The commands (harness.cli, harness.compare, harness.prepare) sit on top and may import anything.
ALLOWED = {
    **{leaf: () for leaf in LEAVES},
    # the store reads the schema and its own helpers: loading it loads no report, backend or measurement
    "harness.store": ("harness.results", "harness.paths", "harness.stats", "harness.errors"),
    "harness.kernels": (),  # a package of its own: relative imports only
    "harness.machine": ("harness.results", "harness.errors"),
    "harness.text": ("harness.errors", "harness.paths", "harness.machine"),
    "harness.build": ("harness.errors", "harness.manifest", "harness.paths", "harness.machine", "harness.backends"),
    # the backends know the machine and the variant they load; no configuration, measurement or report
    "harness.backends": ("harness.kernels", "harness.machine", "harness.manifest", "harness.errors"),
    # measurement reads its defaults from harness.defaults, never from the command's configuration
    "harness.measure": ("harness.backends", "harness.kernels", "harness.text", "harness.machine", *LEAVES),
    # a runner runs any job and looks inside none: no measurement, configuration or report
    "harness.run": ("harness.machine", "harness.results", "harness.manifest", "harness.defaults", "harness.errors"),
    # reports read results; they never load a backend or measure
    "harness.report": ("harness.results", "harness.defaults", "harness.stats"),
    # --sweep's axes: read from the configuration, so no more than it may import, and the schema's Point
    "harness.sweep": ("harness.errors", "harness.results", *RUNTIME_SETTINGS),
    "harness.config": ("harness.defaults", "harness.errors", "harness.text.protocols", "harness.sweep",
                       *RUNTIME_SETTINGS),
}
ROLE_PACKAGES = ("build", "machine", "measure", "report", "run", "text")


def _module_name(path: Path) -> str:
    relative = path.relative_to(REPO).with_suffix("")
    parts = [FOLDERS[relative.parts[0]], *relative.parts[1:]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _module_paths() -> dict[str, Path]:
    return {_module_name(path): path for folder in FOLDERS for path in sorted((REPO / folder).rglob("*.py"))}


@lru_cache(maxsize=None)
def imports_by_module() -> dict[str, set[str]]:
    """Each module of the three folders -> the harness modules it imports (relative imports resolved)."""
    paths = _module_paths()
    found = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found[name] = {target for target in _imported(ast.parse(path.read_text()), package, set(paths))
                       if target == "harness" or target.startswith("harness.")}
    return found


def _imported(tree: ast.AST, package: str, modules: set[str]):
    """The modules an import statement loads: ``from harness.report import files`` is harness.report.files."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            yield from (f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names)


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _resolved(target: str, modules: set[str]) -> str:
    """``harness.backends.open_backend`` (a name from a package) is the package ``harness.backends``."""
    while target not in modules and "." in target:
        target = target.rpartition(".")[0]
    return target


def _breaches(rule: str, imported: set[str], modules: set[str]) -> list[str]:
    """What ``imported`` holds that the rule's layer may not import (its own package is always allowed)."""
    return sorted(target for target in (_resolved(t, modules) for t in imported)
                  if not any(_within(target, ok) for ok in (rule, *ALLOWED[rule])))


def test_every_rule_names_modules_that_exist():
    modules = set(imports_by_module())
    named = set(ALLOWED) | {m for ms in ALLOWED.values() for m in ms}
    assert {name for name in named if not any(_within(m, name) for m in modules)} == set()


def test_every_module_below_the_commands_has_a_rule():
    commands = {"harness", "harness.__main__", "harness.cli", "harness.compare", "harness.prepare"}
    ruled = {module for module in imports_by_module() if any(_within(module, rule) for rule in ALLOWED)}
    assert set(imports_by_module()) - ruled == commands


@pytest.mark.parametrize("rule", sorted(ALLOWED))
def test_a_module_imports_only_what_its_layer_allows(rule):
    graph = imports_by_module()
    breaches = {module: _breaches(rule, targets, set(graph)) for module, targets in graph.items() if _within(module, rule)}
    assert {module: targets for module, targets in breaches.items() if targets} == {}


def test_no_import_circle_between_modules():
    graph = imports_by_module()
    modules = set(graph)
    edges = {module: {_resolved(t, modules) for t in targets} - {module, "harness"} for module, targets in graph.items()}
    circles = []
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(edges.get(module, ())):
            if _within(module, target) or _within(target, module):
                continue  # a package and its own modules (an __init__ re-exporting them) are one unit
            if state.get(target) == 1:
                circles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert circles == []


@pytest.mark.parametrize("package", ROLE_PACKAGES)
def test_each_role_package_says_what_it_is_for_and_what_it_may_import(package):
    doc = ast.get_docstring(ast.parse((REPO / "harness" / package / "__init__.py").read_text())) or ""
    assert len(doc.splitlines()[0]) > 20 and "may import" in doc.lower(), doc


def test_the_rules_would_have_caught_the_store_loading_the_report():
    # The same reading of a store that imports the report's serialiser, as it did before the schema got it.
    modules = set(imports_by_module())
    tree = ast.parse("from harness.report import files\nfrom harness.results import RunRecord\n")
    imported = set(_imported(tree, "harness", modules))
    assert imported == {"harness.report.files", "harness.results"}
    assert _breaches("harness.store", imported, modules) == ["harness.report.files"]


def test_the_rules_would_have_caught_the_ray_runner_reading_the_measurement():
    # The Ray runner once took the reference record's file names from the measurement.
    modules = set(imports_by_module())
    tree = ast.parse("from harness.measure.reference_record import LOGITS_NAME\n")
    assert _breaches("harness.run", set(_imported(tree, "harness.run", modules)), modules) == [
        "harness.measure.reference_record"]
