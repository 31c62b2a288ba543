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

MEASUREMENT = ("harness.accuracy", "harness.efficiency", "harness.measure", "harness.reference_record",
               "harness.divergence_stats")
REPORTS = ("harness.report", "harness.report_files", "harness.report_format", "harness.report_html",
           "harness.recommendations", "harness.divergence_report", "harness.history_report")
COMMANDS = ("harness.cli", "harness.compare_command", "harness.prepare_command")

# module (or prefix) -> the harness modules it may import; None: anything but what FORBIDDEN names
ALLOWED = {
    "harness.defaults": (),
    "harness.errors": (),
    "harness.results": (),
    "harness.store": ("harness.results", "harness.paths", "harness.stats", "harness.errors"),
    "harness.kernels": ("harness.kernels",),  # a package of its own: relative imports only
}
# module (or prefix) -> the harness modules (or prefixes) it must not import
FORBIDDEN = {
    # the generic runner runs any job: it knows no measurement, configuration or report
    "harness.runner": ("harness.config", *MEASUREMENT, *REPORTS, *COMMANDS),
    # the Ray runner carries a job's files and its reference record (harness.reference_record's file names), no more
    "harness.ray_runner": ("harness.config", "harness.measure", "harness.accuracy", "harness.efficiency", *REPORTS,
                           *COMMANDS),
    "harness.cluster": ("harness.config", *MEASUREMENT, *REPORTS, *COMMANDS),
    # measurement reads its defaults from harness.defaults, never from the command's configuration
    **{module: ("harness.config", *REPORTS, *COMMANDS) for module in MEASUREMENT},
    # reports read results; they never load a backend or measure
    **{module: ("harness.backends", "harness.kernels", *MEASUREMENT, "harness.runner", "harness.ray_runner",
                *COMMANDS) for module in REPORTS},
    "harness.backends": ("harness.config", *MEASUREMENT, *REPORTS, *COMMANDS),
}


def _module_name(path: Path) -> str:
    relative = path.relative_to(REPO).with_suffix("")
    parts = [FOLDERS[relative.parts[0]], *relative.parts[1:]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@lru_cache(maxsize=None)
def imports_by_module() -> dict[str, set[str]]:
    """Each module of the three folders -> the harness modules it imports (relative imports resolved)."""
    found = {}
    for folder in FOLDERS:
        for path in sorted((REPO / folder).rglob("*.py")):
            name = _module_name(path)
            package = name if path.name == "__init__.py" else name.rpartition(".")[0]
            found[name] = {target for target in _imported(ast.parse(path.read_text()), package)
                           if target == "harness" or target.startswith("harness.")}
    return found


def _imported(tree: ast.AST, package: str):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            # ``from harness import store`` imports the module harness.store
            yield from (f"{base}.{alias.name}" if base in ("harness", *_PACKAGES) else base for alias in node.names)


_PACKAGES = ("harness.backends", "harness.kernels")


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _resolved(target: str, modules: set[str]) -> str:
    """``harness.backends.open_backend`` (a name from a package) is the package ``harness.backends``."""
    while target not in modules and "." in target:
        target = target.rpartition(".")[0]
    return target


def test_every_rule_names_modules_that_exist():
    modules = set(imports_by_module())
    named = set(ALLOWED) | set(FORBIDDEN) | {m for ms in (*ALLOWED.values(), *FORBIDDEN.values()) for m in ms}
    assert {name for name in named if not any(_within(m, name) for m in modules)} == set()


@pytest.mark.parametrize("rule", sorted(ALLOWED))
def test_a_module_imports_only_what_its_layer_allows(rule):
    graph = imports_by_module()
    modules = set(graph)
    breaches = {module: sorted(target for target in map(lambda t: _resolved(t, modules), graph[module])
                               if target != module and not any(_within(target, ok) for ok in ALLOWED[rule]))
                for module in graph if _within(module, rule)}
    assert {module: targets for module, targets in breaches.items() if targets} == {}


@pytest.mark.parametrize("rule", sorted(FORBIDDEN))
def test_a_module_imports_nothing_its_layer_forbids(rule):
    graph = imports_by_module()
    modules = set(graph)
    breaches = {module: sorted(target for target in map(lambda t: _resolved(t, modules), graph[module])
                               if any(_within(target, banned) for banned in FORBIDDEN[rule]))
                for module in graph if _within(module, rule)}
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


def test_the_rules_would_have_caught_the_store_loading_the_report():
    # The same reading of a store that imports the report's serialiser, as it did before the schema got it.
    tree = ast.parse("from harness.report_files import json_safe\nfrom harness.results import RunRecord\n")
    imported = set(_imported(tree, "harness"))
    assert imported == {"harness.report_files", "harness.results"}
    assert not all(any(_within(t, ok) for ok in ALLOWED["harness.store"]) for t in imported)
