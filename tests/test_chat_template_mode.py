"""The chat-template mode (``template: chat_template``): the tokenizer's own jinja template, TRL-exact.

The goldens in ``tests/goldens/trl`` were made by TRL 1.16's ``SFTTrainer`` itself
(``scripts/make_trl_goldens.py``): for each the same conversations go through fastsft's converter
and this mode, and ``input_ids`` and ``labels`` must equal TRL's sample for sample, on both
encode paths. Vocabularies stand in for families as each golden records (TRL's original template
set on the fixture, Qwen2 or Llama 3 tokenizer); cases of an absent vocabulary are skipped.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import FIXTURE_TOKENIZER_DIR, LLAMA3_TOKENIZER_DIR, load_tokenizer, qwen2_tokenizer_dir

from fastsft import IGNORE_INDEX
from fastsft.data.data_args import DataArgs
from fastsft.data.pipeline import build_dataset, prepare_run
from fastsft.data.rows.chat_mode import (
    MARKERS,
    PREFIX_DIFFS,
    TRL_TEMPLATES,
    ChatTemplateMode,
    TemplateError,
    turn_bounds,
)
from fastsft.data.sources.converter import Conversation
from fastsft.errors import ConfigError, DataError
from fastsft.kernels.supervised import encode_pairs

REPO = Path(__file__).resolve().parent.parent
GOLDENS = sorted((REPO / "tests" / "goldens" / "trl").glob("*.json"))
VOCABULARIES = {
    "fixture": lambda: FIXTURE_TOKENIZER_DIR,
    "qwen2": qwen2_tokenizer_dir,
    "llama3": lambda: LLAMA3_TOKENIZER_DIR,
}
# LLaMA-Factory's ShareGPT format with OpenAI role tags (the goldens' rows)
DATASET_INFO = {
    "formatting": "sharegpt",
    "columns": {"messages": "messages", "tools": "tools"},
    "tags": {
        "role_tag": "role",
        "content_tag": "content",
        "user_tag": "user",
        "assistant_tag": "assistant",
        "observation_tag": "tool",
        "function_tag": "function_call",
        "system_tag": "system",
    },
}
QWEN2_5 = json.loads((REPO / "tests" / "goldens" / "trl" / "qwen2_5__fixture.json").read_text())[
    "chat_template"
]
MARKED = (
    "{% for m in messages %}<{{ m.role }}>{% if m.role == 'assistant' and m.content != 'skip' %}"
    "{% generation %}{{ m.content }}</s>{% endgeneration %}{% else %}{{ m.content }}{% endif %}\n{% endfor %}"
)
PLAIN = "{% for m in messages %}<{{ m.role }}>{{ m.content }}</s>\n{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"


def write_dataset(folder: Path, rows: list[dict[str, Any]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "chats.json").write_text(
        json.dumps(rows), encoding="utf-8"
    )  # ASCII: a lone surrogate as an escape
    info = {"chats": {"file_name": "chats.json", **DATASET_INFO}}
    (folder / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")
    return folder


def tokenizer_with(template: str, folder: Path = FIXTURE_TOKENIZER_DIR) -> Any:
    tokenizer = load_tokenizer(folder)
    tokenizer.chat_template = template
    return tokenizer


def chat_args(data: Path, **options: Any) -> DataArgs:
    return DataArgs(dataset="chats", dataset_dir=str(data), template="chat_template", **options)


def rows_of(dataset: Any) -> list[tuple[list[int], list[int]]]:
    return [(row["input_ids"], row["labels"]) for row in dataset]


CHATS = [
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"}]},
    {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "one"},
            {"role": "assistant", "content": "first answer"},
            {"role": "user", "content": "two"},
            {"role": "assistant", "content": "second answer, longer than the first"},
        ]
    },
]


# --- TRL-exact goldens -------------------------------------------------------------------------


@pytest.mark.parametrize("golden_path", GOLDENS, ids=[path.stem for path in GOLDENS])
@pytest.mark.parametrize("backend", ["compiled", "python"])
def test_trl_goldens(golden_path: Path, backend: str, tmp_path: Path) -> None:
    golden = json.loads(golden_path.read_text(encoding="utf-8"))
    folder = VOCABULARIES[golden["vocabulary"]]()
    if not folder.is_dir():
        pytest.skip(f"vocabulary {golden['vocabulary']} not at {folder}")
    data = write_dataset(tmp_path / "data", golden["rows"])
    args = chat_args(data, cutoff_len=100_000, backend=backend, enable_thinking=golden["enable_thinking"])
    dataset, summary = build_dataset(args, tokenizer_with(golden["chat_template"], folder))
    assert summary.examples_encoded == len(golden["trl"]) and summary.no_trainable == 0
    for index, (row, trl) in enumerate(zip(dataset, golden["trl"], strict=True)):
        assert row["input_ids"] == trl["input_ids"], f"sample {index}: input_ids"
        assert row["labels"] == trl["labels"], f"sample {index}: labels"


def test_goldens_cover_the_families() -> None:
    families = {json.loads(path.read_text())["family"] for path in GOLDENS}
    assert {"qwen2_5", "qwen3", "llama3", "deepseekv3"} <= families


def test_vendored_training_templates_are_trls() -> None:
    trl = pytest.importorskip("trl")
    source = Path(trl.__file__).parent / "chat_templates"
    index = json.loads((TRL_TEMPLATES / "index.json").read_text())
    for digest, name in index["originals"].items():
        original = (source / f"{name}.jinja").read_text(encoding="utf-8")
        assert hashlib.sha256(original.encode()).hexdigest() == digest, name
        assert (TRL_TEMPLATES / f"{name}_training.jinja").read_text(encoding="utf-8") == (
            source / f"{name}_training.jinja"
        ).read_text(encoding="utf-8"), name


# --- how the assistant tokens are found --------------------------------------------------------


def mode_for(template: str, tmp_path: Path, **options: Any) -> ChatTemplateMode:
    data = write_dataset(tmp_path / "data", CHATS)
    run = prepare_run(chat_args(data), tokenizer_with(template), fingerprint=False)
    return ChatTemplateMode(run.spec, **options)


def test_the_three_ways_of_finding_assistant_tokens(tmp_path: Path) -> None:
    assert mode_for(MARKED, tmp_path).how == MARKERS
    assert mode_for(QWEN2_5, tmp_path).how == "TRL's training version of qwen2_5"
    assert mode_for(PLAIN, tmp_path).how == PREFIX_DIFFS


def test_prefix_diffs_label_each_assistant_message(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "data", CHATS)
    tokenizer = tokenizer_with(PLAIN)
    dataset, _ = build_dataset(chat_args(data), tokenizer)
    trained = [tokenizer.decode([t for t in labels if t != IGNORE_INDEX]) for _, labels in rows_of(dataset)]
    assert trained == ["Hello there</s>\n", "first answer</s>\nsecond answer, longer than the first</s>\n"]


def test_a_template_that_rewrites_history_without_markers_is_refused(tmp_path: Path) -> None:
    rewriting = (
        "{% for m in messages %}{% if loop.last %}<{{ m.role }}>{{ m.content }}{% endif %}{% endfor %}"
    )
    with pytest.raises(ConfigError) as err:
        mode_for(rewriting, tmp_path)
    message = str(err.value)
    assert "\n" not in message and "template chat_template" in message and "not a prefix" in message


def test_a_tokenizer_without_chat_template_is_refused(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "data", CHATS)
    with pytest.raises(ConfigError, match="has no chat template"):
        build_dataset(chat_args(data), load_tokenizer(FIXTURE_TOKENIZER_DIR))


def test_a_sample_without_trained_tokens_is_counted_and_skipped(tmp_path: Path) -> None:
    rows = [
        *CHATS,
        {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "skip"}]},
    ]
    data = write_dataset(tmp_path / "data", rows)
    dataset, summary = build_dataset(chat_args(data), tokenizer_with(MARKED))
    assert len(dataset) == 2 and summary.no_trainable == 1
    assert any("no trained token" in line and "chats" in line for line in summary.lines())


def test_openai_rows_keep_their_system_prompt_as_written(tmp_path: Path) -> None:
    """LLaMA-Factory's OpenAI converter appends "detailed thinking off" to a system prompt; the
    served template gets the prompt as the row has it."""
    data = write_dataset(tmp_path / "data", CHATS)
    info = json.loads((data / "dataset_info.json").read_text())
    info["chats"]["formatting"] = "openai"
    (data / "dataset_info.json").write_text(json.dumps(info))
    tokenizer = tokenizer_with(QWEN2_5)
    dataset, _ = build_dataset(chat_args(data), tokenizer)
    texts = [tokenizer.decode(ids) for ids in dataset["input_ids"]]
    assert "<|im_start|>system\nBe brief.<|im_end|>" in texts[1]
    assert not any("thinking" in text for text in texts)


# --- LLaMA-Factory's options keep their meaning --------------------------------------------------


def reference(mode: ChatTemplateMode, conv: Conversation, **options: Any) -> tuple[list[int], list[int]]:
    """The sample by LLaMA-Factory's readable ``encode_pairs`` on the mode's (prompt, response)
    pairs, with the untrained tokens (non-assistant, unless train_on_prompt) masked after."""
    text, spans = mode.render(conv)
    ids, mask, _ = mode.tokenize_with_spans([text], [spans])
    bounds = turn_bounds(mask)
    pairs = [
        (list(range(bounds[i], bounds[i + 1])), list(range(bounds[i + 1], bounds[i + 2])))
        for i in range(0, len(bounds) - 1, 2)
    ]
    kept, labels = encode_pairs(pairs, **options)
    out = [
        int(ids[p]) if p != IGNORE_INDEX and (options.get("train_on_prompt") or mask[p]) else IGNORE_INDEX
        for p in labels
    ]
    return [int(ids[p]) for p in kept], out


@pytest.mark.parametrize(
    "options",
    [
        {"cutoff_len": 12},
        {"cutoff_len": 1000, "train_on_prompt": True},
        {"cutoff_len": 1000, "mask_history": True},
        {"cutoff_len": 20, "mask_history": True},
    ],
    ids=["cutoff", "train_on_prompt", "mask_history", "mask_history_cutoff"],
)
@pytest.mark.parametrize("backend", ["compiled", "python"])
def test_lf_options_keep_their_meaning(options: dict[str, Any], backend: str, tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "data", CHATS)
    tokenizer = tokenizer_with(QWEN2_5)
    args = chat_args(data, backend=backend, **options)
    dataset, _ = build_dataset(args, tokenizer)
    run = prepare_run(args, tokenizer_with(QWEN2_5), fingerprint=False)
    expected = [reference(run.chat_mode, conv, **options) for _, conv in run.samples()]
    assert rows_of(dataset) == expected
    if options.get("train_on_prompt"):
        assert all(ids == labels for ids, labels in rows_of(dataset))
    if options.get("mask_history") and options["cutoff_len"] == 1000:
        trained = tokenizer.decode([t for t in rows_of(dataset)[1][1] if t != IGNORE_INDEX])
        assert trained == "\nsecond answer, longer than the first<|im_end|>\n"  # TRL's qwen2_5 span
    assert all(len(ids) <= options["cutoff_len"] for ids, _ in rows_of(dataset))


def test_packing_and_inspect_work_unchanged(tmp_path: Path) -> None:
    from fastsft.inspection import inspect_dataset

    data = write_dataset(tmp_path / "data", CHATS * 3)
    unpacked, _ = build_dataset(chat_args(data), tokenizer_with(QWEN2_5))
    packed, _ = build_dataset(chat_args(data, packing=True, cutoff_len=256), tokenizer_with(QWEN2_5))
    rows = [json.dumps(row)[1:-1] for row in packed["input_ids"]]  # each sample lies whole in a packed row
    assert all(any(json.dumps(ids)[1:-1] in row for row in rows) for ids in unpacked["input_ids"])
    trained = sorted(t for row in unpacked["labels"] for t in row if t != IGNORE_INDEX)
    assert sorted(t for row in packed["labels"] for t in row if t != IGNORE_INDEX) == trained
    text = inspect_dataset(chat_args(data), tokenizer_with(QWEN2_5), count=1)
    assert "template chat_template" in text and "trained" in text


def test_worker_processes_give_the_rows_of_one_process(tmp_path: Path) -> None:
    """The mode and its encoder pickle into worker processes (``workers=2``, small batches) and
    give the same rows, on a text with characters NFC changes as well as plain ones."""
    chats = [
        *CHATS,
        {
            "messages": [
                {"role": "user", "content": "cafe\u0301?"},
                {"role": "assistant", "content": "数据 e\u0301"},
            ]
        },
    ]
    data = write_dataset(tmp_path / "data", chats * 4)
    args = chat_args(data, preprocessing_batch_size=3)
    alone, _ = build_dataset(args, tokenizer_with(QWEN2_5), workers=1)
    spread, _ = build_dataset(args, tokenizer_with(QWEN2_5), workers=2)
    assert rows_of(spread) == rows_of(alone)
    assert len(alone) == len(chats) * 4


# --- bad input: one line naming the sample -----------------------------------------------------


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        ("{{ raise_exception('no system messages here') }}", "raised: no system messages here"),
        ("{% for m in messages %}{{ m.nickname }}{% endfor %}", "reads an undefined field"),
    ],
    ids=["raises", "undefined"],
)
def test_a_failing_template_is_one_line_naming_the_sample(template: str, reason: str, tmp_path: Path) -> None:
    marked = template + "{% generation %}x{% endgeneration %}"
    data = write_dataset(tmp_path / "data", CHATS)
    with pytest.raises(DataError) as err:
        build_dataset(chat_args(data), tokenizer_with(marked))
    message = str(err.value)
    assert "\n" not in message and reason in message and "chats" in message and "0" in message


def test_text_that_is_not_unicode_names_its_field(tmp_path: Path) -> None:
    rows = [
        *CHATS,
        {"messages": [{"role": "user", "content": "a\ud800"}, {"role": "assistant", "content": "b"}]},
    ]
    data = write_dataset(tmp_path / "data", rows)
    with pytest.raises(
        DataError, match=r"dataset chats, sample #2, field 'messages\[0\]\.content': not valid Unicode"
    ):
        build_dataset(chat_args(data), tokenizer_with(QWEN2_5))
    dataset, summary = build_dataset(chat_args(data, skip_malformed=True), tokenizer_with(QWEN2_5))
    assert len(dataset) == 2 and summary.malformed_skipped == 1


def test_a_looping_template_stops_at_its_time_limit(tmp_path: Path) -> None:
    looping = (
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
        "{% generation %}x{% endgeneration %}"
    )
    mode = mode_for(looping, tmp_path, timeout=0.5)
    conv = Conversation(
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], None, None, ["a", "b"]
    )
    with pytest.raises(TemplateError, match=r"ran past its 0\.5 s time limit") as err:
        mode.render(conv, "dataset chats, sample 3")
    assert "sample 3" in str(err.value)


def test_the_sandbox_refuses_reaching_python_internals(tmp_path: Path) -> None:
    escaping = "{{ messages.__class__.__mro__ }}{% generation %}x{% endgeneration %}"
    data = write_dataset(tmp_path / "data", CHATS)
    with pytest.raises(DataError, match="chat template"):
        build_dataset(chat_args(data), tokenizer_with(escaping))


# --- fastsft train, and LLaMA-Factory loading the saved dataset --------------------------------


LF_PYTHON = Path("/work/venv-lf/bin/python")
LF_DRIVER = """
import json, sys
from datasets import load_from_disk
import llamafactory.train.sft.workflow as workflow
from llamafactory.train import tuner
model_dir, tokenized, data_dir, out = sys.argv[1:5]
seen = []
original = workflow.load_model
def load_and_record(*args, **kwargs):
    model = original(*args, **kwargs)
    model.register_forward_pre_hook(
        lambda m, a, k: seen.append((k["input_ids"].tolist(), k["labels"].tolist())), with_kwargs=True
    )
    return model
workflow.load_model = load_and_record
tuner.run_exp(dict(
    model_name_or_path=model_dir, stage="sft", do_train=True, finetuning_type="full", dataset="chats",
    dataset_dir=data_dir, tokenized_path=tokenized, template="empty", cutoff_len=4096,
    output_dir=out, per_device_train_batch_size=1, max_steps=2, save_strategy="no", report_to="none",
    use_cpu=True, bf16=False, seed=0,
))
print("SEEN " + json.dumps(seen))
"""


def test_fastsft_train_trains_a_chat_template_dataset_and_llamafactory_loads_it(tmp_path: Path) -> None:
    from datasets import load_from_disk

    from fastsft.train.config import load_config
    from fastsft.train.workflow import train

    tokenizer_dir = tmp_path / "tokenizer"
    shutil.copytree(FIXTURE_TOKENIZER_DIR, tokenizer_dir)
    config_file = tokenizer_dir / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config["chat_template"] = QWEN2_5
    config_file.write_text(json.dumps(config))
    data = write_dataset(tmp_path / "data", CHATS * 4)
    tokenized, output = tmp_path / "tokenized", tmp_path / "out"
    overrides = [
        f"tokenizer_name_or_path={tokenizer_dir}",
        f"dataset_dir={data}",
        "dataset=chats",
        "template=chat_template",
        f"tokenized_path={tokenized}",
        f"output_dir={output}",
        "packing=false",
        "val_size=0",
        "eval_strategy=no",
        "max_steps=2",
        "logging_steps=1",
        "plot_loss=false",
    ]
    train(load_config(REPO / "examples" / "tiny_sft.yaml", overrides))
    log = [json.loads(line) for line in (output / "trainer_log.jsonl").read_text().splitlines()]
    assert any("loss" in entry and np.isfinite(entry["loss"]) for entry in log)
    saved = load_from_disk(str(tokenized))["train"]
    expected, _ = build_dataset(chat_args(data, cutoff_len=512), tokenizer_with(QWEN2_5))
    assert sorted(map(tuple, saved["input_ids"])) == sorted(map(tuple, expected["input_ids"]))

    if not LF_PYTHON.is_file():
        pytest.skip(f"LLaMA-Factory's interpreter not at {LF_PYTHON}")
    result = subprocess.run(
        [str(LF_PYTHON), "-c", LF_DRIVER, str(output), str(tokenized), str(data), str(tmp_path / "lf_out")],
        capture_output=True,
        text=True,
        timeout=600,
        env={
            "PATH": "/usr/bin:/bin",
            "CUDA_VISIBLE_DEVICES": "",
            "OMP_NUM_THREADS": "1",
            "HOME": str(tmp_path),
        },
    )
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.split("SEEN ", 1)[1])
    rows = list(zip(saved["input_ids"], saved["labels"]))
    assert len(seen) == 2
    for ids, labels in seen:
        # LLaMA-Factory pads each batch to a multiple of 8, untrained
        assert any(
            ids[0][: len(row_ids)] == row_ids
            and labels[0][: len(row_ids)] == row_labels
            and set(labels[0][len(row_ids) :]) <= {IGNORE_INDEX}
            for row_ids, row_labels in rows
        )


def test_the_text_is_tokenized_as_the_tokenizer_calls_its_rust_tokenizer(tmp_path: Path) -> None:
    """A truncation setting kept in ``tokenizer.json`` is not applied (``tokenizer(text)`` turns it
    off), as transformers' ``apply_chat_template(..., return_assistant_tokens_mask=True)`` shows."""
    tokenizer = tokenizer_with(MARKED)
    tokenizer.backend_tokenizer.enable_truncation(max_length=4)
    dataset, _ = build_dataset(
        chat_args(write_dataset(tmp_path / "data", CHATS), cutoff_len=100_000), tokenizer
    )
    for row, chat in zip(dataset, CHATS, strict=True):
        expected = tokenizer.apply_chat_template(
            chat["messages"], tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        assert row["input_ids"] == expected["input_ids"]
        masked = [i if m else -100 for i, m in zip(expected["input_ids"], expected["assistant_masks"])]
        assert row["labels"] == masked


# --- token offsets from byte lengths against HF's offsets --------------------------------------

# Pieces of text that stress offsets: multi-byte characters split across tokens, NFD forms and
# compatibility ideographs (which NFC changes; it shortens the first by 3 bytes and lengthens the
# second by 3), whitespace runs, and the tokenizers' added tokens.
NFC_NEUTRAL = "e\u0301e\u0301e\u0301\u0958"  # as many bytes before and after NFC, but moved
TEXT_PIECES = [
    NFC_NEUTRAL,
    "Hello",
    " world",
    "\n\n",
    "  ",
    "\t",
    "数据处理",
    "😀👍🏽",
    "👨\u200d👩\u200d👧",
    "e\u0301",
    "\u212b",
    "\uf900",
    "café",
    "'s",
    "123456",
    "ǅß",
    "\u00a0",
    "\r\n",
    "<|im_start|>",
    "<|im_end|>",
    "<|eot_id|>",
    "</s>",
]


@pytest.mark.parametrize("vocabulary", sorted(VOCABULARIES))
def test_byte_length_offsets_give_hfs_assistant_mask(vocabulary: str, tmp_path: Path) -> None:
    """Property: the assistant mask from the run encoder's ids and the tokens' byte lengths equals
    the one from HF's character offsets, for random texts and spans (ordered, nested, empty)."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    folder = VOCABULARIES[vocabulary]()
    if not (folder / "tokenizer_config.json").is_file():
        pytest.skip(f"the {vocabulary} tokenizer is not here")
    data = write_dataset(tmp_path / "data", CHATS)
    run = prepare_run(chat_args(data), tokenizer_with(MARKED, folder), fingerprint=False)
    mode = ChatTemplateMode(run.spec)
    assert mode._byte_lengths is not None, "a byte-level BPE tokenizer takes the byte-length offsets"
    encoder = run.text_encoder("compiled")

    def span_list(text: str, cuts: list[int], nested: bool) -> list[tuple[int, int]]:
        points = sorted({cut % (len(text) + 1) for cut in cuts})
        spans = list(zip(points[0::2], points[1::2]))
        return spans[::-1] if nested and len(spans) > 1 else spans

    samples = st.lists(
        st.tuples(
            st.lists(st.sampled_from(TEXT_PIECES) | st.text(max_size=6), max_size=12).map("".join),
            st.lists(st.integers(0, 10_000), max_size=6),
            st.booleans(),
        ),
        min_size=1,
        max_size=8,
    )

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(samples)
    def check(batch: list[tuple[str, list[int], bool]]) -> None:
        texts = [text for text, _, _ in batch if not any(0xD800 <= ord(c) < 0xE000 for c in text)]
        spans = [span_list(text, cuts, nested) for text, cuts, nested in batch if text in texts]
        fast = mode.tokenize_with_spans(texts, spans, encoder)
        reference = mode.tokenize_with_spans(texts, spans)
        for got, expected in zip(fast, reference, strict=True):
            np.testing.assert_array_equal(got, expected)

    check()


def test_ascii_and_nfc_texts_take_the_byte_length_offsets(tmp_path: Path) -> None:
    """The batch pass answers for texts the sums fit; only a text NFC changes takes HF's offsets."""
    from fastsft.data.rows.chat_mode import byte_offset_masks

    data = write_dataset(tmp_path / "data", CHATS)
    run = prepare_run(chat_args(data), tokenizer_with(MARKED), fingerprint=False)
    mode = ChatTemplateMode(run.spec)
    texts = [
        "<user>Hi</s>\n<assistant>Hello 数据 😀</s>\n",
        "cafe\u0301 <assistant>x</s>",
        f"{NFC_NEUTRAL} <assistant>x</s>",
    ]
    spans = [[(25, 41)], [(18, 19)], [(19, 20)]]
    ids, bounds = run.text_encoder("compiled").encode_batch_flat(texts)
    assert mode._byte_lengths is not None
    _, fallback = byte_offset_masks(texts, spans, ids, bounds, mode._byte_lengths, mode._nfc)
    assert mode._nfc
    assert fallback == [1, 2]


def test_tokenizers_whose_offsets_are_not_byte_sums_take_hfs_offsets() -> None:
    """Offsets trimmed by the post-processor, added tokens that strip whitespace, a prefix space,
    a normalizer other than NFC, and a model that is not byte-level BPE all keep HF's offsets."""
    from fastsft.data.rows.chat_mode import token_byte_lengths

    config = json.loads(load_tokenizer(FIXTURE_TOKENIZER_DIR).backend_tokenizer.to_str())
    assert token_byte_lengths(json.dumps(config))[0] is not None
    trimmed = {**config, "post_processor": {"type": "ByteLevel", "trim_offsets": True}}
    stripping = {**config, "added_tokens": [{**config["added_tokens"][0], "lstrip": True}]}
    prefixed = {**config, "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": True}}
    lowercased = {**config, "normalizer": {"type": "Lowercase"}}
    wordpiece = {**config, "model": {**config["model"], "type": "WordPiece"}}
    for changed in (trimmed, stripping, prefixed, lowercased, wordpiece):
        assert token_byte_lengths(json.dumps(changed)) == (None, False)


def test_a_vocabulary_entry_outside_the_byte_alphabet_has_no_byte_length() -> None:
    """Only entries made of ByteLevel's 256 byte characters have a byte length; any other (here a
    raw space and a raw control character, both below U+0143) gets one no text has."""
    from fastsft.data.rows.chat_mode import token_byte_lengths

    config = json.loads(load_tokenizer(FIXTURE_TOKENIZER_DIR).backend_tokenizer.to_str())
    vocab = config["model"]["vocab"]
    first = max(vocab.values()) + 1
    config["model"]["vocab"] = {**vocab, "a b": first, "\x01": first + 1, "ĠxŃ": first + 2}
    for token in config["added_tokens"]:
        token["id"] += 3
    lengths, _ = token_byte_lengths(json.dumps(config))
    assert lengths is not None
    assert lengths[first + 2] == 3  # Ġ, x and Ń are bytes
    assert lengths[first] > 1 << 31 and lengths[first + 1] > 1 << 31


def test_a_batchs_turn_bounds_are_each_samples() -> None:
    """Property: ``turn_bounds_flat`` over a batch equals ``turn_bounds`` sample by sample."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from fastsft.data.rows.chat_mode import turn_bounds_flat
    from fastsft.kernels import offsets_from_lengths

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.lists(st.booleans(), max_size=8), max_size=6))
    def check(samples: list[list[bool]]) -> None:
        bounds = offsets_from_lengths(np.array([len(s) for s in samples], dtype=np.int64))
        mask = np.array([flag for sample in samples for flag in sample], dtype=bool)
        each = [turn_bounds(np.array(sample, dtype=bool)) for sample in samples]
        message_bounds, sample_bounds = turn_bounds_flat(mask, bounds)
        for index, expected in enumerate(each):
            owned = message_bounds[sample_bounds[index] : sample_bounds[index + 1] + 1]
            assert owned[:-1].tolist() == (expected[:-1] + bounds[index]).tolist()
        assert message_bounds[-1] == bounds[-1]
        assert len(sample_bounds) == len(samples) + 1

    check()


def test_the_byte_lengths_are_kept_beside_the_tokenizer_json(tmp_path: Path, fastsft_cache: Path) -> None:
    """Made once per ``tokenizer.json`` and read back; a damaged file is made again, not trusted."""
    from fastsft.data.rows.chat_mode import token_byte_lengths

    data = write_dataset(tmp_path / "data", CHATS)
    run = prepare_run(chat_args(data), tokenizer_with(MARKED), fingerprint=False)
    assert run.spec.backend_json is not None
    expected, nfc = token_byte_lengths(run.spec.backend_json)
    assert expected is not None
    first = ChatTemplateMode(run.spec)
    (kept,) = fastsft_cache.glob("tokenizer_json/*.byte-lengths-*.npz")
    original = kept.read_bytes()
    assert (
        ChatTemplateMode(run.spec)._byte_lengths.tolist() == expected.tolist() == first._byte_lengths.tolist()
    )
    kept.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    again = ChatTemplateMode(run.spec)
    assert again._byte_lengths.tolist() == expected.tolist() and again._nfc == nfc
    assert kept.read_bytes() == original
