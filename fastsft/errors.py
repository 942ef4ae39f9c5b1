"""User-facing errors. Each one prints as a single line that says what is wrong and where."""

from __future__ import annotations

import types
import typing
from typing import Any, Literal

__all__ = [
    "ConfigError",
    "DataError",
    "FastSFTError",
    "Terminated",
    "describe_type",
]


class FastSFTError(Exception):
    """Base class for errors the CLI reports as one line, without a traceback."""


class ConfigError(FastSFTError):
    """A bad option, config key, template name or path."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C (the CLI installs the handler) so every ``finally`` runs:
    temporary folders are removed and worker pools stopped."""

    exit_code = 143  # 128 + SIGTERM, what a shell reports for a process SIGTERM killed


class DataError(FastSFTError):
    """Bad input data, located by dataset, sample index (0-based) and field."""

    def __init__(
        self,
        reason: str,
        *,
        dataset: str | None = None,
        index: int | None = None,
        field: str | None = None,
        line: int | None = None,
    ) -> None:
        self.reason = reason
        self.dataset = dataset
        self.index = index
        self.field = field
        self.line = line
        super().__init__(self._format())

    def __reduce__(self) -> tuple:
        """Picklable across worker processes despite keyword-only arguments."""
        return (_rebuild_data_error, (self.reason, self.dataset, self.index, self.field, self.line))

    def located(self, *, dataset: str | None = None, index: int | None = None) -> DataError:
        """The same error with the dataset and sample index filled in by the caller that knows them."""
        return DataError(
            self.reason,
            dataset=self.dataset if self.dataset is not None else dataset,
            index=self.index if self.index is not None else index,
            field=self.field,
            line=self.line,
        )

    def _format(self) -> str:
        where = []
        if self.dataset is not None:
            where.append(f"dataset {self.dataset}")
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.index is not None:
            where.append(f"sample #{self.index}")
        if self.field is not None:
            where.append(f"field '{self.field}'")
        return f"{', '.join(where)}: {self.reason}" if where else self.reason


def _rebuild_data_error(
    reason: str, dataset: str | None, index: int | None, field: str | None, line: int | None
) -> DataError:
    return DataError(reason, dataset=dataset, index=index, field=field, line=line)


def describe_type(hint: Any) -> str:
    """An option's type annotation in words, for error messages: ``int | None`` is "an integer or null"."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe_type(option) for option in typing.get_args(hint))
    if origin is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(hint)))
    if origin is list:
        element = describe_type(typing.get_args(hint)[0])
        return f"a list of {element.removeprefix('a ').removeprefix('an ')}s"
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))
