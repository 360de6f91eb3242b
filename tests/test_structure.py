"""The import structure: no strategy imports another, no module below the front ends
imports the package root, no import cycle, and the trainer does not load the dataset registry.

Read from the source with ``ast`` (nothing is imported): every ``import`` statement
counts, at module level or inside a function, except those under ``if TYPE_CHECKING:``.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "fairdefense"
STRATEGIES = sorted((ROOT / "plugins").glob("*.py")) + sorted((ROOT / "examples").glob("*/*.py"))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """``(module, names)`` of every import outside ``if TYPE_CHECKING:`` blocks."""
    found: list[tuple[str, list[str]]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, [alias.name for alias in node.names]))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


def edges(path: Path) -> set[str]:
    """The fairdefense modules a file imports (``from a import b`` counts ``a.b`` when it is a module)."""
    out = set()
    for module, names in imports(path):
        if module.split(".")[0] != "fairdefense":
            continue
        submodules = [f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES]
        out.update(submodules)
        if len(submodules) < len(names) or not names:
            out.add(module)
    return out


GRAPH = {name: edges(path) for name, path in MODULES.items()}


@pytest.mark.parametrize("path", STRATEGIES, ids=lambda p: p.name)
def test_no_strategy_imports_another(path):
    strategies = {"fairdefense_plugins", "fairdefense_example_plugin"}
    bad = [m for m, _ in imports(path) if m.split(".")[0] in strategies]
    assert not bad, f"{path.name} imports {bad}: share code through fairdefense.toolkit instead"


def test_no_module_below_the_front_ends_imports_the_package_root():
    offenders = {
        name: sorted(GRAPH[name] & {"fairdefense"})
        for name in MODULES
        if name != "fairdefense" and "fairdefense" in GRAPH[name]
    }
    assert not offenders, f"import the defining module, not the package root: {offenders}"


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path that ends where it starts, or ``None``."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(name: str, path: list[str]) -> list[str] | None:
        state[name] = 1
        for target in sorted(graph.get(name, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                found = visit(target, path + [target])
                if found:
                    return found
        state[name] = 2
        return None

    for name in sorted(graph):
        if name not in state:
            found = visit(name, [name])
            if found:
                return found
    return None


def test_no_import_cycle():
    cycle = find_cycle(GRAPH)
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def closure(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for target in GRAPH.get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_the_trainer_and_the_contract_stay_light():
    assert "fairdefense.data" not in closure("fairdefense.trainer"), "per_class_split must not load the dataset registry"
    assert "fairdefense.pluginhost" not in closure("fairdefense.hookdoc"), "the docs tool reads the contract only"
    assert closure("fairdefense.hookspecs") == set(), "the contract imports nothing of fairdefense at run time"


def test_the_checker_sees_cycles_root_imports_and_skips_type_checking(tmp_path):
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
    assert "fairdefense.trainer" in GRAPH["fairdefense.api"] and "fairdefense.api" in GRAPH["fairdefense"]
    source = tmp_path / "m.py"
    source.write_text(
        "from fairdefense import __version__, hookspecs\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import fairdefense.api\n"
        "def f():\n    import fairdefense.trainer\n"
    )
    assert edges(source) == {"fairdefense", "fairdefense.hookspecs", "fairdefense.trainer"}


def test_the_star_import_leaves_art_alone_and_the_art_names_stay_reachable():
    import subprocess
    import sys

    import fairdefense

    code = "import sys\nfrom fairdefense import *\nprint('art' in sys.modules, 'TrainConfig' in dir())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True"]
    assert not set(fairdefense._ART_EXPORTS) & set(fairdefense.__all__)
    assert set(fairdefense._ART_EXPORTS) <= set(dir(fairdefense))  # still found by completion, loaded on access


def test_the_package_ships_py_typed_and_reads_its_version_from_its_own_module():
    import configparser

    import fairdefense
    from fairdefense.version import __version__

    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    assert (PACKAGE / "py.typed").is_file()
    assert "py.typed" in config["options.package_data"]["fairdefense"]
    assert config["metadata"]["version"] == "attr: fairdefense.version.__version__"
    assert fairdefense.__version__ == __version__
