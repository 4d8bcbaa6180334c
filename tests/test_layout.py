"""The house rules of docs/architecture.md: imports point one way, modules and functions stay small."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "pneumocam"
MODULES = sorted(p for p in PACKAGE.rglob("*.py"))
FRONT_ENDS = ("pneumocam.cli", "pneumocam.server")
BOTTOM = {"pneumocam.config", "pneumocam.errors", "pneumocam.files"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pneumocam"):
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.startswith("pneumocam")}
    return names


def layer(name: str) -> str:
    if name.startswith(FRONT_ENDS):
        return "front end"
    if name.startswith("pneumocam.commands"):
        return "step"
    return "bottom" if name in BOTTOM else "library"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_imports_point_one_way(path):
    here = module_name(path)
    for target in imported(path) - {"pneumocam"}:
        if layer(here) == "library":
            assert layer(target) in ("library", "bottom"), f"{here} imports {target}"
        if layer(here) == "bottom":
            assert target in BOTTOM, f"{here} imports {target}"
        if layer(here) == "step" and layer(target) == "step" and here != "pneumocam.commands.demo":
            raise AssertionError(f"step {here} imports step {target}; move what they share into the library")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_modules_and_functions_stay_small(path):
    source = path.read_text()
    assert source.count("\n") <= 400, f"{path.name}: {source.count(chr(10))} lines"
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            assert length <= 60, f"{path.name}: {node.name} has {length} lines"
