"""``TokenizerSpec``: what the data path needs of a tokenizer, as plain data, kept on disk.

Preprocessing asks little of a HF tokenizer once LLaMA-Factory's fixes for a template are made:
its special tokens and their ids, its length, its chat template, the ids of the template's slot
tokens, a fingerprint of its vocabulary, and the ``tokenizer.json`` that encodes text. Importing
transformers to load one is most of a small ``fastsft preprocess`` run, so the spec is made once
from the real tokenizer and saved under a key that names everything it depends on (the folder's
content, the template and its options, the library versions); a later run reads it back and
encodes from the saved ``tokenizer.json`` without importing transformers::

    cache_dir()/tokenizer_specs/KEY.json      the spec (digest-checked, ``cache.write_checked``)
    cache_dir()/tokenizer_json/DIGEST.json    its fixed tokenizer's ``backend_tokenizer.to_str()``

``backend_digest`` is ``None`` for a tokenizer whose ``encode`` is not its Rust tokenizer's (a
slow tokenizer, a class overriding encoding): such a spec is never saved, and the run encodes
with the real tokenizer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from fastsft.tokenizer.cache import cache_dir, folder_digest, read_checked, write_atomic, write_checked

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["TokenizerSpec", "json_derived", "load_saved_spec", "save_spec", "spec_key"]

# Version of the saved spec's layout and meaning; part of every key.
FORMAT = 4

_SPECS = "tokenizer_specs"
_JSON = "tokenizer_json"

# Methods through which transformers' fast tokenizers encode; a class overriding any of them does
# not encode as its Rust backend does.
_ENCODE_METHODS = ("__call__", "encode", "encode_plus", "_encode_plus", "_batch_encode_plus", "tokenize")


@dataclass(frozen=True)
class TokenizerSpec:
    """A fixed tokenizer as the data path sees it. ``backend_json`` (not compared, not pickled) is
    its ``tokenizer.json`` text, read when an encoder is built."""

    name_or_path: str
    length: int
    bos_token: str | None
    eos_token: str | None
    pad_token: str | None
    bos_token_id: int | None
    eos_token_id: int | None
    pad_token_id: int | None
    chat_template: str | None
    split_special_tokens: bool
    token_ids: Mapping[str, int | None]  # the template's slot tokens
    special_tokens: Mapping[str, str]  # the named special tokens that are set (a chat template reads them)
    fingerprints: Mapping[int, str]  # of the vocabulary before the fixes, by format
    backend_digest: str | None  # SHA-256 of backend_json; None: encodes in Python
    backend_json: str | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return self.length

    @classmethod
    def from_tokenizer(
        cls,
        tokenizer: PreTrainedTokenizerBase,
        *,
        slot_tokens: Iterable[str],
        fingerprints: Mapping[int, str],
    ) -> TokenizerSpec:
        """The spec of a HF tokenizer already fixed for its template."""
        backend = tokenizer.backend_tokenizer.to_str() if encodes_through_rust(tokenizer) else None
        return cls(
            name_or_path=str(getattr(tokenizer, "name_or_path", "")),
            length=len(tokenizer),
            bos_token=tokenizer.bos_token,
            eos_token=tokenizer.eos_token,
            pad_token=tokenizer.pad_token,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            chat_template=tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None,
            split_special_tokens=bool(getattr(tokenizer, "split_special_tokens", False)),
            token_ids={
                token: cast("int | None", tokenizer.convert_tokens_to_ids(token)) for token in slot_tokens
            },
            special_tokens={k: v for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)},
            fingerprints=dict(fingerprints),
            backend_digest=None if backend is None else _text_digest(backend),
            backend_json=backend,
        )

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "backend_json": None}  # workers get their encoder, not the JSON


def encodes_through_rust(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether ``tokenizer.encode`` is exactly its Rust backend's (no Python-side override)."""
    from transformers import PreTrainedTokenizerFast

    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        return False
    cls = type(tokenizer)
    return all(getattr(cls, n, None) is getattr(PreTrainedTokenizerFast, n, None) for n in _ENCODE_METHODS)


def spec_key(folder: Path, *options: Any) -> str:
    """The key a spec is saved under: the tokenizer folder (its path and the content of every file,
    ``cache.folder_digest``), the ``options`` that decide the template and its fixes, and the
    versions of what made it (fastsft's own: another release may fix a tokenizer otherwise)."""
    from importlib.metadata import version

    import fastsft

    versions = [fastsft.__version__, version("transformers"), version("tokenizers"), FORMAT]
    key = [str(folder.resolve()), folder_digest(folder), options, versions]
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


def load_saved_spec(key: str) -> TokenizerSpec | None:
    """The spec saved under ``key`` with its ``tokenizer.json``, or ``None`` when there is none
    whole (missing, damaged, of another shape: it is then made and saved again)."""
    saved = read_checked(cache_dir() / _SPECS / f"{key}.json")
    try:
        saved["fingerprints"] = {int(k): v for k, v in saved["fingerprints"].items()}
        spec = TokenizerSpec(**saved)
    except (TypeError, KeyError, AttributeError, ValueError):
        return None
    if not _well_formed(spec):
        return None
    text = tokenizer_json(spec.backend_digest) if spec.backend_digest else None
    if text is None:
        return None
    object.__setattr__(spec, "backend_json", text)
    return spec


def save_spec(key: str, spec: TokenizerSpec) -> None:
    """Keep ``spec`` under ``key`` (a spec that encodes in Python is not kept)."""
    if spec.backend_json is None or spec.backend_digest is None:
        return
    path = cache_dir() / _JSON / f"{spec.backend_digest}.json"
    if tokenizer_json(spec.backend_digest) is None:
        write_atomic(path, spec.backend_json.encode("utf-8"))
    record = {k: v for k, v in dataclasses.asdict(spec).items() if k != "backend_json"}
    write_checked(cache_dir() / _SPECS / f"{key}.json", record)


def tokenizer_json(digest: str) -> str | None:
    """The saved ``tokenizer.json`` text with this digest; ``None`` when missing or not matching it."""
    try:
        data = (cache_dir() / _JSON / f"{digest}.json").read_bytes()
        return data.decode("utf-8") if hashlib.sha256(data).hexdigest() == digest else None
    except (OSError, ValueError):
        return None


def json_derived(digest: str, name: str) -> Path:
    """Where a file derived from the saved ``tokenizer.json`` of ``digest`` is kept (encoder tables)."""
    return cache_dir() / _JSON / f"{digest}.{name}"


def _well_formed(spec: TokenizerSpec) -> bool:
    """Whether a read-back spec has the types ``from_tokenizer`` gives (a damaged one is made again)."""
    if not isinstance(spec.token_ids, dict) or not all(isinstance(token, str) for token in spec.token_ids):
        return False
    if not isinstance(spec.special_tokens, dict) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in spec.special_tokens.items()
    ):
        return False
    ids = (spec.bos_token_id, spec.eos_token_id, spec.pad_token_id, *spec.token_ids.values())
    texts = (spec.bos_token, spec.eos_token, spec.pad_token, spec.chat_template)
    return (
        type(spec.length) is int
        and isinstance(spec.name_or_path, str)
        and isinstance(spec.backend_digest, str)
        and type(spec.split_special_tokens) is bool
        and all(i is None or type(i) is int for i in ids)
        and all(t is None or isinstance(t, str) for t in texts)
        and all(isinstance(v, str) for v in spec.fingerprints.values())
    )


def _text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
