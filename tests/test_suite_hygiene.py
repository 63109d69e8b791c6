"""The test suite's own rules: shared helpers in one module, slow tests marked, no private Hydra."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
MODULES = sorted(TESTS.glob("test_*.py"))


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _imported(tree: ast.Module) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def _starts_a_process(node: ast.FunctionDef) -> bool:
    return any(
        isinstance(n, ast.Attribute)
        and isinstance(n.value, ast.Name)
        and n.value.id == "subprocess"
        for n in ast.walk(node)
    )


def _is_slow(node: ast.FunctionDef, module_marked: bool) -> bool:
    return module_marked or any("slow" in ast.unparse(d) for d in node.decorator_list)


@pytest.mark.parametrize("path", MODULES, ids=[p.name for p in MODULES])
def test_no_test_module_imports_another(path: Path) -> None:
    imported = _imported(_tree(path))
    others = sorted(m for m in imported if m.startswith("tests.test_") or m.startswith("test_"))
    assert not others, f"{path.name} imports {others}: move shared code into tests/helpers.py"
    assert not any(m.startswith("hydra._internal") for m in imported), path.name


@pytest.mark.parametrize("path", MODULES, ids=[p.name for p in MODULES])
def test_subprocess_tests_are_marked_slow(path: Path) -> None:
    tree = _tree(path)
    module_marked = any(
        isinstance(n, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in n.targets)
        and "slow" in ast.unparse(n.value)
        for n in tree.body
    )
    unmarked = [
        n.name
        for n in tree.body
        if isinstance(n, ast.FunctionDef)
        and n.name.startswith("test_")
        and _starts_a_process(n)
        and not _is_slow(n, module_marked)
    ]
    assert not unmarked, f"{path.name}: {unmarked} start a subprocess: mark them slow"
