"""The jinja chat-template sandbox: a tokenizer's (untrusted) chat template compiled and rendered
as transformers' ``apply_chat_template`` renders it, under guards transformers lacks.

The template runs in jinja2's ``ImmutableSandboxedEnvironment`` with transformers' filters and
globals; printing or iterating an undefined value raises (a misspelt field would otherwise render
as nothing), each render has a time limit, and ``*`` / ``**`` refuse results beyond ``MAX_SIZE``.
``render_with_spans`` also returns the character spans its ``{% generation %}`` blocks wrote, found
as transformers' ``AssistantTracker`` finds them. Any failure is one line naming the template and
the sample.
"""

from __future__ import annotations

import json
import re
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, ClassVar

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from fastsft.errors import FastSFTError

__all__ = ["GENERATION_MARKER", "JinjaChatTemplate", "TemplateError"]

GENERATION_MARKER = re.compile(r"\{%-?\s*generation\s*-?%\}")
MAX_SIZE = 1_000_000  # the longest string or list a template's `*` may build, the largest `**` result


class TemplateError(FastSFTError):
    """A jinja chat template that does not compile, raises, runs too long, reads an undefined
    field or reaches what the sandbox forbids; names the template and the sample."""


class RenderTimeout(Exception):
    """A render ran past its time limit."""


class _PrintStrictUndefined(jinja2.Undefined):
    """Undefined values may be tested (``if x``, ``x is defined``, ``x == y``) as templates do for
    optional fields, but printing, iterating or measuring one raises: a misspelt field fails
    instead of rendering as nothing."""

    __slots__ = ()
    __str__ = jinja2.Undefined._fail_with_undefined_error
    __iter__ = jinja2.Undefined._fail_with_undefined_error
    __len__ = jinja2.Undefined._fail_with_undefined_error


class _GenerationTag(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}`` (training templates' assistant markers) renders its body."""

    tags: ClassVar[set[str]] = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Any) -> str:
        text = caller()
        tracking = self.environment.tracking  # type: ignore[attr-defined]
        if tracking is not None:  # where the text goes: after every block the template yielded so far
            blocks, spans = tracking
            start = sum(map(len, blocks))
            spans.append((start, start + len(text)))
        return text


class _Namespace(jinja2.utils.Namespace):
    """jinja's ``namespace`` refusing underscore names, as transformers' is."""

    def __init__(*args: Any, **kwargs: Any) -> None:
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)


class _TemplateDict:
    """``dict`` for templates without the type itself, as transformers gives it."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict.fromkeys(*args, **kwargs)


def _check_name(name: Any) -> None:
    if isinstance(name, str) and name.startswith("_"):
        raise jinja2.exceptions.SecurityError(f"a namespace cannot hold the underscore name {name!r}")


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: Any = None,
    separators: Any = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


class _GuardedEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox with a deadline checked on every call and size limits on ``*`` and ``**``."""

    intercepted_binops = frozenset({"*", "**"})
    deadline = float("inf")
    tracking: tuple[list[str], list[tuple[int, int]]] | None = None  # render_with_spans' blocks and spans

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        if time.monotonic() > __self.deadline:
            raise RenderTimeout()
        return super().call(__context, __obj, *args, **kwargs)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if (
                    isinstance(seq, (str, list, tuple))
                    and isinstance(times, int)
                    and len(seq) * times > MAX_SIZE
                ):
                    raise jinja2.exceptions.SecurityError(f"`*` would build a value over {MAX_SIZE} items")
        numbers = isinstance(left, (int, float)) and isinstance(right, (int, float))
        if operator == "**" and numbers and abs(right) > 64 and abs(left) > 1:
            raise jinja2.exceptions.SecurityError(f"`**` with exponent {right} is refused")
        return super().call_binop(context, operator, left, right)


class JinjaChatTemplate:
    """A jinja chat template compiled in the guarded sandbox; ``render`` raises ``TemplateError``."""

    def __init__(self, source: str, name: str, *, timeout: float = 10.0) -> None:
        self.name = name
        self.source = source
        self.timeout = timeout
        self.env = _GuardedEnvironment(
            trim_blocks=True,
            lstrip_blocks=True,
            undefined=_PrintStrictUndefined,
            extensions=[_GenerationTag, jinja2.ext.loopcontrols],
        )
        self.env.filters["tojson"] = _tojson
        self.env.globals.update(
            raise_exception=_raise_exception,
            strftime_now=lambda fmt: datetime.now().strftime(fmt),
            dict=_TemplateDict(),
            namespace=_Namespace,
        )
        try:
            self.template = self.env.from_string(source)
        except jinja2.TemplateSyntaxError as err:
            raise TemplateError(f"chat template {name}, line {err.lineno}: {err.message}") from None

    def render(self, where: str, **variables: Any) -> str:
        """The template rendered with ``variables`` (messages, tools, ...); ``where`` names the sample in errors."""
        try:
            with self._time_limit():
                return self.template.render(**variables)
        except Exception as err:  # any failure inside the template's code is one line
            raise self._error(err, where) from None

    def render_with_spans(self, where: str, **variables: Any) -> tuple[str, list[tuple[int, int]]]:
        """``render``, with the ``(start, end)`` character spans of the text each ``{% generation %}``
        block wrote, in order, found as transformers' ``apply_chat_template`` finds them (the
        length of the blocks the template yielded before the block's end)."""
        blocks: list[str] = []
        spans: list[tuple[int, int]] = []
        self.env.tracking = (blocks, spans)
        try:
            with self._time_limit():
                for block in self.template.generate(**variables):
                    blocks.append(block)
        except Exception as err:  # any failure inside the template's code is one line
            raise self._error(err, where) from None
        finally:
            self.env.tracking = None
        return "".join(blocks), spans

    def _error(self, err: Exception, where: str) -> TemplateError:
        """One line: the template, its line where known, the sample (``where``, if given), the failure."""
        located = f"{where}: " if where else ""
        return TemplateError(
            f"chat template {self.name}{_template_line(err)}: {located}{_failure(err, self.timeout)}"
        )

    @property
    def has_generation_markers(self) -> bool:
        """Whether the source marks assistant output with ``{% generation %}`` (TRL's test)."""
        return GENERATION_MARKER.search(self.source) is not None

    @contextmanager
    def _time_limit(self) -> Iterator[None]:
        """``timeout`` seconds: a timer signal on the main thread (it also stops loops that call
        nothing), and the deadline the environment checks on every call."""
        self.env.deadline = time.monotonic() + self.timeout
        use_signal = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
        if not use_signal:
            try:
                yield
            finally:
                self.env.deadline = float("inf")
            return

        def expire(signum: int, frame: Any) -> None:
            raise RenderTimeout()

        previous = signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, self.timeout)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
            self.env.deadline = float("inf")


def _failure(err: Exception, timeout: float) -> str:
    """Why a render failed, in words."""
    if isinstance(err, RenderTimeout):
        return f"ran past its {timeout:g} s time limit (a loop that does not end?)"
    if isinstance(err, RecursionError):
        return "recursed too deeply"
    if isinstance(err, jinja2.exceptions.SecurityError):
        return f"refused by the sandbox: {err}"
    if isinstance(err, jinja2.exceptions.UndefinedError):
        return f"reads an undefined field: {err}"
    if isinstance(err, jinja2.exceptions.TemplateError):
        return f"raised: {err}"
    return f"failed: {type(err).__name__}: {err}"


def _template_line(err: Exception) -> str:
    """`, line N` of the innermost template frame in ``err``'s traceback, where it has one."""
    tb, line = err.__traceback__, None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return f", line {line}" if line is not None else ""
