"""Tokenizer fingerprints in ``fastsft_output.json``: both versions, and what changes them."""

from __future__ import annotations

from typing import Any

from fastsft.data.store import provenance
from fastsft.data.store.provenance import FORMAT, fingerprint_version, tokenizer_fingerprint


def test_version_1_is_the_fingerprint_format_1_records_hold(fixture_tokenizer: Any) -> None:
    # The value fastsft wrote for the fixture tokenizer before format 2 (docs/outputs.md's example).
    assert tokenizer_fingerprint(fixture_tokenizer, 1) == "d3d4d6d0d014063b"


def test_tokens_by_id_read_from_rust_equal_the_vocabulary(fixture_tokenizer: Any) -> None:
    vocab = fixture_tokenizer.get_vocab()
    tokens = provenance._tokens_by_id(fixture_tokenizer)
    assert len(tokens) == len(vocab) and {token: i for i, token in enumerate(tokens)} == vocab


def test_ids_with_gaps_are_laid_out_from_the_vocabulary(fixture_tokenizer: Any) -> None:
    class Gappy:
        backend_tokenizer = None

        def get_vocab(self) -> dict[str, int]:
            return {"a": 0, "c": 2}

    assert provenance._tokens_by_id(Gappy()) == ["a", None, "c"]


def test_an_added_token_changes_both_versions(new_fixture_tokenizer: Any) -> None:
    before, after = new_fixture_tokenizer(), new_fixture_tokenizer()
    after.add_tokens(["<an-extra-token>"])
    for version in (1, 2):
        assert tokenizer_fingerprint(before, version) == tokenizer_fingerprint(
            new_fixture_tokenizer(), version
        )
        assert tokenizer_fingerprint(before, version) != tokenizer_fingerprint(after, version)


def test_fingerprint_version_of_a_record() -> None:
    assert fingerprint_version(None) == FORMAT == 2
    assert fingerprint_version({"format": 1}) == 1
    assert fingerprint_version({}) == 1
    assert fingerprint_version({"format": 2}) == 2
