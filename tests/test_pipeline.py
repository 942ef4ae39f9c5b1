"""``build_dataset`` end to end on hand-checkable data, and its accounting of dropped and malformed samples.

The two-turn conversation ``1+1=?`` → ``2``, ``2+2=?`` → ``4`` is small enough to check by eye:
every test decodes what was labelled and compares it with the text a person expects.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fastsft import IGNORE_INDEX
from fastsft.data.accounting import Summary
from fastsft.data.data_args import DataArgs
from fastsft.data.pipeline import build_dataset, make_encoder
from fastsft.errors import ConfigError, DataError

BACKENDS = ["python", "compiled"]

QWEN_SYSTEM = (
    "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
)
PROMPT_1 = QWEN_SYSTEM + "<|im_start|>user\n1+1=?<|im_end|>\n<|im_start|>assistant\n"
RESPONSE_1 = "2<|im_end|>\n"
PROMPT_2 = "<|im_start|>user\n2+2=?<|im_end|>\n<|im_start|>assistant\n"
RESPONSE_2 = "4<|im_end|>\n"
FULL_TEXT = PROMPT_1 + RESPONSE_1 + PROMPT_2 + RESPONSE_2


def sharegpt(*texts: str, **extra: Any) -> dict[str, Any]:
    """A ShareGPT row whose messages alternate human/gpt."""
    roles = ("human", "gpt")
    return {"conversations": [{"from": roles[i % 2], "value": t} for i, t in enumerate(texts)], **extra}


MATH = sharegpt("1+1=?", "2", "2+2=?", "4")
GOOD = sharegpt("hi", "there")
ODD = sharegpt("a", "b", "c")  # LLaMA-Factory drops it: odd number of messages
WRONG_ORDER = {"conversations": [{"from": "gpt", "value": "b"}, {"from": "human", "value": "a"}]}
NOT_A_STRING = sharegpt("a", ["b"])  # malformed: LLaMA-Factory would crash on it
BAD_TOOLS = sharegpt("a", "b", tools="[{not json")  # malformed at the template


def write_dataset(folder: Path, rows: list[dict[str, Any]], name: str = "chat") -> str:
    """Write ``rows`` as JSON Lines with a ``dataset_info.json`` entry (ShareGPT, system and tools columns)."""
    (folder / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    info_path = folder / "dataset_info.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    info[name] = {
        "file_name": f"{name}.jsonl",
        "formatting": "sharegpt",
        "columns": {"messages": "conversations", "system": "system", "tools": "tools"},
    }
    info_path.write_text(json.dumps(info))
    return name


def labelled_spans(tokenizer: Any, input_ids: list[int], labels: list[int]) -> list[str]:
    """The decoded runs of labelled tokens; a labelled token must equal its input token."""
    spans = []
    for trained, group in itertools.groupby(zip(input_ids, labels), key=lambda p: p[1] != IGNORE_INDEX):
        if trained:
            ids, labs = zip(*group)
            assert ids == labs, "a label differs from the token it labels"
            spans.append(tokenizer.decode(list(ids), skip_special_tokens=False))
    return spans


@pytest.fixture
def build(tmp_path: Path, new_fixture_tokenizer: Callable[[], Any]) -> Callable[..., tuple[Any, Summary]]:
    """Run ``build_dataset`` on rows written to ``tmp_path``, with a fresh fixture tokenizer."""

    def run(rows: list[dict[str, Any]], cache_file: str | None = None, **options: Any) -> tuple[Any, Summary]:
        name = write_dataset(tmp_path, rows)
        args = DataArgs(dataset=name, dataset_dir=str(tmp_path), **{"template": "qwen", **options})
        return build_dataset(args, new_fixture_tokenizer(), cache_file=cache_file)

    return run


def ids_of(tokenizer: Any, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


# --- the hand-checkable conversation -------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_default_labels_both_responses_only(build, fixture_tokenizer, backend):
    dataset, summary = build([MATH], backend=backend)
    row = dataset[0]
    assert fixture_tokenizer.decode(row["input_ids"], skip_special_tokens=False) == FULL_TEXT
    assert labelled_spans(fixture_tokenizer, row["input_ids"], row["labels"]) == [RESPONSE_1, RESPONSE_2]
    assert row["attention_mask"] == [1] * len(row["input_ids"])
    assert (summary.examples_in, summary.examples_encoded, summary.rows_out) == (1, 1, 1)
    assert summary.tokens == len(row["input_ids"])
    assert summary.label_tokens == len(ids_of(fixture_tokenizer, RESPONSE_1 + RESPONSE_2))
    assert summary.truncated == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_train_on_prompt_labels_everything(build, fixture_tokenizer, backend):
    dataset, _ = build([MATH], backend=backend, train_on_prompt=True)
    row = dataset[0]
    assert row["labels"] == row["input_ids"]
    assert labelled_spans(fixture_tokenizer, row["input_ids"], row["labels"]) == [FULL_TEXT]


@pytest.mark.parametrize("backend", BACKENDS)
def test_mask_history_labels_last_response_only(build, fixture_tokenizer, backend):
    dataset, _ = build([MATH], backend=backend, mask_history=True)
    row = dataset[0]
    assert fixture_tokenizer.decode(row["input_ids"], skip_special_tokens=False) == FULL_TEXT
    assert labelled_spans(fixture_tokenizer, row["input_ids"], row["labels"]) == [RESPONSE_2]


@pytest.mark.parametrize("backend", BACKENDS)
def test_cutoff_inside_first_prompt_keeps_first_response(build, fixture_tokenizer, backend):
    """cutoff_len 10: the 3-token response fits whole, the prompt keeps its first 7 tokens, turn 2 is gone."""
    response = ids_of(fixture_tokenizer, RESPONSE_1)
    assert len(response) == 3
    dataset, summary = build([MATH], backend=backend, cutoff_len=10)
    row = dataset[0]
    assert row["input_ids"] == ids_of(fixture_tokenizer, PROMPT_1)[:7] + response
    assert row["labels"] == [IGNORE_INDEX] * 7 + response
    assert summary.truncated == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_cutoff_two_tokens_into_second_turn(build, fixture_tokenizer, backend):
    """Two tokens left for turn 2: its response gets int(2 * 3 / 16) = 0 of them, its prompt both."""
    turn_1 = ids_of(fixture_tokenizer, PROMPT_1 + RESPONSE_1)
    prompt_2 = ids_of(fixture_tokenizer, PROMPT_2)
    assert len(prompt_2) == 13
    dataset, summary = build([MATH], backend=backend, cutoff_len=len(turn_1) + 2)
    row = dataset[0]
    assert row["input_ids"] == turn_1 + prompt_2[:2]
    assert labelled_spans(fixture_tokenizer, row["input_ids"], row["labels"]) == [RESPONSE_1]
    assert fixture_tokenizer.decode(row["input_ids"][-2:]) == "<|im_start|>user"
    assert summary.truncated == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_mask_history_cutoff_keeps_the_last_turn_first(build, fixture_tokenizer, backend):
    """mask_history spends the budget on the last turn first; turn 1 gets what is left (4 prompt tokens)."""
    last_turn = ids_of(fixture_tokenizer, PROMPT_2 + RESPONSE_2)
    dataset, _ = build([MATH], backend=backend, mask_history=True, cutoff_len=len(last_turn) + 4)
    row = dataset[0]
    assert row["input_ids"] == ids_of(fixture_tokenizer, PROMPT_1)[:4] + last_turn
    assert labelled_spans(fixture_tokenizer, row["input_ids"], row["labels"]) == [RESPONSE_2]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"train_on_prompt": True},
        {"mask_history": True},
        {"cutoff_len": 5},
        {"packing": True, "cutoff_len": 70},
    ],
    ids=["default", "train_on_prompt", "mask_history", "cutoff", "packing"],
)
def test_input_ids_never_hold_ignore_index(build, backend, options):
    dataset, _ = build([MATH, GOOD, sharegpt("", "")], backend=backend, **options)
    for row in dataset:
        assert IGNORE_INDEX not in row["input_ids"]
        assert len(row["input_ids"]) == len(row["labels"]) == len(row["attention_mask"])


def test_compiled_equals_python_on_sample_datasets(test_data_dir, new_fixture_tokenizer):
    """Every committed sample dataset, unpacked: both encode paths give the same rows and counts."""
    names = ["sharegpt_chat", "sharegpt_tools", "alpaca_mix", "openai_chat", "sharegpt_custom_tags"]
    results = []
    for backend in BACKENDS:
        args = DataArgs(dataset=names, dataset_dir=str(test_data_dir), template="qwen", backend=backend)
        dataset, summary = build_dataset(args, new_fixture_tokenizer())
        results.append((dataset.to_dict(), summary.examples_encoded, summary.dropped, summary.label_tokens))
    assert results[0] == results[1]
    assert results[0][1] > 10


# --- packing ------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_llamafactory_packing_packs_within_each_preprocessing_batch(build, backend):
    """Batches of one raw sample: no two samples share a row, each row is cutoff_len long."""
    rows = [GOOD, MATH, GOOD]
    unpacked, _ = build(rows, backend=backend)
    packed, summary = build(rows, backend=backend, packing=True, cutoff_len=100, preprocessing_batch_size=1)
    assert len(packed) == 3
    for packed_row, sample in zip(packed, unpacked):
        n = len(sample["input_ids"])
        assert len(packed_row["input_ids"]) == 100
        assert packed_row["input_ids"][:n] == sample["input_ids"]
        assert packed_row["position_ids"][:n] == list(range(n))
        assert packed_row["labels"][:n] == sample["labels"]
        assert packed_row["labels"][n:] == [IGNORE_INDEX] * (100 - n)
    assert summary.padding_tokens == 300 - summary.tokens
    together, _ = build(rows, backend=backend, packing=True, cutoff_len=100, preprocessing_batch_size=3)
    assert len(together) < 3


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cached", [False, True], ids=["in-memory", "cache-file"])
@pytest.mark.parametrize(
    "packing",
    [{}, {"packing": True}, {"neat_packing": True}, {"packing": True, "packing_strategy": "bfd"}],
    ids=["unpacked", "llamafactory", "neat", "bfd"],
)
def test_batches_without_valid_samples_give_no_rows(build, tmp_path, backend, cached, packing):
    """A preprocessing batch whose only sample is dropped gives no rows, also when it comes first."""
    cache_file = str(tmp_path / "rows.arrow") if cached else None
    rows = [ODD, GOOD, ODD, MATH]
    dataset, summary = build(rows, cache_file, backend=backend, preprocessing_batch_size=1, **packing)
    expected, _ = build([GOOD, MATH], backend=backend, preprocessing_batch_size=1, **packing)
    assert (summary.examples_in, summary.dropped, summary.examples_encoded) == (4, 2, 2)
    assert dataset.features == expected.features
    assert dataset.to_dict() == expected.to_dict()


# --- drops, malformed samples and their accounting ----------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_dropped_samples_are_counted_with_the_first_reason(build, backend):
    dataset, summary = build([GOOD, ODD, WRONG_ORDER, GOOD], backend=backend)
    assert len(dataset) == 2
    assert summary.dropped == 2
    assert (
        summary.first_dropped
        == "dataset chat, sample #1: odd number of messages (3): every prompt needs a response"
    )
    lines = summary.lines()
    assert any(line.startswith("dropped: 2 (first: dataset chat, sample #1: odd number") for line in lines)
    assert summary.examples_in == summary.examples_encoded + summary.dropped + summary.malformed_skipped


@pytest.mark.parametrize("backend", BACKENDS)
def test_strict_raises_on_the_first_dropped_sample(build, backend):
    with pytest.raises(DataError) as caught:
        build([GOOD, WRONG_ORDER, ODD], backend=backend, strict=True)
    assert (caught.value.dataset, caught.value.index) == ("chat", 1)
    assert "message 0 has role 'gpt' where human/observation is expected" in str(caught.value)
    assert str(caught.value).startswith("dataset chat, sample #1: ")


# A template-stage error names the field as the row has it: message 3 after the system message.
BAD_FUNCTION_CALL = {
    "conversations": [
        {"from": "system", "value": "s"},
        {"from": "human", "value": "a"},
        {"from": "gpt", "value": "b"},
        {"from": "human", "value": "c"},
        {"from": "function_call", "value": "not json"},
    ]
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("row", "field", "reason"),
    [
        (NOT_A_STRING, "conversations[1].value", "expected a string, got list ['b']"),
        (BAD_TOOLS, "tools", "invalid JSON in tool description"),
        ({"conversations": [{"from": "human"}]}, "conversations[0]", "message has no 'value' key"),
        ({"dialog": []}, "conversations", "missing 'conversations'"),
        (BAD_FUNCTION_CALL, "conversations[4].value", "invalid JSON in function message"),
    ],
    ids=["not-a-string", "bad-tools", "missing-key", "missing-column", "template-error-in-row-terms"],
)
def test_malformed_sample_raises_located_error(build, backend, row, field, reason):
    with pytest.raises(DataError) as caught:
        build([GOOD, GOOD, row, GOOD], backend=backend, preprocessing_batch_size=2)
    error = caught.value
    assert (error.dataset, error.index, error.field) == ("chat", 2, field)
    assert reason in error.reason
    assert "\n" not in str(error)


@pytest.mark.parametrize("backend", BACKENDS)
def test_skip_malformed_counts_every_input_sample(build, backend):
    rows = [GOOD, NOT_A_STRING, ODD, BAD_TOOLS, MATH, BAD_TOOLS, GOOD]
    dataset, summary = build(rows, backend=backend, skip_malformed=True, preprocessing_batch_size=2)
    assert len(dataset) == summary.examples_encoded == 3
    assert summary.dropped == 1
    assert summary.malformed_skipped == 3
    assert summary.first_malformed is not None
    assert summary.first_malformed.startswith("dataset chat, sample #1, field 'conversations[1].value'")
    assert (
        summary.examples_in
        == len(rows)
        == summary.examples_encoded + summary.dropped + summary.malformed_skipped
    )
    assert f"malformed, skipped: 3 (first: {summary.first_malformed})" in summary.lines()


def test_no_valid_samples_is_an_error_naming_the_dropped_ones(build):
    with pytest.raises(DataError, match=r"no valid samples \(2 dropped; first: dataset chat, sample #0: odd"):
        build([ODD, ODD])


def test_max_samples_takes_the_first_rows(build):
    full, _ = build([GOOD, MATH, GOOD, MATH])
    first, summary = build([GOOD, MATH, GOOD, MATH], max_samples=2)
    assert summary.examples_in == 2
    assert first.to_dict() == full.select(range(2)).to_dict()


def test_cache_file_gives_the_in_memory_dataset(build, tmp_path, new_fixture_tokenizer):
    in_memory, _ = build([GOOD, MATH], packing=True, cutoff_len=40)
    args = DataArgs(dataset="chat", dataset_dir=str(tmp_path), template="qwen", packing=True, cutoff_len=40)
    cached, _ = build_dataset(args, new_fixture_tokenizer(), cache_file=str(tmp_path / "rows.arrow"))
    assert (tmp_path / "rows.arrow").stat().st_size > 0
    assert cached.features == in_memory.features
    assert cached.to_dict() == in_memory.to_dict()


def varied_rows(n: int) -> list[dict[str, Any]]:
    """``n`` conversations of 1-3 turns and varied lengths, so packed rows hold different samples."""
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    return [
        sharegpt(*(" ".join(words[: 1 + (i * 7 + j) % 8] * (1 + i % 3)) for j in range(2 * (1 + i % 3))))
        for i in range(n)
    ]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("strategy", ["llamafactory", "bfd"])
@pytest.mark.parametrize("neat", [False, True], ids=["packing", "neat"])
def test_packed_rows_in_small_chunks_and_spilled_samples_give_the_same_dataset(
    build, tmp_path, monkeypatch, backend, strategy, neat
):
    """Rows written a few at a time, with BFD's samples spilled beside the cache file, equal the
    in-memory dataset built in one chunk; the spill folder is gone afterwards."""
    rows = varied_rows(60)
    options = {"backend": backend, "packing": True, "neat_packing": neat, "packing_strategy": strategy}
    options.update(cutoff_len=64, preprocessing_batch_size=25)
    whole, whole_summary = build(rows, **options)
    monkeypatch.setattr("fastsft.data.rows.builder.ROW_CHUNK_TOKENS", 100)  # about one row per record batch
    cache_dir = tmp_path / "out"
    cache_dir.mkdir()
    chunked, chunked_summary = build(rows, str(cache_dir / "rows.arrow"), **options)
    assert len(whole) > 10
    assert chunked.features == whole.features
    assert chunked.to_dict() == whole.to_dict()
    assert (chunked_summary.rows_out, chunked_summary.tokens, chunked_summary.padding_tokens) == (
        whole_summary.rows_out,
        whole_summary.tokens,
        whole_summary.padding_tokens,
    )
    assert chunked_summary.label_tokens == whole_summary.label_tokens
    assert [p.name for p in cache_dir.iterdir()] == ["rows.arrow"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_spill_folder_is_removed_when_a_later_sample_fails(build, tmp_path, backend):
    cache_dir = tmp_path / "out"
    cache_dir.mkdir()
    rows = [*varied_rows(30), NOT_A_STRING]
    with pytest.raises(DataError):
        build(
            rows,
            str(cache_dir / "rows.arrow"),
            backend=backend,
            packing=True,
            packing_strategy="bfd",
            cutoff_len=64,
            preprocessing_batch_size=10,
        )
    assert not any(p.name.startswith(".fastsft-bfd-") for p in cache_dir.iterdir())


def test_summary_lines_name_every_count():
    summary = Summary(
        examples_in=5, examples_encoded=3, rows_out=2, dropped=1, first_dropped="dataset d, sample #4: x"
    )
    summary.malformed_skipped, summary.first_malformed = 1, "dataset d, sample #2: y"
    summary.truncated, summary.tokens, summary.label_tokens, summary.seconds = 1, 200, 50, 2.0
    text = "\n".join(summary.lines())
    assert "examples in: 5  encoded: 3  rows out: 2" in text
    assert "dropped: 1 (first: dataset d, sample #4: x)" in text
    assert "malformed, skipped: 1 (first: dataset d, sample #2: y)" in text
    assert "truncated to cutoff_len: 1" in text
    assert "tokens: 200  label tokens: 50" in text
    assert "time: 2.00 s  2 examples/s  100 tokens/s" in text
    assert "packed rows" not in text
    summary.packing_capacity = 128
    assert "packed rows: 2 of 128 tokens, 78.1% filled" in summary.lines()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"mask_history": True, "train_on_prompt": True}, "incompatible with `train_on_prompt`"),
        ({"cutoff_len": 0}, "cutoff_len"),
        (
            {"packing_strategy": "first_fit"},
            "`packing_strategy` expects one of llamafactory, bfd or null, got 'first_fit'",
        ),
        ({"backend": "rust"}, "rust"),
        ({"cutoff_len": "1024"}, "`cutoff_len` expects an integer, got '1024'"),
        ({"train_on_prompt": "no"}, "`train_on_prompt` expects true or false, got 'no'"),
        ({"max_samples": 2.5}, "`max_samples` expects an integer or null, got '2.5'"),
        (
            {"dataset": ["a", 1]},
            r"`dataset` expects a string or a list of strings or null, got \"\['a', 1\]\"",
        ),
    ],
)
def test_bad_options_raise_config_error(options, message, fixture_tokenizer):
    """Checked on construction, or (the template) where the option is used."""
    with pytest.raises(ConfigError, match=message):
        make_encoder(DataArgs(**{"dataset": "d", "template": "qwen", **options}), fixture_tokenizer)


@pytest.mark.parametrize("backend", BACKENDS)
def test_building_makes_no_reference_cycles_and_restores_the_collector(build, backend):
    # build_dataset pauses the cyclic collector (see pipeline._cyclic_gc_paused), which is only
    # safe while building leaves no cycles behind; their number must not grow with the samples.
    import gc

    def cycles_left(rows: list[dict[str, Any]]) -> int:
        gc.collect()
        gc.disable()
        try:
            build(rows, backend=backend, packing=True, skip_malformed=True)
            return gc.collect()
        finally:
            gc.enable()

    cycles_left([MATH, GOOD] * 5)  # warm-up: first-use caches
    assert cycles_left([MATH, GOOD, ODD, NOT_A_STRING] * 50) == cycles_left(
        [MATH, GOOD, ODD, NOT_A_STRING] * 5
    )
    build([MATH], backend=backend)
    assert gc.isenabled()


def test_prepare_run_fingerprints_the_tokenizer_as_loaded_then_fixes_it(new_fixture_tokenizer: Any) -> None:
    """The one data set-up: the fingerprint is the loaded tokenizer's, although the fixes add a token."""
    from fastsft.data.pipeline import prepare_run
    from fastsft.data.store.provenance import tokenizer_fingerprint

    loaded = tokenizer_fingerprint(new_fixture_tokenizer())
    tokenizer = new_fixture_tokenizer()
    size = len(tokenizer)
    run = prepare_run(DataArgs(template="glm4v"), tokenizer)  # its fixes add a token to this vocabulary
    assert len(tokenizer) == size + 1 and run.tokenizer is tokenizer
    assert run.fingerprint == loaded != tokenizer_fingerprint(tokenizer)
