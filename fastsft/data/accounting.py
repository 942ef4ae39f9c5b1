"""What a pipeline run counted (``Summary``), and what to do with a bad sample (``SamplePolicy``).

The counters are plain data: every stage adds to them, worker processes send theirs back, and
``Summary.merge`` adds every field, so a counter added later is merged without further code.
The policy (raise, or count and skip) is kept apart from them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from fastsft.errors import DataError

__all__ = ["SamplePolicy", "SampleRef", "Summary"]


@dataclass(frozen=True)
class SampleRef:
    """Where a sample came from: its dataset, its index there, and its position among all samples."""

    dataset: str
    index: int
    position: int

    def __str__(self) -> str:
        return f"dataset {self.dataset}, sample #{self.index}"


class FirstSeen(str):
    """What was said about the earliest sample of some kind; ``position`` orders samples across workers."""

    position: int

    def __new__(cls, message: str, position: int) -> FirstSeen:
        seen = super().__new__(cls, message)
        seen.position = position
        return seen

    def __reduce__(self) -> tuple:
        return (FirstSeen, (str(self), self.position))


def _earlier(a: str | None, b: str | None) -> str | None:
    """The one of two first examples that came first (a plain string counts as position 0)."""
    if a is None or b is None:
        return b if a is None else a
    return a if getattr(a, "position", 0) <= getattr(b, "position", 0) else b


RUN_FACT = {"run_fact": True}  # a field that describes the run and is not merged


@dataclass
class Summary:
    """What a pipeline run did; printed by ``fastsft preprocess`` and ``fastsft train``.

    Integer fields are counters and ``first_*`` fields the earliest example of a kind; ``merge``
    knows both, so adding a field here is all a new counter needs.
    """

    examples_in: int = 0
    examples_encoded: int = 0
    rows_out: int = 0
    dropped: int = 0
    first_dropped: str | None = None
    malformed_skipped: int = 0
    first_malformed: str | None = None
    too_long_dropped: int = 0
    no_trainable: int = 0  # the chat-template mode: samples with no trained token, skipped
    first_no_trainable: str | None = None
    truncated: int = 0
    tokens: int = 0
    label_tokens: int = 0
    padding_tokens: int = 0
    packing_capacity: int = field(default=0, metadata=RUN_FACT)  # tokens a packed row holds; 0: no packing
    seconds: float = field(default=0.0, metadata=RUN_FACT)
    encode_path: str = field(default="", metadata=RUN_FACT)
    tokenizer_backend: str = field(default="", metadata=RUN_FACT)
    best_fit_rows: int = field(default=0, metadata=RUN_FACT)  # LLaMA-Factory's packing: BFD's row count
    workers: str = field(default="", metadata=RUN_FACT)  # the worker-count line, when one was asked for

    def merge(self, part: Summary) -> None:
        """Add ``part``'s counters (a worker's, say); keep the earlier of each first example."""
        for name in _MERGED_FIELDS:
            mine, theirs = getattr(self, name), getattr(part, name)
            setattr(self, name, mine + theirs if isinstance(mine, int) else _earlier(mine, theirs))

    def lines(self) -> list[str]:
        """Human-readable summary lines."""
        rate = self.examples_in / self.seconds if self.seconds else float("inf")
        token_rate = self.tokens / self.seconds if self.seconds else float("inf")
        out = [
            f"examples in: {self.examples_in}  encoded: {self.examples_encoded}  rows out: {self.rows_out}",
            f"dropped: {self.dropped}" + (f" (first: {self.first_dropped})" if self.first_dropped else ""),
        ]
        if self.malformed_skipped and self.first_malformed:
            out.append(f"malformed, skipped: {self.malformed_skipped} (first: {self.first_malformed})")
        if self.no_trainable:
            out.append(
                f"no trained token (no assistant output, or all of it cut by cutoff_len), skipped: "
                f"{self.no_trainable} (first: {self.first_no_trainable})"
            )
        if self.too_long_dropped:
            out.append(f"longer than a packed row, dropped: {self.too_long_dropped}")
        out += [
            f"truncated to cutoff_len: {self.truncated}",
            f"tokens: {self.tokens}  label tokens: {self.label_tokens}  padding tokens: {self.padding_tokens}",
        ]
        if self.examples_encoded and not self.label_tokens:
            out.append(
                "warning: no label tokens: every response was truncated away or masked, "
                "so training on this data learns nothing (is cutoff_len too small?)"
            )
        if self.packing_capacity and self.rows_out:
            fill = self.tokens / (self.rows_out * self.packing_capacity)
            out.append(f"packed rows: {self.rows_out} of {self.packing_capacity} tokens, {fill:.1%} filled")
            if 0 < self.best_fit_rows < self.rows_out:
                out.append(self.best_fit_line())
        if self.workers:
            out.append(self.workers)
        out += [
            f"time: {self.seconds:.2f} s  {rate:,.0f} examples/s  {token_rate:,.0f} tokens/s"
            f"  (encode: {self.encode_path}, tokenizer: {self.tokenizer_backend})",
        ]
        return out

    def skip_no_trainable(self, ref: SampleRef) -> None:
        """Count a sample left with no trained token, which is not trained."""
        self.no_trainable += 1
        self.first_no_trainable = _earlier(self.first_no_trainable, FirstSeen(str(ref), ref.position))

    def best_fit_line(self) -> str:
        """What fastsft's whole-dataset best-fit packing would change, for LLaMA-Factory's packed rows."""
        fewer = 1 - self.best_fit_rows / self.rows_out
        fill = self.tokens / (self.best_fit_rows * self.packing_capacity)
        return (
            f"packed as LLaMA-Factory does (its losses); packing_strategy: bfd would pack the same samples "
            f"into {self.best_fit_rows} rows, {fewer:.1%} fewer steps, {fill:.1%} filled"
        )


@dataclass(frozen=True)
class SamplePolicy:
    """What happens to a sample LLaMA-Factory drops (``strict``) or a malformed one (``skip_malformed``)."""

    strict: bool = False
    skip_malformed: bool = False

    def dropped(self, reason: str, ref: SampleRef, summary: Summary) -> None:
        """Count a sample LLaMA-Factory would drop, or raise under ``strict``."""
        if self.strict:
            raise DataError(reason, dataset=ref.dataset, index=ref.index)
        summary.dropped += 1
        summary.first_dropped = _earlier(summary.first_dropped, FirstSeen(f"{ref}: {reason}", ref.position))

    def malformed(self, error: DataError, ref: SampleRef, summary: Summary) -> None:
        """Raise a malformed-sample error located at ``ref``, or count it under ``skip_malformed``."""
        located = error.located(dataset=ref.dataset, index=ref.index)
        if not self.skip_malformed:
            raise located
        summary.malformed_skipped += 1
        summary.first_malformed = _earlier(summary.first_malformed, FirstSeen(str(located), ref.position))


_MERGED_FIELDS = tuple(f.name for f in dataclasses.fields(Summary) if not f.metadata.get("run_fact"))
