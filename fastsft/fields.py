"""Typed options declared once as dataclass fields, read from YAML, ``key=value`` text and flags.

A field's annotation is its type, its default the default, and ``metadata["help"]`` its help
line. ``coerce`` is the one type checker: YAML values, ``key=value`` override text and Python
arguments all go through it. ``add_flags`` derives ``argparse`` flags from the same fields.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from fastsft.errors import ConfigError, describe_type

__all__ = [
    "OverrideText",
    "add_flags",
    "coerce",
    "option",
    "read_yaml",
    "show",
    "unknown_key_message",
]


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",
    flag: str | None = None,
    *,
    group: str | None = None,
    training_arg: bool = False,
    default_factory: Any = dataclasses.MISSING,
) -> Any:
    """A dataclass field with its help line and where it belongs, the one declaration of an option.

    ``flag`` names its command-line flag; ``group`` is the heading it is listed under in
    ``--help``; ``training_arg`` marks a field passed on, by the same name, to
    ``transformers.TrainingArguments``.
    """
    metadata: dict[str, Any] = {"help": help, "training_arg": training_arg}
    if flag is not None:
        metadata["flag"] = flag
    if group is not None:
        metadata["group"] = group
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


class OverrideText(str):
    """A value typed on the command line (``key=value``), parsed by the key's type."""


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping of keys to values, or a one-line ``ConfigError``."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read config {path}: {err.strerror}") from None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"config {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"config {path} must be a mapping of keys to values")
    return {str(k): v for k, v in values.items()}


def unknown_key_message(key: str, candidates: Iterable[str], see: str) -> str:
    """``unknown config key `x`; did you mean ...?`` with the closest valid names."""
    close = difflib.get_close_matches(key, list(candidates), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else f" (see `{see}`)"
    return f"unknown config key `{key}`{hint}"


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_NULL = {"null", "none", "~", ""}


def show(value: Any) -> str:
    """A value as the user wrote it in YAML."""
    return "true" if value is True else "false" if value is False else str(value)


def coerce(key: str, value: Any, hint: Any) -> Any:
    """``value`` converted to ``hint`` (bool, int, float, str, Literal, lists of them, unions).

    Text is parsed only when it was typed as ``key=value`` (``OverrideText``); a YAML or Python
    string stays a string, except for floats (YAML 1.1 reads ``1e-5`` as a string).
    """
    options = typing.get_args(hint) if is_union(hint) else (hint,)
    from_text = isinstance(value, OverrideText)
    if type(None) in options and (value is None or (from_text and value.strip().lower() in _NULL)):
        return None
    for choice in (o for o in options if o is not type(None)):
        converted = _convert(value, choice, from_text)
        if converted is not _NO:
            return converted
    raise ConfigError(f"config key `{key}` expects {describe_type(hint)}, got {show(value)!r}")


_NO = object()


def _convert(value: Any, choice: Any, from_text: bool) -> Any:
    """``value`` as ``choice``, or ``_NO`` when it is not one."""
    origin = typing.get_origin(choice)
    if origin is Literal:
        text = str(value).strip() if from_text else value
        return text if text in typing.get_args(choice) else _NO
    if origin is list:
        (item,) = typing.get_args(choice) or (str,)
        if isinstance(value, list):
            items = [_convert(v, item, False) for v in value]
        elif from_text:
            items = [_convert(OverrideText(v.strip()), item, True) for v in value.split(",")]
        else:
            return _NO
        return _NO if any(v is _NO for v in items) else items
    if choice is bool:
        if isinstance(value, bool):
            return value
        text = value.strip().lower() if from_text else None
        return True if text in _TRUE else False if text in _FALSE else _NO
    if choice is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        try:
            return int(value) if from_text else _NO
        except ValueError:
            return _NO
    if choice is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        try:  # YAML reads 1e-5 (no dot) as a string
            return float(value) if isinstance(value, str) else _NO
        except ValueError:
            return _NO
    if choice is str:
        return str(value) if isinstance(value, str) else _NO
    if choice is dict:
        return value if isinstance(value, dict) else _NO
    if isinstance(choice, type) and issubclass(choice, str):  # transformers' string enums
        return str(value) if isinstance(value, str) else _NO
    if choice is Any:
        return str(value) if from_text else value
    return _NO


def is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def add_flags(parser: argparse.ArgumentParser, cls: type, names: Iterable[str]) -> None:
    """One flag per field of dataclass ``cls`` named in ``names``: ``--cutoff-len`` for ``cutoff_len``.

    Booleans are switches; ``Literal`` types give choices; list types repeat. Every flag
    defaults to ``None``, so the caller can tell a flag given from one left out.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for name in names:
        field = fields[name]
        flag = field.metadata.get("flag", "--" + name.replace("_", "-"))
        help_text = field.metadata.get("help", "")
        if field.default is not dataclasses.MISSING and field.default not in (None, False):
            help_text += f" (default: {show(field.default)})"
        hint = hints[name]
        choices = [o for o in (typing.get_args(hint) if is_union(hint) else (hint,)) if o is not type(None)]
        kwargs: dict[str, Any] = {"dest": name, "default": None, "help": help_text}
        if bool in choices:
            kwargs["action"] = argparse.BooleanOptionalAction if field.default is True else "store_true"
        elif any(typing.get_origin(c) is list for c in choices):
            kwargs["action"] = "append"
        elif typing.get_origin(choices[0]) is Literal:
            kwargs["choices"] = list(typing.get_args(choices[0]))
        elif choices[0] in (int, float):
            kwargs["type"] = choices[0]
        parser.add_argument(flag, **kwargs)
