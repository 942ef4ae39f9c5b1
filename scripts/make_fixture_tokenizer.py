"""Build the small deterministic fixture tokenizer in ``examples/tiny/tokenizer/``.

The fixture mirrors Qwen2's tokenizer structure (NFC normalizer, Qwen2's split regex followed by a
byte-level pre-tokenizer without regex, byte-level decoder, no post-processing special tokens) but
has a vocabulary of about two thousand byte-level BPE tokens trained on a built-in corpus, so unit
tests run fast and never need the real Qwen2 files. It carries the special tokens of every chat
template the project tests (ChatML, Llama 2/3, Qwen3's non-special ``<think>``/``<tool_call>``
tokens), a ``<s>``/``</s>`` BOS/EOS pair and deliberately no pad token, so LLaMA-Factory's
"pad = eos" fix is exercised.

Usage: ``/work/venv/bin/python scripts/make_fixture_tokenizer.py [--out DIR]``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "examples" / "tiny" / "tokenizer"

VOCAB_SIZE = 2048  # learned tokens incl. the 256 byte symbols; added tokens come on top

# Qwen2's pre-tokenizer split pattern, copied from its tokenizer.json.
QWEN2_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+"
)

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<s>",
    "</s>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|eom_id|>",
]

# Qwen3 registers these as added tokens that are *not* special (they survive skip_special_tokens).
NON_SPECIAL_ADDED_TOKENS = [
    "<think>",
    "</think>",
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
]

# The special tokens of the other chat templates (LLaMA-Factory's ``template.py``), appended after
# the tokens above so their ids stay put. ``{"token": ...}`` slots (``sop``, ``<sep>``, ...) need
# them, and text templates then meet their markers as single tokens, as with the real tokenizers.
TEMPLATE_SPECIAL_TOKENS = [
    # GLM / ChatGLM
    "[gMASK]",
    "sop",
    "<sop>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
    # Gemma 1-3, Gemma 4
    "<start_of_turn>",
    "<end_of_turn>",
    "<eos>",
    "<|turn>",
    "<turn|>",
    "<|think|>",
    "<|tool>",
    "<tool|>",
    "<|channel>",
    "<channel|>",
    # Cohere
    "<|START_OF_TURN_TOKEN|>",
    "<|END_OF_TURN_TOKEN|>",
    "<|USER_TOKEN|>",
    "<|CHATBOT_TOKEN|>",
    "<|SYSTEM_TOKEN|>",
    # DeepSeek, Hunyuan
    "<｜User｜>",
    "<｜Assistant｜>",
    "<|EOT|>",
    "<｜hy_User｜>",
    "<｜hy_Assistant｜>",
    "<｜hy_eos｜>",
    "<｜hy_begin▁of▁sentence｜>",
    "<|startoftext|>",
    "<|extra_0|>",
    "<|extra_4|>",
    "<|eos|>",
    # gpt-oss (harmony)
    "<|start|>",
    "<|end|>",
    "<|message|>",
    "<|channel|>",
    "<|return|>",
    # Granite, Phi, Kimi, Llama 4
    "<|start_of_role|>",
    "<|end_of_role|>",
    "<|end_of_text|>",
    "<|im_sep|>",
    "<|im_user|>",
    "<|im_assistant|>",
    "<|im_system|>",
    "<|im_middle|>",
    "<|header_start|>",
    "<|header_end|>",
    "<|eot|>",
    "<|eom|>",
    # Mistral
    "[INST]",
    "[/INST]",
    "[SYSTEM_PROMPT]",
    "[/SYSTEM_PROMPT]",
    "[TOOL_CALLS]",
    "[TOOL_RESULTS]",
    "[/TOOL_RESULTS]",
    "[AVAILABLE_TOOLS]",
    "[/AVAILABLE_TOOLS]",
    # Ling / Bailing, ERNIE, dots, TeleChat, Yuan, EXAONE, LFM2, Seed, Youtu, MiniMax, Kimi thinking
    "<|role_end|>",
    "<|begin_of_sentence|>",
    "<|end_of_sentence|>",
    "<|endofuser|>",
    "<|endofassistant|>",
    "<|endofsystem|>",
    "<_user>",
    "<_bot>",
    "<_system>",
    "<sep>",
    "<eod>",
    "[|user|]",
    "[|assistant|]",
    "[|system|]",
    "[|endofturn|]",
    "<|tool_call_start|>",
    "<|tool_call_end|>",
    "<|tool_response_start|>",
    "<|tool_response_end|>",
    "<seed:think>",
    "</seed:think>",
    "<|User|>",
    "<|Assistant|>",
    "<minimax:tool_call>",
    "</minimax:tool_call>",
    "◁think▷",
    "◁/think▷",
]

CORPUS = [
    # English prose
    "The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step.",
    "Supervised fine-tuning teaches a language model to follow instructions by showing it examples of "
    "prompts and the responses we want. Each conversation alternates between the user and the assistant.",
    "You are a helpful assistant. Please answer the question as accurately as you can, and explain your "
    "reasoning step by step when the problem requires it.",
    "Human: What is the capital of France?\nAssistant: The capital of France is Paris.\n",
    "System: You are a concise assistant that answers in one sentence.\n",
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
    "I'm sure they'll agree; we've seen it before, and you'd think it's obvious. Don't worry, it isn't hard.",
    "Weather report: today it will be sunny with a high of 25 degrees and a light breeze from the west.",
    "Tokenizers split text into pieces. Byte-level BPE never needs an unknown token because every byte "
    "has its own symbol, and frequent byte pairs are merged into larger tokens during training.",
    "Summarize the following article in three bullet points, then translate the summary into Chinese.",
    "Thinking carefully: first list the facts, then check each assumption, and finally give the answer.",
    "Let me think about this. The user wants the weather, so I should call the weather tool with the city.",
    'Action: get_weather\nAction Input: {"city": "Paris", "unit": "celsius"}\n',
    "You have access to the following tools. Use the following format if using a tool.",
    # Chinese / Japanese / Korean
    "你好，世界！今天天气很好，我们去公园散步吧。机器学习是人工智能的一个重要分支。",
    "请用中文回答下面的问题：北京是中国的首都吗？是的，北京是中华人民共和国的首都。",
    "大语言模型通过监督微调学习如何遵循指令。每个对话由用户和助手交替组成。",
    "こんにちは、世界。今日はいい天気ですね。東京は日本の首都です。",
    "안녕하세요, 세계! 오늘 날씨가 정말 좋네요. 서울은 한국의 수도입니다.",
    # Code
    "def fibonacci(n: int) -> int:\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    'for (int i = 0; i < 10; ++i) {\n\tprintf("%d\\n", i);\n}\n',
    'import json\n\nwith open("data.json") as f:\n    rows = json.load(f)\nprint(len(rows))\n',
    '{"name": "get_weather", "arguments": {"location": "Beijing", "unit": "celsius"}}',
    '{"type": "function", "function": {"name": "search", "description": "Search the web", '
    '"parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}}',
    "SELECT name, COUNT(*) FROM users WHERE age >= 18 GROUP BY name ORDER BY 2 DESC;",
    "<html><body><h1>Title</h1><p>Paragraph &amp; more</p></body></html>",
    # Digits and numbers
    "0 1 2 3 4 5 6 7 8 9 10 42 100 256 1024 2048 3.14159 2.71828 -17 +8 1e-5 1,000,000 2024-07-26",
    "12 + 34 = 46; 7 * 8 = 56; 144 / 12 = 12; 2 ** 10 = 1024; 99% of 1000 is 990.",
    # Emoji and symbols
    "I love this 😀😃😄! Great job 👍🎉🔥 ❤️ ✨ 🚀 — well done… «quoted» “smart quotes” ‘single’ © ® ™ € £ ¥",
    # Whitespace runs
    "   leading spaces\n\n\ttabs\tand\t\tmore\t\t\ttabs   trailing   \n \n  \n\n\n\nmultiple blank lines\r\n",
    "a  b   c    d     e      f\n\n\n\n\n\nend",
    # Template-ish text
    "user\nassistant\nsystem\ntool\nipython\n[INST] hello [/INST] hi [TOOL_CALLS] [TOOL_RESULTS] [AVAILABLE_TOOLS]",
    "<<SYS>>\nYou are a helpful, respectful and honest assistant.\n<</SYS>>\n\n",
]


def build_tokenizer() -> Tokenizer:
    """Train the byte-level BPE and attach Qwen2's normalizer, pre-tokenizer and decoder."""
    tokenizer = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    # Repeating the corpus makes every pair in it frequent enough to be a merge candidate.
    tokenizer.train_from_iterator(CORPUS * 4, trainer=trainer)
    tokenizer.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in SPECIAL_TOKENS])
    tokenizer.add_tokens([AddedToken(t, normalized=False, special=False) for t in NON_SPECIAL_ADDED_TOKENS])
    tokenizer.add_special_tokens(
        [AddedToken(t, normalized=False, special=True) for t in TEMPLATE_SPECIAL_TOKENS]
    )
    return tokenizer


def finalize_tokenizer_json(tokenizer: Tokenizer) -> dict:
    """Serialize and apply the parts of Qwen2's tokenizer.json the trainer does not set."""
    data = json.loads(tokenizer.to_str())
    # Qwen2's converted tokenizer has a TemplateProcessing that adds nothing.
    data["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {},
    }
    return data


def tokenizer_config(tokenizer: Tokenizer) -> dict:
    """HF tokenizer_config.json: BOS/EOS set, no pad token, no chat template."""
    added_tokens_decoder = {}
    for token in SPECIAL_TOKENS + NON_SPECIAL_ADDED_TOKENS + TEMPLATE_SPECIAL_TOKENS:
        added_tokens_decoder[str(tokenizer.token_to_id(token))] = {
            "content": token,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": token not in NON_SPECIAL_ADDED_TOKENS,
        }
    return {
        "added_tokens_decoder": added_tokens_decoder,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "clean_up_tokenization_spaces": False,
        "model_max_length": 32768,
        "split_special_tokens": False,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": None,
    }


def write_json(path: Path, data: dict, indent: int | None) -> None:
    """Write UTF-8 JSON with a trailing newline."""
    path.write_text(json.dumps(data, ensure_ascii=False, indent=indent) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    out_dir: Path = parser.parse_args().out
    out_dir.mkdir(parents=True, exist_ok=True)

    tokenizer = build_tokenizer()
    write_json(out_dir / "tokenizer.json", finalize_tokenizer_json(tokenizer), indent=None)
    write_json(out_dir / "tokenizer_config.json", tokenizer_config(tokenizer), indent=2)
    print(f"wrote {out_dir} (vocab size {tokenizer.get_vocab_size(with_added_tokens=True)})")


if __name__ == "__main__":
    main()
