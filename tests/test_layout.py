"""The house rules of docs/architecture.md: rooms import downward only, modules and functions stay small."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "pneumocam"
MODULES = sorted(p for p in PACKAGE.rglob("*.py"))
FRONT_ENDS = ("pneumocam.cli", "pneumocam.deploy.server")
BOTTOM = {"pneumocam.config", "pneumocam.errors", "pneumocam.files", "pneumocam.provenance", "pneumocam.exports",
          "pneumocam.weights"}  # weights: the bundled models, package data
# which rooms (sub-packages) a room's modules may import, besides its own and the bottom: downward only
ROOMS = {
    "data": set(),
    "model": {"data"},
    "explain": {"data", "model"},
    "training": {"data", "model", "explain"},
    "deploy": {"data", "model", "explain"},
    "evaluation": {"data", "model", "explain", "deploy"},
}


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


def room(name: str) -> str:
    """The room of a module: bottom, a library sub-package, step (commands) or front end (cli, server)."""
    if name.startswith(FRONT_ENDS):
        return "front end"
    if name in BOTTOM or name == "pneumocam":
        return "bottom"
    part = name.split(".")[1]
    return "step" if part == "commands" else part


def test_every_library_module_lives_in_a_room():
    for path in MODULES:
        name = module_name(path)
        assert room(name) in {*ROOMS, "bottom", "step", "front end"}, f"{name} is in no room"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_imports_point_one_way(path):
    here = module_name(path)
    for target in imported(path):
        mine, theirs = room(here), room(target)
        if mine in ROOMS:
            assert theirs in ROOMS[mine] | {mine, "bottom"}, f"{here} ({mine}) imports {target} ({theirs})"
        if mine == "bottom":
            assert theirs == "bottom", f"{here} imports {target}"
        if mine == "step" and theirs == "step" and here != "pneumocam.commands.demo":
            raise AssertionError(f"step {here} imports step {target}; move what they share into the library")


def test_sub_packages_export_each_public_name_from_its_module():
    import importlib

    for name in ROOMS:
        package = importlib.import_module(f"pneumocam.{name}")
        assert package.__all__ == sorted(package._HOMES)
        for public, module in package._HOMES.items():
            assert hasattr(importlib.import_module(f"pneumocam.{name}.{module}"), public), f"{name}.{public}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_modules_and_functions_stay_small(path):
    source = path.read_text()
    assert source.count("\n") <= 400, f"{path.name}: {source.count(chr(10))} lines"
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            assert length <= 60, f"{path.name}: {node.name} has {length} lines"
