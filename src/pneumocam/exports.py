"""How a sub-package offers its public names at one path (`from pneumocam.data import read_image`) without
importing every module of the room up front: a name's module is imported when the name is first asked for, so
`import pneumocam.deploy` stays as light as the modules a command really uses (the ONNX path never imports torch).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_exports(package: str, homes: dict[str, str]) -> Callable[[str], object]:
    """A module-level `__getattr__` for `package` that finds each of `homes` (name -> module of the package)."""

    def __getattr__(name: str) -> object:
        if name not in homes:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{homes[name]}"), name)

    return __getattr__
