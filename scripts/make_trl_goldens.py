"""Goldens of the chat-template mode, made by TRL itself: ``tests/goldens/trl/CASE.json``.

For each case (a chat-template family on a vocabulary), this gives TRL 1.16's ``SFTTrainer``
(``assistant_only_loss=True``, no truncation, no packing) a conversational dataset and records the
``input_ids`` and ``labels`` of its prepared training set (built from its ``assistant_masks``), sample for sample: TRL renders
each conversation with the tokenizer's chat template (swapping in its training version with
``{% generation %}`` markers) through ``apply_chat_template(..., return_assistant_tokens_mask=True)``.
The tokenizer's chat template is set to TRL's original template of the family
(``trl/chat_templates/FAMILY.jinja``), so the vocabulary stands in for the family's where the
two differ (each golden names both). The same conversations are recorded in LLaMA-Factory's
ShareGPT form with OpenAI role tags, which ``tests/test_chat_template_mode.py`` reads through
fastsft's converter with ``template: chat_template`` and compares. Run from the repository root
with the project's venv (TRL is a dev dependency)::

    FASTSFT_QWEN2_TOKENIZER=/work/shared/tokenizers/qwen2 python scripts/make_trl_goldens.py
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

import datasets
import trl
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM
from trl import SFTConfig, SFTTrainer

REPO = Path(__file__).resolve().parent.parent
OUTPUT = REPO / "tests" / "goldens" / "trl"
TRL_TEMPLATES = Path(trl.__file__).parent / "chat_templates"
VOCABULARIES = {
    "fixture": REPO / "examples" / "tiny" / "tokenizer",
    "qwen2": Path(os.environ.get("FASTSFT_QWEN2_TOKENIZER", REPO.parent / "shared" / "tokenizers" / "qwen2")),
    "llama3": REPO / ".cache" / "tokenizers" / "llama3",
}

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather of a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "description": "The city."}},
                "required": ["city"],
            },
        },
    }
]


def call(city: str) -> dict:
    return {"type": "function", "function": {"name": "get_weather", "arguments": {"city": city}}}


PLAIN = [
    [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello! How can I help?"}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3 + 3?"},
        {"role": "assistant", "content": "6."},
        {"role": "user", "content": "Thanks"},
        {"role": "assistant", "content": "You're welcome.\n"},
    ],
    [
        {"role": "user", "content": "Écris « bonjour » en japonais 🙂"},
        {"role": "assistant", "content": "こんにちは  (konnichiwa)\n\n  - indented\ttab"},
    ],
    [
        {"role": "user", "content": "  leading and trailing spaces  "},
        {"role": "assistant", "content": " "},
        {"role": "user", "content": "def f(x):\n    return x * 2"},
        {"role": "assistant", "content": "```python\nprint(f(2))\n```"},
    ],
]
TOOL_CALLS = [
    [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [call("Paris")]},
        {"role": "tool", "content": '{"temperature": 21}'},
        {"role": "assistant", "content": "It is 21 °C in Paris."},
    ],
    [
        {"role": "system", "content": "Use the tools."},
        {"role": "user", "content": "Weather in Oslo and Rome?"},
        {"role": "assistant", "content": "", "tool_calls": [call("Oslo"), call("Rome")]},
        {"role": "tool", "content": "Oslo: -3\nRome: 18"},
        {"role": "assistant", "content": "Oslo -3, Rome 18."},
        {"role": "user", "content": "And in Rome now?"},
        {"role": "assistant", "content": "", "tool_calls": [call("Rome")]},
        {"role": "tool", "content": "20"},
        {"role": "assistant", "content": "20 °C."},
    ],
]
THINKING = [
    [
        {"role": "user", "content": "Is 7 prime?"},
        {"role": "assistant", "content": "<think>\n7 has no divisor but 1 and 7.\n</think>\n\nYes."},
    ],
    [
        {"role": "user", "content": "2 + 2?"},
        {"role": "assistant", "content": "<think>\nAdd them.\n</think>\n\n4"},
        {"role": "user", "content": "Times 3?"},
        {"role": "assistant", "content": "<think>\n4 * 3 = 12\n</think>\n\n12"},
    ],
    [{"role": "user", "content": "No thought here"}, {"role": "assistant", "content": "Fine."}],
]

# case -> (TRL template family, vocabulary, conversations, with tools, enable_thinking for TRL's kwargs)
CASES = {
    "qwen2_5__fixture": ("qwen2_5", "fixture", PLAIN + TOOL_CALLS, None),
    "qwen2_5__qwen2": ("qwen2_5", "qwen2", PLAIN + TOOL_CALLS, None),
    "qwen3__fixture": ("qwen3", "fixture", PLAIN + THINKING + TOOL_CALLS, None),
    "qwen3__qwen2": ("qwen3", "qwen2", PLAIN + THINKING + TOOL_CALLS, None),
    "qwen3_nothink__qwen2": ("qwen3", "qwen2", PLAIN + THINKING, False),
    "llama3__fixture": ("llama3", "fixture", PLAIN, None),
    "llama3__llama3": ("llama3", "llama3", PLAIN, None),
    "deepseekv3__fixture": ("deepseekv3", "fixture", PLAIN + THINKING + TOOL_CALLS, None),
    "deepseekv3__qwen2": ("deepseekv3", "qwen2", PLAIN + TOOL_CALLS, None),
}


def sharegpt_row(messages: list[dict]) -> dict:
    """The conversation in LLaMA-Factory's ShareGPT form with OpenAI role tags (what fastsft reads):
    an assistant's tool calls become ``function_call`` messages, its JSON ``{name, arguments}``."""
    out = []
    for message in messages:
        if message.get("tool_calls"):
            calls = [call["function"] for call in message["tool_calls"]]
            content = json.dumps(calls[0] if len(calls) == 1 else calls, ensure_ascii=False)
            out.append({"role": "function_call", "content": content})
        else:
            out.append({"role": message["role"], "content": message["content"]})
    return {"messages": out}


def trl_rows(conversations: list[list[dict]], enable_thinking: bool | None) -> list[dict]:
    rows = []
    for messages in conversations:
        row: dict = {"messages": messages}
        if any(message.get("tool_calls") or message["role"] == "tool" for message in messages):
            row["tools"] = json.dumps(TOOLS)
        rows.append(row)
    if any("tools" in row for row in rows):  # one schema for the whole dataset
        for row in rows:
            row.setdefault("tools", None)
    if enable_thinking is not None:
        for row in rows:
            row["chat_template_kwargs"] = {"enable_thinking": enable_thinking}
    return rows


def trl_prepared_dataset(tokenizer: object, dataset: datasets.Dataset) -> datasets.Dataset:
    """TRL's prepared training set for ``dataset``, as ``SFTTrainer(assistant_only_loss=True)``
    makes it (no truncation, no packing) on a one-layer Qwen2 model: ``input_ids`` and ``labels``
    (the ids where its assistant mask is set, else -100). ``benchmarks/trl_peer.py`` times it."""
    model = Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=len(tokenizer),
            hidden_size=8,
            intermediate_size=16,
            num_hidden_layers=1,
            num_attention_heads=1,
            num_key_value_heads=1,
        )
    )
    with tempfile.TemporaryDirectory() as out:
        config = SFTConfig(
            output_dir=out,
            assistant_only_loss=True,
            max_length=None,
            packing=False,
            report_to=[],
            bf16=False,
            use_cpu=True,
            dataset_num_proc=None,
        )
        trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
        return trainer.train_dataset


def trl_prepared(tokenizer: object, rows: list[dict]) -> list[dict]:
    """``trl_prepared_dataset`` of ``rows``, as lists."""
    prepared = trl_prepared_dataset(tokenizer, datasets.Dataset.from_list(rows))
    return [{"input_ids": row["input_ids"], "labels": row["labels"]} for row in prepared]


def main() -> None:
    OUTPUT.mkdir(parents=True, exist_ok=True)
    for case, (family, vocabulary, conversations, enable_thinking) in CASES.items():
        folder = VOCABULARIES[vocabulary]
        if not folder.is_dir():
            print(f"{case}: vocabulary {vocabulary} not at {folder}, skipped", file=sys.stderr)
            continue
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        tokenizer.chat_template = (TRL_TEMPLATES / f"{family}.jinja").read_text(encoding="utf-8")
        rows = trl_rows(conversations, enable_thinking)
        golden = {
            "command": "python scripts/make_trl_goldens.py",
            "versions": {name: version(name) for name in ("trl", "transformers", "tokenizers", "jinja2")},
            "family": family,
            "vocabulary": vocabulary,
            "enable_thinking": enable_thinking,
            "chat_template": tokenizer.chat_template,
            "rows": [
                sharegpt_row(messages) | ({"tools": row["tools"]} if row.get("tools") else {})
                for messages, row in zip(conversations, rows)
            ],
            "trl": trl_prepared(tokenizer, rows),
        }
        (OUTPUT / f"{case}.json").write_text(json.dumps(golden, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"{case}: {len(rows)} samples")


if __name__ == "__main__":
    main()
