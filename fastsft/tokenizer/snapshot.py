"""A recorded stand-in for a HF fast tokenizer, so that ``fastsft preprocess`` need not import transformers.

Importing transformers and a tokenizer class is most of ``fastsft preprocess``'s start-up (1.3 s
of 2.7 s for 20 conversations on the 2-core VM), while what preprocessing asks of the tokenizer is
small: its special tokens and their ids, its length, token lookups, the Rust
``tokenizers.Tokenizer`` that encodes, and the few changes LLaMA-Factory's ``fix_special_tokens``
makes (``add_special_tokens``, setting ``pad_token`` or ``chat_template``).

So ``TokenizerSnapshot`` records and replays::

    first load of a folder (live)            later loads (replay)
    real tokenizer, every call delegated      no transformers import
    state 0 ── add_special_tokens(...) ──▶    state 0 (recorded attributes, Rust JSON)
    state 1 ── pad_token = ... ─────────▶     recorded change: result, state 1
    state 2                                   ... state 2, encoding with its Rust tokenizer

A state is the attributes in ``RECORDED``, ``len(tokenizer)`` and the Rust tokenizer's JSON
(``backend_tokenizer.to_str()``); a change is the call, its arguments, its result and the state
it leads to. Replay answers reads from the state, follows recorded changes, and encodes with the
Rust tokenizer rebuilt from the state's JSON. Anything the record cannot answer (another method,
a change not seen before, ``encode`` with other arguments, a missing file) loads the real
tokenizer, repeats on it the changes made so far, and from then on delegates to it, recording as
before. So every answer is one the real tokenizer gave, in the same state, reached by the same
calls from the same files.

Values a state decides are recorded with it (``recorded``: fingerprints, the backend verdicts of
``fastsft.tokenizer.backends``; ``convert_tokens_to_ids`` answers; ``recorded_backend_file``: the
byte-level BPE encoder's tables), so that a warm run need not rebuild the Rust tokenizer for them. Otherwise replay computes ``encode(text,
add_special_tokens=False)``, ``convert_tokens_to_ids``, ``get_vocab`` and ``len`` from the Rust
tokenizer as the transformers base class does, so
snapshots are recorded only for classes that leave those to it (``_replayable``). Records are
keyed like ``fastsft.tokenizer.loader``'s class record (the content of every file in the folder,
the transformers version) plus the tokenizers version and ``FORMAT``; they live in
``$FASTSFT_CACHE_DIR/tokenizer_snapshots`` and are written atomically. Every file of a record is
checked against its digest when read (``record.json`` with its states, changes and derived values
as a whole, each Rust JSON and table file on its own), and ``record.json`` must have the shape
``save`` writes: a record that fails either is ignored and written again. A cache folder that
cannot be read or written is skipped with one warning (``fastsft.tokenizer.cache``).
"""

from __future__ import annotations

import builtins
import hashlib
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastsft.tokenizer.cache import read_checked, skip_unusable, write_atomic, write_checked

__all__ = ["FOLDER", "FORMAT", "RECORDED", "TokenizerSnapshot", "encodes_through_rust", "load_snapshot"]

logger = logging.getLogger(__name__)

# Version of the record's layout and of what replay computes; part of the key.
FORMAT = 2

# The attributes a state records, read by the pipeline (templates, encoder, provenance).
RECORDED = (
    "bos_token",
    "eos_token",
    "pad_token",
    "unk_token",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "unk_token_id",
    "chat_template",
    "split_special_tokens",
)

# Setting a public attribute is a change, recorded under this name.
_SET = "__setattr__"

# Methods of transformers' fast-tokenizer base class that replay computes from the Rust tokenizer;
# a class overriding any of them is not recorded.
# Methods through which transformers' fast tokenizers encode; a class overriding any of them does
# not encode as its Rust backend does.
_ENCODE_METHODS = ("__call__", "encode", "encode_plus", "_encode_plus", "_batch_encode_plus", "tokenize")

_REPLAYED_METHODS = ("convert_tokens_to_ids", "_convert_token_to_id_with_added_voc", "get_vocab", "__len__")

# The derived value of a state that holds its ``convert_tokens_to_ids`` answers, token -> id: at most
# _MAX_TOKEN_IDS of them (the special tokens a template looks up), so the record stays small.
_TOKEN_IDS = "convert_tokens_to_ids"
_MAX_TOKEN_IDS = 1024

FOLDER = "tokenizer_snapshots"  # under fastsft.tokenizer.loader.cache_dir()
_RECORD = "record.json"
_MAX_FOLDERS = 16

# TokenizerSnapshot's own attributes (never delegated, never recorded).
_OWN = frozenset({"_path", "_record", "_real", "_state", "_made", "_rust", "_load_real"})


class _Record:
    """The record of one tokenizer folder: its states, the changes between them, their Rust JSON files."""

    def __init__(self, folder: Path, key: str) -> None:
        self.folder, self.key = folder, key
        self.initial: str | None = None
        self.states: dict[str, dict[str, Any]] = {}
        self.changes: dict[str, list[Any]] = {}
        # State id (or "backend DIGEST", for values its Rust JSON alone decides) -> values computed from it.
        self.derived: dict[str, dict[str, Any]] = {}
        self._backend_texts: dict[str, str] = {}  # digest -> its JSON, read and checked once

    @classmethod
    def open(cls, root: Path, key: str) -> _Record:
        """The record for ``key`` under ``root``, empty when there is none or it is not one that
        ``save`` wrote for this key (missing, unreadable, damaged, of another shape)."""
        record = cls(root / hashlib.sha256(key.encode("utf-8")).hexdigest()[:16], key)
        saved = read_checked(record.folder / _RECORD)
        if _well_formed(saved) and saved["key"] == key:
            record.initial, record.states = saved["initial"], saved["states"]
            record.changes, record.derived = saved["changes"], saved["derived"]
        return record

    def add_state(self, real: Any) -> str | None:
        """Record ``real``'s state (writing its Rust JSON if new); its id, or ``None`` if it cannot be recorded."""
        attributes = {name: getattr(real, name) for name in RECORDED if hasattr(real, name)}
        backend = real.backend_tokenizer.to_str()
        digest = hashlib.sha256(backend.encode("utf-8")).hexdigest()[:32]
        state = {"attributes": attributes, "length": len(real), "backend": digest}
        try:
            state_id = _state_id(state)
        except TypeError:  # an attribute that is not plain data: nothing to replay it with
            return None
        if state_id not in self.states:
            self.states[state_id] = state
            path = self.folder / f"{digest}.json"
            if self.backend_json_text(digest) is None:
                write_atomic(path, backend.encode("utf-8"))
        return state_id

    def add_change(self, key: str, outcome: list[Any]) -> None:
        """Record a change: ``[result, state it leads to, [exception name, message] or None]``."""
        self.changes[key] = outcome
        self.save()

    def backend_json(self, state: str) -> str | None:
        """The Rust JSON of ``state``, or ``None`` when its file is missing or does not match its digest."""
        return self.backend_json_text(self.states[state]["backend"])

    def backend_json_text(self, digest: str) -> str | None:
        """The Rust JSON file named ``digest``, when it matches that digest. Read once per record
        (``fastsft preprocess`` asks for it twice: the early backend, the encoder)."""
        if digest not in self._backend_texts:
            try:
                text = (self.folder / f"{digest}.json").read_text(encoding="utf-8")
            except FileNotFoundError:
                return None
            except (OSError, ValueError) as err:
                if isinstance(err, OSError):
                    skip_unusable(self.folder, err)
                return None
            if hashlib.sha256(text.encode("utf-8")).hexdigest()[:32] != digest:
                return None
            self._backend_texts[digest] = text
        return self._backend_texts[digest]

    def backend_file(self, digest: str, name: str, compute: Callable[[], bytes]) -> bytes:
        """The bytes kept as ``name`` beside the Rust JSON of ``digest``: read when the file is there
        and matches its checksum, else ``compute()``, written, and returned."""
        path = self.folder / f"{digest}.{name}"
        try:
            data = path.read_bytes()
            if hashlib.sha256(data[32:]).digest() == data[:32]:
                return data[32:]
        except FileNotFoundError:
            pass
        except OSError as err:
            skip_unusable(path, err)
        payload = compute()
        write_atomic(path, hashlib.sha256(payload).digest() + payload)
        return payload

    def save(self) -> None:
        if self.initial is None:
            return
        try:
            fresh = not self.folder.is_dir()
        except OSError:  # a folder that cannot be searched: writing below reports it
            fresh = False
        record = {
            "key": self.key,
            "initial": self.initial,
            "states": self.states,
            "changes": self.changes,
            "derived": self.derived,
        }
        write_checked(self.folder / _RECORD, record)
        if fresh:
            _prune(self.folder.parent)


def _well_formed(saved: Any) -> bool:
    """Whether ``saved`` has the shape ``_Record.save`` writes, with every state under its own id."""
    try:
        states, changes, derived = saved["states"], saved["changes"], saved["derived"]
        return (
            isinstance(saved["key"], str)
            and isinstance(states, dict)
            and saved["initial"] in states
            and all(
                isinstance(state, dict)
                and isinstance(state["attributes"], dict)
                and type(state["length"]) is int
                and isinstance(state["backend"], str)
                and _state_id(state) == state_id
                for state_id, state in states.items()
            )
            and isinstance(changes, dict)
            and all(
                isinstance(outcome, list)
                and len(outcome) == 3
                and outcome[1] in states
                and (outcome[2] is None or (isinstance(outcome[2], list) and len(outcome[2]) == 2))
                for outcome in changes.values()
            )
            and isinstance(derived, dict)
            and all(isinstance(values, dict) for values in derived.values())
        )
    except (KeyError, TypeError):
        return False


def _state_id(state: dict[str, Any]) -> str:
    """A state's id: the digest of its JSON, so that a record whose states were altered is not read."""
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def _prune(root: Path) -> None:
    """Keep the ``_MAX_FOLDERS`` most recently written records."""
    try:
        folders = sorted(
            root.iterdir(), key=lambda p: (p / _RECORD).stat().st_mtime if (p / _RECORD).exists() else 0
        )
    except OSError:
        return
    for folder in folders[:-_MAX_FOLDERS]:
        shutil.rmtree(folder, ignore_errors=True)


def _change_key(state: str | None, name: str, args: tuple, kwargs: dict[str, Any]) -> str | None:
    """The change as JSON text, or ``None`` when its arguments are not plain data (it is then not recorded)."""
    if state is None:
        return None
    try:
        return json.dumps([state, name, list(args), kwargs], sort_keys=True)
    except TypeError:
        return None


def _apply(tokenizer: Any, name: str, args: tuple, kwargs: dict[str, Any]) -> Any:
    if name == _SET:
        setattr(tokenizer, *args)
        return None
    return getattr(tokenizer, name)(*args, **kwargs)


def _repeat(tokenizer: Any, made: list[tuple[str, tuple, dict[str, Any], bool]]) -> None:
    """Make on ``tokenizer`` the changes a replay followed; those recorded as raising may raise."""
    for name, args, kwargs, raised in made:
        try:
            _apply(tokenizer, name, args, kwargs)
        except Exception:
            if not raised:
                raise


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except TypeError:
        return False
    return True


class TokenizerSnapshot:
    """Behaves as the HF tokenizer loaded from ``path``: replayed from a record, or the real one, recorded.

    Build it with ``load_snapshot``. ``isinstance`` checks against transformers' classes do not
    hold for it; ``fastsft.tokenizer.backends`` knows it.
    """

    def __init__(
        self,
        path: str,
        record: _Record,
        real: Any | None,
        state: str | None,
        load_real: Callable[[str], Any],
    ) -> None:
        own = object.__setattr__
        own(self, "_path", path)
        own(self, "_load_real", load_real)  # loads the real tokenizer from path when replay cannot answer
        own(self, "_record", record)
        own(self, "_real", real)
        own(self, "_state", state)
        own(self, "_made", [])  # changes made while replaying, to repeat on the real tokenizer
        own(self, "_rust", None)

    @property
    def replaying(self) -> bool:
        """Whether it still answers from the record (no real tokenizer loaded)."""
        return self._real is None

    # ---------------------------------------------------------------------------------------------
    # Reads

    def __getattr__(self, name: str) -> Any:  # names not found on the class
        if name in _OWN or (name.startswith("__") and name.endswith("__")):
            raise AttributeError(name)
        if self._real is None:
            attributes = self._record.states[self._state]["attributes"]
            if name in attributes:
                return attributes[name]
            if name == "name_or_path":
                return self._path
            if name == "backend_tokenizer":
                rust = self._replayed_backend()
                if rust is not None:
                    return rust
        return getattr(self._live(), name)

    def __len__(self) -> int:
        if self._real is None:
            return self._record.states[self._state]["length"]
        return len(self._real)

    def encode(self, text: Any, *args: Any, **kwargs: Any) -> Any:
        """``encode(text, add_special_tokens=False)`` from the Rust tokenizer; anything else from the real one."""
        if (
            self._real is None
            and not args
            and kwargs == {"add_special_tokens": False}
            and isinstance(text, str)
        ):
            rust = self._replayed_backend()
            if rust is not None:
                # What the base class sets on its Rust tokenizer before encoding.
                if rust.truncation is not None:
                    rust.no_truncation()
                if rust.padding is not None:
                    rust.no_padding()
                rust.encode_special_tokens = bool(self.split_special_tokens)
                return rust.encode(text, add_special_tokens=False).ids
        return self._live().encode(text, *args, **kwargs)

    def convert_tokens_to_ids(self, tokens: str | list[str]) -> int | list[int] | None:
        """The real tokenizer's answer; each token's id is recorded with the state, so that replay
        answers lookups seen before without rebuilding the Rust tokenizer."""
        names = [tokens] if isinstance(tokens, str) else tokens
        if self._state is None or not isinstance(names, list) or not all(isinstance(t, str) for t in names):
            return self._looked_up(tokens)
        known = self._record.derived.setdefault(self._state, {}).setdefault(_TOKEN_IDS, {})
        missing = [name for name in dict.fromkeys(names) if name not in known]
        if len(known) + len(missing) > _MAX_TOKEN_IDS:
            return self._looked_up(tokens)
        if missing:
            known.update(zip(missing, self._looked_up(missing)))
            self._record.save()
        return known[tokens] if isinstance(tokens, str) else [known[name] for name in names]

    def _looked_up(self, tokens: Any) -> Any:
        """``convert_tokens_to_ids`` from the Rust tokenizer as the base class computes it, or the real one."""
        if self._real is None:
            rust = self._replayed_backend()
            if rust is not None:
                unk = self.unk_token_id
                if isinstance(tokens, str):
                    index = rust.token_to_id(tokens)
                    return unk if index is None else index
                return [unk if (index := rust.token_to_id(token)) is None else index for token in tokens]
        return self._live().convert_tokens_to_ids(tokens)

    def get_vocab(self) -> dict[str, int]:
        if self._real is None:
            rust = self._replayed_backend()
            if rust is not None:
                return rust.get_vocab(with_added_tokens=True)
        return self._live().get_vocab()

    def recorded_backend_json(self) -> str | None:
        """While replaying, the current state's ``backend_tokenizer.to_str()`` text, read from the record
        without building the Rust tokenizer; ``None`` when live or when its file is missing or damaged."""
        if self._real is not None or self._state is None:
            return None
        return self._record.backend_json(self._state)

    def recorded(self, name: str, compute: Callable[[], Any]) -> Any:
        """``compute()``, a value the tokenizer's state decides (a fingerprint), recorded with that state
        so that replay does not compute it again. It must be plain data."""
        return self._recorded_under(self._state, name, compute)

    def recorded_for_backend(self, name: str, compute: Callable[[], Any]) -> Any:
        """``recorded``, for a value the Rust tokenizer's JSON alone decides (a fastokens verdict): one
        record for every state with that JSON, so that a state reached by a change leaving the JSON
        as it was (``pad_token``, ``chat_template``) finds the value recorded from the first."""
        if self._state is None:
            return compute()
        return self._recorded_under(f"backend {self._record.states[self._state]['backend']}", name, compute)

    def backend_digest(self) -> str | None:
        """The digest naming the current state's Rust JSON, or ``None`` when the state is not recorded."""
        return None if self._state is None else self._record.states[self._state]["backend"]

    def recorded_backend_file(self, name: str, compute: Callable[[], bytes]) -> bytes:
        """``compute()``, bytes the Rust tokenizer's JSON alone decides (a compiled encoder's tables),
        kept in a file ``name`` beside that JSON so that replay reads them back instead."""
        if self._state is None:
            return compute()
        return self._record.backend_file(self._record.states[self._state]["backend"], name, compute)

    def _recorded_under(self, key: str | None, name: str, compute: Callable[[], Any]) -> Any:
        """``compute()``, recorded as ``name`` in the derived values under ``key`` (None: not recorded)."""
        if key is None:
            return compute()
        values = self._record.derived.setdefault(key, {})
        if name not in values:
            values[name] = compute()
            self._record.save()
        return values[name]

    # ---------------------------------------------------------------------------------------------
    # Changes

    def __setattr__(self, name: str, value: Any) -> None:
        self._change(_SET, (name, value), {})

    def add_special_tokens(self, *args: Any, **kwargs: Any) -> Any:
        return self._change("add_special_tokens", args, kwargs)

    def add_tokens(self, *args: Any, **kwargs: Any) -> Any:
        return self._change("add_tokens", args, kwargs)

    def _change(self, name: str, args: tuple, kwargs: dict[str, Any]) -> Any:
        """Follow a recorded change, or make it on the real tokenizer and record it.

        A change that raised a built-in exception (LLaMA-Factory's ``fix_special_tokens`` tries an
        argument that newer transformers refuse with ``TypeError``) is recorded raising it again."""
        key = _change_key(self._state, name, args, kwargs)
        if self._real is None:
            known = self._record.changes.get(key) if key is not None else None
            if known is not None and known[1] in self._record.states:
                result, state, raised = known
                if self._record.states[state]["backend"] != self._record.states[self._state]["backend"]:
                    object.__setattr__(self, "_rust", None)
                object.__setattr__(self, "_state", state)
                self._made.append((name, args, kwargs, raised is not None))
                if raised is not None:
                    raise getattr(builtins, raised[0])(raised[1])
                return result
            self._live()
        try:
            result = _apply(self._real, name, args, kwargs)
        except Exception as err:
            builtin = type(err).__module__ == "builtins"
            self._made_on_real(key, None, [type(err).__name__, str(err)] if builtin else None, record=builtin)
            raise
        self._made_on_real(key, result, None, record=_jsonable(result))
        return result

    def _made_on_real(self, key: str | None, result: Any, raised: list[str] | None, *, record: bool) -> None:
        """Record the state the real tokenizer is in after a change, and the change when ``record``."""
        state = self._record.add_state(self._real) if self._state is not None else None
        object.__setattr__(self, "_state", state)
        if record and key is not None and state is not None:
            self._record.add_change(key, [result, state, raised])

    # ---------------------------------------------------------------------------------------------
    # Loading the real tokenizer

    def _replayed_backend(self) -> Any:
        """The Rust tokenizer of the current state, or ``None`` when its JSON cannot be read."""
        if self._rust is None:
            text = self._record.backend_json(self._state)
            if text is None:
                return None
            from tokenizers import Tokenizer

            object.__setattr__(self, "_rust", Tokenizer.from_str(text))
        return self._rust

    def _live(self) -> Any:
        """The real tokenizer, loaded now if it is not yet, with the changes made so far repeated on it."""
        if self._real is None:
            real = self._load_real(self._path)
            _repeat(real, self._made)
            state = self._record.add_state(real) if _replayable(real) else None
            if state != self._state:
                logger.warning(
                    "the tokenizer snapshot of %s does not match the tokenizer; it is recorded again",
                    self._path,
                )
                shutil.rmtree(self._record.folder, ignore_errors=True)
                state = None  # no more recording from a state the record got wrong
            object.__setattr__(self, "_real", real)
            object.__setattr__(self, "_state", state)
            object.__setattr__(self, "_rust", None)
            self._made.clear()
        return self._real

    def __reduce__(self) -> tuple[Any, ...]:
        if self._real is not None:
            return (_same, (self._real,))
        return (
            _replayed,
            (self._path, self._record.folder, self._record.key, self._state, self._made, self._load_real),
        )

    def __repr__(self) -> str:
        mode = "replayed" if self._real is None else "live"
        return f"TokenizerSnapshot({self._path!r}, {mode})"


def _same(tokenizer: Any) -> Any:
    return tokenizer


def _replayed(
    path: str, folder: Path, key: str, state: str, made: list, load_real: Callable[[str], Any]
) -> Any:
    """The snapshot in another process (a worker): replaying from the record on disk, or, when the
    record no longer holds its state, the real tokenizer with the same changes made."""
    record = _Record.open(folder.parent, key)
    if state in record.states:
        snapshot = TokenizerSnapshot(path, record, None, state, load_real)
        snapshot._made.extend(made)
        return snapshot
    real = load_real(path)
    _repeat(real, made)
    return real


def encodes_through_rust(tokenizer: Any) -> bool:
    """Whether ``tokenizer.encode`` is exactly ``encode_batch`` of its Rust backend (no Python-side override).

    True for a ``TokenizerSnapshot``: snapshots are recorded only of such tokenizers.
    """
    if isinstance(tokenizer, TokenizerSnapshot):
        return True
    from transformers import PreTrainedTokenizerFast

    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        return False
    cls = type(tokenizer)
    return all(
        getattr(cls, name, None) is getattr(PreTrainedTokenizerFast, name, None) for name in _ENCODE_METHODS
    )


def _replayable(real: Any) -> bool:
    """Whether replay reproduces ``real``: its class leaves encoding, lookups and length to its Rust backend."""
    from transformers import PreTrainedTokenizerFast

    cls = type(real)
    return encodes_through_rust(real) and all(
        getattr(cls, name, None) is getattr(PreTrainedTokenizerFast, name, None) for name in _REPLAYED_METHODS
    )


def load_snapshot(path: str, key: str, load_real: Callable[[str], Any], root: Path) -> Any:
    """A replaying ``TokenizerSnapshot`` when ``root`` holds a record for ``key``, else the real tokenizer
    from ``load_real(path)``: wrapped in a recording snapshot when replay can reproduce it, as it is when not."""
    record = _Record.open(root, key)
    if record.initial is not None:
        return TokenizerSnapshot(path, record, None, record.initial, load_real)
    real = load_real(path)
    if not _replayable(real):
        return real
    record.initial = record.add_state(real)
    if record.initial is None:
        return real
    record.save()
    return TokenizerSnapshot(path, record, real, record.initial, load_real)
