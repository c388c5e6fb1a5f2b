"""The package's import rules, read off the source (every import, also inside functions
and under ``TYPE_CHECKING``: a type hint is a dependency of the reader too).

* no import cycles between modules;
* the core (geometry → projector → reconstructors → laplace) imports none of the
  application layers (io, pipeline, evaluate, outputs, plots, cli);
* only :mod:`dip_uq.pipeline` sequences the stages (imports :mod:`dip_uq.stages`);
* ``laplace/`` imports no application module and nothing of :mod:`dip_uq.dip` but the
  ``DIP`` class it is built from (for type hints);
* modules stay under ``MAX_LINES`` unless listed in ``LONG_MODULES`` with the reason.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dip_uq"
APPLICATION = (
    "io",
    "settings",
    "stages",
    "pipeline",
    "holdout",
    "evaluate",
    "outputs",
    "plots",
    "cli",
    "cli_parser",
    "__main__",
)
# "about 600": a module past this does more than one job or should say why it does not
MAX_LINES = 600
LONG_MODULES = {
    # one cohesive thing each: the geometry classes share the conventions their docstring
    # states once; the ASTRA backend is one adapter (2D CPU, 2D/3D CUDA, DLPack) to one library
    "geometry": "every geometry class with the conventions they share",
    "projector.astra_backend": "one adapter to one library, 2D CPU and 2D/3D CUDA",
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py"


def _imports(name: str) -> set[str]:
    """The dip_uq modules (relative names, "" for the package) that module ``name`` imports."""
    path = MODULES[name]
    here = name.split(".") if _is_package(name) else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                if not (node.module or "").startswith("dip_uq"):
                    continue
                base = (node.module or "").split(".")[1:]
            else:
                base = here[: len(here) - node.level + 1] + (node.module or "").split(".")
                base = [part for part in base if part]
            target = ".".join(base)
            for alias in node.names:
                sub = f"{target}.{alias.name}" if target else alias.name
                found.add(sub if sub in MODULES else target)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("dip_uq"):
                    found.add(".".join(alias.name.split(".")[1:]))
    found.discard(name)
    return found


GRAPH = {name: _imports(name) for name in MODULES}


def test_the_graph_sees_known_edges() -> None:
    """Guards the parser itself: edges that must be there are found."""
    assert "laplace.posterior" in GRAPH["laplace"]
    assert "projector.ray_transform" in GRAPH["projector"]
    assert "pipeline" in GRAPH["cli"]
    assert "dip" in GRAPH["stages"]
    assert "stages" in GRAPH["pipeline"]


def test_every_import_resolves() -> None:
    missing = {n: sorted(t for t in ts if t not in MODULES) for n, ts in GRAPH.items()}
    missing = {n: ts for n, ts in missing.items() if ts}
    assert not missing, f"imports of modules that do not exist: {missing}"


def test_no_import_cycles() -> None:
    # a cycle is a back edge of a depth-first search
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(GRAPH.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*stack[stack.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])
    assert not cycles, f"import cycles: {cycles}"


def _layer(name: str) -> str:
    """The top-level module or subpackage ``name`` belongs to."""
    return name.split(".")[0]


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n and _layer(n) not in APPLICATION))
def test_the_core_imports_no_application_layer(name: str) -> None:
    bad = sorted(t for t in GRAPH[name] if t and _layer(t) in APPLICATION)
    assert not bad, f"dip_uq.{name} imports {bad}"


def test_only_the_pipeline_sequences_the_stages() -> None:
    importers = sorted(name for name, targets in GRAPH.items() if "stages" in targets)
    assert importers == ["pipeline"]


def _names_imported_from(name: str, module: str) -> set[str]:
    """The names module ``name`` imports from the dip_uq module ``module``."""
    names = set()
    here = name.split(".")[:-1] if not _is_package(name) else name.split(".")
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = here[: len(here) - node.level + 1] + (node.module or "").split(".")
            if ".".join(part for part in base if part) == module:
                names |= {alias.name for alias in node.names}
    return names


@pytest.mark.parametrize("name", sorted(n for n in MODULES if _layer(n) == "laplace"))
def test_laplace_takes_nothing_from_the_dip_but_its_class(name: str) -> None:
    assert _names_imported_from(name, "dip") <= {"DIP"}
    bad = sorted(t for t in GRAPH[name] if _layer(t) in APPLICATION)
    assert not bad, f"dip_uq.{name} imports {bad}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_stay_short(name: str) -> None:
    lines = len(MODULES[name].read_text().splitlines())
    if name in LONG_MODULES:
        return
    assert lines <= MAX_LINES, f"dip_uq.{name} has {lines} lines (limit {MAX_LINES})"
