"""The house rules of the code base, read from the source (every import, at any depth of a file):
padim_plugin needs no MLOps package, the wings of flows/ depend one way, nothing imports the
command line, and flows/ has no import circle (so no import inside a function can be hiding one)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from ..projects import REPOSITORY


def module_name(path: Path) -> str:
    parts = path.relative_to(REPOSITORY).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in the file, as absolute names."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}  # `from pkg import module`
    return found


SOURCES = {module_name(path): path for folder in ("flows", "padim_plugin")
           for path in (REPOSITORY / folder).rglob("*.py")}
GRAPH = {name: {target for target in imports(path) if target in SOURCES} for name, path in SOURCES.items()}
EXTERNAL = {name: imports(path) for name, path in SOURCES.items()}


def reaches(name: str, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(target for target in EXTERNAL[name]
                  if any(target == root or target.startswith(f"{root}.") for root in forbidden))


RULES = [  # (modules under, may never import)
    ("padim_plugin", ("flows", "prefect", "mlflow", "dvc")),
    ("flows.model", ("flows.registry", "prefect")),
    ("flows.data", ("flows.model", "flows.registry")),
]


@pytest.mark.parametrize(("under", "forbidden"), RULES, ids=[rule[0] for rule in RULES])
def test_a_wing_never_imports_what_it_must_not(under: str, forbidden: tuple[str, ...]) -> None:
    offenders = {name: reaches(name, forbidden) for name in SOURCES if name.startswith(under)}
    assert {name: found for name, found in offenders.items() if found} == {}


def test_nothing_imports_the_command_line() -> None:
    assert [name for name, targets in GRAPH.items() if "flows.cli" in targets] == []


def test_flows_has_no_import_circle() -> None:
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> list[str]:
        if name in path:
            return [*path[path.index(name):], name]
        if name in done:
            return []
        for target in sorted(GRAPH[name]):
            if target != name and target.startswith("flows") and not name.startswith(f"{target}."):
                circle = visit(target, [*path, name])
                if circle:
                    return circle
        done.add(name)
        return []

    for name in sorted(SOURCES):
        assert visit(name, []) == [], "import circle"


def test_the_rules_see_the_imports_they_judge() -> None:
    """The reader finds relative imports inside functions too (else the rules above prove nothing)."""
    assert "flows.registry.registry" in EXTERNAL["flows.retrain"]
    assert "flows.config" in EXTERNAL["flows.data.layout"]
    assert "anomalib.engine" in EXTERNAL["flows.model.build"]
    assert any(target.startswith("flows.") for target in EXTERNAL["flows.cli"])
