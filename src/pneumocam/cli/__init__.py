"""The `pneumocam` command: parse arguments -> a config dataclass -> call one step.

Exit codes: 0 success; 1 a user error (message on stderr, no traceback); 3 finished, but some input
files were rejected or failed (listed in the command's rejected/failed CSV).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from pneumocam.cli.arguments import config_from_args, read_config_file
from pneumocam.cli.handlers import EXIT_ERROR, EXIT_OK, EXIT_PARTIAL
from pneumocam.cli.parser import build_parser
from pneumocam.errors import PneumocamError

__all__ = ["main", "build_parser", "EXIT_OK", "EXIT_ERROR", "EXIT_PARTIAL"]

# commands that draw figures with pyplot (predict, serve and pacs colour overlays without it)
DRAWING_COMMANDS = {"evaluate", "calibrate", "cam", "localize", "demo"}
# commands that write their settings to OUT/config.yaml (train writes RUN/config.yaml itself, for library runs too)
WRITES_SETTINGS = {"prepare", "evaluate", "calibrate", "cam", "localize", "predict", "demo"}


def parse_args(argv: list[str] | None) -> tuple:
    """(args, config): flags over --config FILE over the dataclass defaults."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "config", None):
        args.command_parser.set_defaults(**read_config_file(args.config, args.config_class))
        args = parser.parse_args(argv)
    config = config_from_args(args) if hasattr(args, "config_class") else None
    return args, config


def _set_up_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for chatty in ("highdicom", "dicomweb_client"):  # an INFO line per copied module, per request
        logging.getLogger(chatty).setLevel(logging.WARNING)
    if not verbose:
        # pydicom logs a traceback for each decoder plugin that fails before another succeeds; the reason that
        # matters reaches the user as one line naming the file. A filter, since importing pydicom resets levels.
        for handler in logging.getLogger().handlers:
            handler.addFilter(lambda r: not r.name.startswith("pydicom") or r.levelno >= logging.CRITICAL)


def _write_settings(args, config) -> None:
    from pneumocam.config import write_yaml

    folder = getattr(args, "out", None) if args.command in WRITES_SETTINGS else None
    if config is not None and folder and Path(folder).is_dir():
        write_yaml(Path(folder) / "config.yaml", config, args.command)


def main(argv: list[str] | None = None) -> int:
    if not (sys.argv[1:] if argv is None else argv):  # `pneumocam` alone: what it can do
        build_parser().print_help()
        return EXIT_OK
    try:
        args, config = parse_args(argv)
    except PneumocamError as exc:
        print(f"pneumocam: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if args.command in DRAWING_COMMANDS:  # the others skip matplotlib's import time
        import matplotlib

        matplotlib.use("Agg")  # the CLI only writes figures to files; never open a window
    _set_up_logging(args.verbose)
    try:
        code = args.handler(args, config)
        if code in (EXIT_OK, EXIT_PARTIAL):
            _write_settings(args, config)
        return code
    except PneumocamError as exc:
        print(f"pneumocam {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"pneumocam {args.command}: interrupted", file=sys.stderr)
        return 130
