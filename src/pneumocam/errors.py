"""The one exception type a user sees as a one-line message instead of a traceback.

Every module may raise a subclass; the CLI catches this base and prints `error: <message>`.
"""


class PneumocamError(Exception):
    """A problem with the user's input or environment; the message names the file/value and the fix."""


def install_hint(extra: str) -> str:
    """How to install an optional part, from PyPI or from a clone of the repository."""
    return f'pip install "pneumocam[{extra}]" (in a clone of pneumocam: pip install ".[{extra}]")'


def missing_extra(what: str, module: str, extra: str) -> PneumocamError:
    """The one-line error for an optional library that is not installed."""
    return PneumocamError(f"{what} needs {module}, which is not installed: {install_hint(extra)}")


def require_extra(what: str, extra: str, *modules: str) -> None:
    """Import `modules` or raise missing_extra for the first that is not installed (before any work starts)."""
    import importlib

    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise missing_extra(what, module.split(".")[0], extra) from exc
