"""Command-line flags built from the config dataclasses, and `--config FILE` read back into them.

Each field of a config is one `--kebab-case` flag with the field's default and help (pneumocam.config), so
a default is written once. Settings come, last one winning, from the dataclass, the YAML file given with
--config, then the flags on the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

from pneumocam.config import SUBGROUP_ATTRIBUTES
from pneumocam.errors import PneumocamError


def _attributes(text: str) -> tuple[str, ...] | None:
    """--by: "auto" (every attribute the manifest knows) -> None, "none" -> (), else a comma-separated list."""
    if text == "auto":
        return None
    if text == "none":
        return ()
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if unknown := [n for n in names if n not in SUBGROUP_ATTRIBUTES]:
        raise argparse.ArgumentTypeError(f"unknown attribute(s) {unknown}; choose from "
                                         f"{', '.join(SUBGROUP_ATTRIBUTES)}")
    return names


def _comma(text: str) -> tuple[str, ...]:
    """DICOM codes such as --modalities cr,dx -> ("CR", "DX")."""
    return tuple(item.strip().upper() for item in text.split(",") if item.strip())


def _names(text: str) -> tuple[str, ...]:
    """A comma-separated list of names as written: --balance-by view,sex -> ("view", "sex")."""
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _port(text: str) -> int:
    """A TCP port: 1-65535 (the operating system would otherwise silently take the number modulo 65536)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is out of range (1-65535)")
    return port


PARSERS = {"attributes": _attributes, "comma": _comma, "names": _names, "port": _port}


def _base_type(annotation: Any) -> type:
    """int | None -> int; tuple[str, ...] -> tuple; bool -> bool."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    return typing.get_origin(annotation) or annotation


def flag_of(field: dataclasses.Field) -> str:
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def _shown(field: dataclasses.Field) -> str:
    if field.metadata.get("shown"):
        return field.metadata["shown"]
    if isinstance(field.default, bool):
        return "on" if field.default else "off"
    if isinstance(field.default, tuple):
        return " ".join(field.default) if field.metadata.get("parse") == "list" else ",".join(field.default)
    return str(field.default)


def add_config_arguments(parser: argparse.ArgumentParser, config_class: type) -> None:
    """One flag per field of `config_class`, in a group of its own, and --config FILE."""
    hints = typing.get_type_hints(config_class)
    group = parser.add_argument_group("settings (also from --config FILE)")
    group.add_argument("--config", metavar="FILE", default=None,
                       help="YAML file of settings, e.g. the config.yaml a run wrote (flags given here win)")
    for field in dataclasses.fields(config_class):
        meta, base = field.metadata, _base_type(hints[field.name])
        kwargs: dict[str, Any] = {"dest": field.name, "default": field.default}
        if base is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif meta.get("parse") == "list":
            kwargs.update(nargs="+", choices=meta.get("choices"))
        elif meta.get("parse"):
            kwargs.update(type=PARSERS[meta["parse"]], metavar=field.name.upper())
        else:
            kwargs.update(type=base, choices=meta.get("choices"))
        if meta.get("metavar"):
            kwargs["metavar"] = meta["metavar"]
        action = group.add_argument(flag_of(field), **kwargs)
        # set after the fact: Python < 3.14 appends its own "(default: ...)" to a BooleanOptionalAction's help
        action.help = f"{meta.get('help', '')} (default: {_shown(field)})".replace("%", "%%")
    parser.set_defaults(config_class=config_class)


def config_from_args(args: argparse.Namespace) -> Any:
    """The config dataclass instance the parsed flags describe."""
    cls = args.config_class
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def _coerce(field: dataclasses.Field, base: type, value: Any, source: str) -> Any:
    """A YAML value -> the field's type, checked like the flag would check it."""
    where, choices, parse = f"{source}: {field.name}", field.metadata.get("choices"), field.metadata.get("parse")
    if value is None or base is bool:
        if value is not None and not isinstance(value, bool):
            raise PneumocamError(f"{where}: expected true or false, got {value!r}")
        return value
    if base is tuple:
        if isinstance(value, str) and parse in PARSERS:
            try:
                return PARSERS[parse](value)
            except argparse.ArgumentTypeError as exc:
                raise PneumocamError(f"{where}: {exc}") from exc
        if not isinstance(value, list):
            raise PneumocamError(f"{where}: expected a list, got {value!r}")
        value = tuple(str(v) for v in value)
    elif parse in PARSERS:
        try:
            value = PARSERS[parse](str(value))
        except argparse.ArgumentTypeError as exc:
            raise PneumocamError(f"{where}: {exc}") from exc
    else:
        try:
            value = base(value)
        except (TypeError, ValueError) as exc:
            raise PneumocamError(f"{where}: expected {base.__name__}, got {value!r}") from exc
    if bad := [v for v in (value if base is tuple else (value,)) if choices and v not in choices]:
        raise PneumocamError(f"{where}: {bad[0]!r} is not one of {', '.join(choices)}")
    return value


def read_config_file(path: str | Path, config_class: type) -> dict[str, Any]:
    """The settings in a YAML file, checked against `config_class`: {field name: value}."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise PneumocamError(f"{path}: cannot read the settings file ({exc})") from exc
    if not isinstance(data, dict):
        raise PneumocamError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    if unknown := sorted(set(data) - set(fields)):
        raise PneumocamError(f"{path}: unknown setting(s) {', '.join(unknown)}; this command takes "
                             f"{', '.join(fields)}")
    hints = typing.get_type_hints(config_class)
    return {k: _coerce(fields[k], _base_type(hints[k]), v, str(path)) for k, v in data.items()}
