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
        for path in sorted((PACKAGE / name).glob("*.py")):  # and every public name of the room is listed
            if path.name != "__init__.py":
                for public in defined_names(path):
                    assert package._HOMES.get(public) == path.stem, f"pneumocam.{name} does not list {public}"


def defined_names(path: Path) -> list[str]:
    """The public names a module defines at its top level (functions, classes, assigned constants)."""
    names = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, ast.Assign):
            names += [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.append(node.target.id)
    return [n for n in names if not n.startswith("_") and n != "log"]


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_modules_and_functions_stay_small(path):
    source = path.read_text()
    assert source.count("\n") <= 400, f"{path.name}: {source.count(chr(10))} lines"
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            assert length <= 60, f"{path.name}: {node.name} has {length} lines"
