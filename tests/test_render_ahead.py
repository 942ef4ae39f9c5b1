"""Rendering ahead while the text encoder builds (fastokens, on its thread): batches, and errors,
come out in the order they would without it, and the text held ahead stays within its budget."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from fastsft.data.accounting import Summary
from fastsft.data.rows import workers
from fastsft.data.rows.encoder import RenderedBatch
from fastsft.errors import DataError
from fastsft.kernels.types import SegmentBatch

TEXT = "x" * 100  # the text each stub batch renders to


class StubEncoder:
    """What ``_encoded_here`` asks of an encoder; its backend becomes ready after ``ready_after`` encodes."""

    def __init__(self, ready_after: int, efficient_eos: bool = False) -> None:
        self.calls: list[str] = []
        self.encodes = 0
        self.ready_after = ready_after
        self.template = SimpleNamespace(efficient_eos=efficient_eos)
        self.text_encoder = self  # ``ready`` below

    @property
    def ready(self) -> bool:
        return self.encodes >= self.ready_after

    def render_batch(self, batch: Any, summary: Summary) -> RenderedBatch:
        name = batch[0]
        self.calls.append(f"render {name}")
        if name == "bad template":
            raise DataError("rejected by the template", dataset="d", index=0)
        segments = SegmentBatch()
        segments.add([[TEXT, name]])
        return RenderedBatch(segments, None)

    def encode_rendered(self, rendered: RenderedBatch, summary: Summary, tokens: Any = None) -> str:
        name = rendered.segments.texts[1]
        if tokens is None:  # not tokenized ahead: tokenized here
            self.tokenize(rendered.segments)
        else:
            assert tokens == f"tokens of {name}"
        self.calls.append(f"encode {name}")
        return name

    def tokenize(self, segments: SegmentBatch) -> str:
        name = segments.texts[1]
        if name == "bad text":
            raise DataError("text is not valid Unicode", dataset="d", index=0)
        self.encodes += 1
        return f"tokens of {name}"


def batches(names: list[str], fail_at: int | None = None) -> Iterator[Any]:
    for index, name in enumerate(names):
        if index == fail_at:
            raise DataError("invalid JSON", dataset="d", line=index)
        yield [name]


def encoded(encoder: StubEncoder, source: Iterator[Any]) -> list[str]:
    """Batches rendered in order, each encoded as it comes (the render-ahead half of ``_encoded_here``)."""
    summary = Summary()
    rendered = workers._rendered_in_order(encoder, source, summary)  # type: ignore[arg-type]
    return [encoder.encode_rendered(batch, summary) for batch in rendered]


def test_batches_are_rendered_ahead_while_the_backend_builds() -> None:
    encoder = StubEncoder(ready_after=1)
    names = [f"b{i}" for i in range(6)]
    assert encoded(encoder, batches(names)) == names
    assert encoder.calls[:7] == [*(f"render b{i}" for i in range(6)), "encode b0"]


def test_text_ahead_stays_within_its_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(workers, "RENDER_AHEAD_CHARS", 3 * (len(TEXT) + 2))
    encoder = StubEncoder(ready_after=10**9)  # never ready: the budget alone stops it
    names = [f"b{i}" for i in range(8)]
    assert encoded(encoder, batches(names)) == names
    first_encode = encoder.calls.index("encode b0")
    assert first_encode == 3  # three batches fill the budget
    assert max(call_ahead(encoder.calls)) <= 3


def call_ahead(calls: list[str]) -> list[int]:
    """How many batches were rendered and not yet encoded, after each call."""
    depth, depths = 0, []
    for call in calls:
        depth += 1 if call.startswith("render") else -1
        depths.append(depth)
    return depths


def test_no_rendering_ahead_once_ready_or_with_efficient_eos() -> None:
    for encoder in (StubEncoder(ready_after=0), StubEncoder(ready_after=9, efficient_eos=True)):
        assert encoded(encoder, batches(["a", "b"])) == ["a", "b"]
        assert encoder.calls == ["render a", "encode a", "render b", "encode b"]


@pytest.mark.parametrize("where", ["reading", "rendering"])
def test_an_error_met_ahead_is_raised_in_its_turn(where: str) -> None:
    encoder = StubEncoder(ready_after=1)
    names = ["b0", "b1", "bad template" if where == "rendering" else "b2", "b3"]
    out = []
    with pytest.raises(DataError, match="template" if where == "rendering" else "invalid JSON"):
        for item in workers._rendered_in_order(
            encoder,  # type: ignore[arg-type]
            batches(names, fail_at=2 if where == "reading" else None),
            Summary(),
        ):
            out.append(encoder.encode_rendered(item, Summary()))
    assert out == ["b0", "b1"]  # the batches before the error, then the error
    assert "render b3" not in encoder.calls  # nothing read after it


# --------------------------------------------------------------------------------------------------
# Tokenizing the next batch on a thread while this one is assembled (``_encoded_here``)


def overlapped(encoder: StubEncoder, source: Iterator[Any]) -> Iterator[str]:
    return workers._encoded_here(encoder, source, Summary())  # type: ignore[arg-type]


def test_the_next_batch_is_rendered_and_tokenized_before_this_one_is_assembled() -> None:
    encoder = StubEncoder(ready_after=0)
    names = [f"b{i}" for i in range(5)]
    assert list(overlapped(encoder, batches(names))) == names
    assert encoder.calls.index("render b1") < encoder.calls.index("encode b0")
    assert encoder.calls.index("render b2") > encoder.calls.index("encode b0")  # at most two in flight


@pytest.mark.parametrize("where", ["reading", "rendering", "tokenizing"])
def test_an_error_in_the_next_batch_comes_after_this_one(where: str) -> None:
    encoder = StubEncoder(ready_after=0)
    bad = {"rendering": "bad template", "tokenizing": "bad text"}.get(where, "b2")
    out = []
    with pytest.raises(DataError):
        for item in overlapped(
            encoder, batches(["b0", "b1", bad, "b3"], fail_at=2 if where == "reading" else None)
        ):
            out.append(item)
    assert out == ["b0", "b1"]
    assert "encode b3" not in encoder.calls
    if where != "tokenizing":  # a tokenizer error is met on the thread, once the batch after it is rendered
        assert "render b3" not in encoder.calls


def test_efficient_eos_does_not_overlap() -> None:
    encoder = StubEncoder(ready_after=0, efficient_eos=True)
    assert list(overlapped(encoder, batches(["a", "b"]))) == ["a", "b"]
    assert encoder.calls == ["render a", "encode a", "render b", "encode b"]
