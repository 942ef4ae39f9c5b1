"""Deterministic synthetic ShareGPT chat data for the preprocessing benchmarks.

    python benchmarks/data.py OUT_DIR [--samples 20000] [--seed 0] [--jsonl]

Writes ``OUT_DIR/<name>.json`` (or ``.jsonl``) and ``OUT_DIR/dataset_info.json`` naming it, so
fastsft and LLaMA-Factory read the same file through the same dataset name. Conversations have
1-6 turns, an optional system prompt (a ``system`` column) and a mix of English prose with
markdown, Chinese (some Japanese), and code; with the Qwen2 tokenizer and the ``qwen`` template
they average about 740 tokens each, with a long tail that exercises truncation at 2048. The same
``seed`` and ``samples`` always give byte-identical files, on any machine.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
from pathlib import Path
from typing import Any

DATASET_NAME = "synthetic_chat"

# Most frequent English words first: drawn with Zipf weights, so the tokenizer sees a realistic
# mix of cached common words and rarer ones.
_COMMON_WORDS_TEXT = (
    "the of and to a in is it you that for on are with as this be at have from or by not but what "
    "can we if your all an will there one so which when would their use also how more like then "
    "these only some into other time than them way each may could first should about just most "
    "many such need because however example make different both value through where after same "
    "while before between without usually often instead every simple another important result "
    "case changes number following possible specific common given better already"
)
COMMON_WORDS = _COMMON_WORDS_TEXT.split()
_TECH_WORDS_TEXT = (
    "function variable model data training learning network layer tensor gradient loss batch "
    "memory cache server request response database query index table column string array list "
    "dictionary object class method module package library framework interface parameter argument "
    "token sequence attention embedding optimizer schedule checkpoint dataset pipeline kernel thread "
    "process file directory path error exception configuration environment version dependency "
    "compiler runtime algorithm complexity performance latency throughput benchmark deployment "
    "container cluster node API JSON HTTP GPU CPU Python Rust Linux"
)
TECH_WORDS = _TECH_WORDS_TEXT.split()
_VERBS_TEXT = (
    "use create explain implement fix optimize convert parse handle compute load save train "
    "evaluate debug install configure deploy reduce improve compare sort filter merge split"
)
VERBS = _VERBS_TEXT.split()
_SYLLABLES_TEXT = "ka lo mi ne ra to shi ven dor al ex pro con tra ment ing tion able ous ize er est qua zel"
SYLLABLES = _SYLLABLES_TEXT.split()
CONTRACTIONS = ("I'm", "don't", "it's", "we'll", "you're", "they've", "can't", "isn't", "doesn't", "I'd")

_CHINESE_WORDS_TEXT = (
    "我们 可以 这个 问题 数据 模型 训练 学习 网络 函数 方法 使用 需要 如果 因为 所以 但是 然后 "
    "一个 什么 怎么 为什么 时候 系统 用户 助手 请 帮忙 解释 例子 答案 代码 文件 参数 结果 性能 内存 "
    "优化 错误 运行 安装 配置 版本 服务器 请求 我 你 他 是 的 了 在 有 和 就 不 也 都 很 还 要 会 "
    "中国 北京 上海 公司 工作 时间 今天 明天 学生 老师 朋友 生活 经济 发展 社会 历史 文化 科学 技术"
)
CHINESE_WORDS = _CHINESE_WORDS_TEXT.split()
RARE_HANZI = "鹦鹉鳄鱼麒麟饕餮魑魅魍魉蝙蝠蜻蜓蟋蟀鸳鸯琵琶琉璃翡翠玛瑙骆驼髑髅"
JAPANESE = ("こんにちは", "ありがとうございます", "カタカナ", "テストです", "よろしくお願いします")
CHINESE_PUNCTUATION = "，，，。。。！？；：、"

SYSTEM_PROMPTS = (
    "You are a helpful assistant.",
    "You are a senior software engineer. Answer with working code and explain your reasoning briefly.",
    "You are a friendly tutor who explains concepts step by step to a beginner.",
    "你是一个乐于助人的助手，请用中文回答。",
    "Answer concisely. Use markdown lists where they help.",
    "You are an expert data scientist. Be precise and cite assumptions.",
    "You are a translator between English and Chinese.",
)

QUESTION_TEMPLATES = (
    "How do I {verb} a {noun} in {lang}?",
    "Can you explain how the {noun} {noun2} works?",
    "Write a function that can {verb} the {noun} {noun2}.",
    "What is the difference between a {noun} and a {noun2}?",
    "Why does my {noun} {noun2} fail when I {verb} it?",
    "I'm trying to {verb} the {noun}, but it doesn't work. Any ideas?",
    "Please {verb} this {noun} for me:",
    "Is it better to {verb} or to {verb2} the {noun}?",
)
CHINESE_QUESTIONS = (
    "请解释一下{word}和{word2}的区别。",
    "怎么{word}这个{word2}？",
    "为什么我的{word}会出错？",
    "帮我写一个{word}的例子。",
    "{word}是什么意思？",
)
LANGUAGES = ("Python", "Rust", "JavaScript", "C++", "Go", "SQL", "bash")

CODE_LINES = (
    "def {a}_{b}({c}, {d}=None):",
    "    return {a}.{b}({c}) + {n}",
    "    for {c} in range({n}):",
    "        {a}[{c}] = {b}_{d} * {n}.{n}",
    "class {A}{B}({A}):",
    "    if {c} != {d} and not {a}_{b}:",
    '        raise ValueError(f"bad {c}: {{{c}!r}}")',
    "import {a}.{b} as {c}",
    "{a} = {{'{b}': [{n}, {n}, {n}], \"{c}\": ({d}, None)}}  # {a} {b}",
    "    {a}_{b} = lambda {c}: {c} ** {n} // {n}",
    '    print(f"{{{a}}} took {{time.perf_counter() - {b}:.3f}} s")',
    "",
)

# Mean token budgets per message (Qwen2 tokens, before the template's own tokens); draws are
# lognormal with shape SIGMA, so a few conversations run past the usual 2048-token cutoff.
USER_TOKENS = 33
ASSISTANT_TOKENS = 137
SIGMA = 0.8
TURN_WEIGHTS = (30, 25, 16, 12, 9, 8)  # 1..6 turns
# Characters per Qwen2 token for each kind of text, measured on this generator's output.
CHARS_PER_TOKEN = {"en": 3.7, "zh": 1.9, "code": 2.6}


class ChatWriter:
    """Builds conversations from one ``random.Random``; every draw goes through it."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        # One weighted vocabulary, drawn a sentence at a time: common words with Zipf weights,
        # technical words, a few thousand rare made-up words, contractions, numbers, inline code.
        rare = [self._rare_word() for _ in range(3000)]
        numbers = [str(self.rng.randint(0, 10 ** self.rng.randint(1, 5))) for _ in range(500)]
        inline_code = [f"`{self.rng.choice(TECH_WORDS).lower()}_{self._rare_word()}`" for _ in range(300)]
        zipf = [1.0 / rank for rank in range(1, len(COMMON_WORDS) + 1)]
        groups = [
            (COMMON_WORDS, 0.55, zipf),
            (TECH_WORDS, 0.25, None),
            (rare, 0.08, None),
            (CONTRACTIONS, 0.05, None),
            (numbers, 0.04, None),
            (inline_code, 0.03, None),
        ]
        self.words: list[str] = []
        weights: list[float] = []
        for words, share, within in groups:
            within = within or [1.0] * len(words)
            total = sum(within)
            self.words.extend(words)
            weights.extend(share * w / total for w in within)
        self.word_cum_weights = list(itertools.accumulate(weights))
        self.identifiers = rare
        hanzi_groups = [
            (CHINESE_WORDS, 0.78),
            (list(RARE_HANZI), 0.06),
            (JAPANESE, 0.02),
            ([f" {word} " for word in TECH_WORDS], 0.04),
            (list(CHINESE_PUNCTUATION), 0.10),
        ]
        self.chinese_parts = [part for parts, _ in hanzi_groups for part in parts]
        self.chinese_cum_weights = list(
            itertools.accumulate(share / len(parts) for parts, share in hanzi_groups for _ in parts)
        )

    def _rare_word(self) -> str:
        return "".join(self.rng.choice(SYLLABLES) for _ in range(self.rng.randint(2, 4)))

    def _word(self) -> str:
        return self.rng.choices(self.words, cum_weights=self.word_cum_weights)[0]

    def _sentence(self) -> str:
        words = self.rng.choices(self.words, cum_weights=self.word_cum_weights, k=self.rng.randint(5, 24))
        for i in range(2, len(words) - 1):
            if self.rng.random() < 0.08:
                words[i] += ","
        words[0] = words[0][:1].upper() + words[0][1:]
        return " ".join(words) + self.rng.choice("....?!:")

    def english(self, chars: int, markdown: bool) -> str:
        """Prose of about ``chars`` characters; with ``markdown``, headings, lists and bold words."""
        blocks: list[str] = []
        size = 0
        while size < chars:
            roll = self.rng.random() if markdown else 1.0
            if roll < 0.1:
                block = f"### {self._sentence().rstrip('.?!:')}"
            elif roll < 0.35:
                bullet = self.rng.choice(("-", "*", "1."))
                items = [
                    f"{bullet} **{self._word()}**: {self._sentence()}" for _ in range(self.rng.randint(2, 5))
                ]
                block = "\n".join(items)
            else:
                block = " ".join(self._sentence() for _ in range(self.rng.randint(1, 5)))
            blocks.append(block)
            size += len(block) + 2
        return "\n\n".join(blocks)

    def chinese(self, chars: int) -> str:
        """Chinese text of about ``chars`` characters: common words, rare characters, punctuation,
        some Japanese and embedded English words."""
        parts = self.rng.choices(self.chinese_parts, cum_weights=self.chinese_cum_weights, k=chars // 2 + 1)
        return "".join(parts) + "。"

    def code(self, chars: int) -> str:
        """A fenced code block of about ``chars`` characters."""
        lines: list[str] = []
        size = 0
        while size < chars:
            names = self.rng.sample(self.identifiers, 4)
            fields = dict(zip("abcd", names))
            fields.update(A=names[0].capitalize(), B=names[1].capitalize())
            line = self.rng.choice(CODE_LINES)
            while "{n}" in line:
                line = line.replace("{n}", str(self.rng.randint(0, 999)), 1)
            line = line.format(**fields)
            lines.append(line)
            size += len(line) + 1
        language = self.rng.choice(("python", "python", "py", ""))
        return f"```{language}\n" + "\n".join(lines) + "\n```"

    def _tokens(self, mean: int) -> int:
        return max(3, int(self.rng.lognormvariate(0, SIGMA) * mean / math.exp(SIGMA**2 / 2)))

    def question(self, language: str, coding: bool) -> str:
        budget = self._tokens(USER_TOKENS)
        if language == "zh":
            words = {"word": self.rng.choice(CHINESE_WORDS), "word2": self.rng.choice(CHINESE_WORDS)}
            text = self.rng.choice(CHINESE_QUESTIONS).format(**words)
            extra = budget * CHARS_PER_TOKEN["zh"] - len(text)
            if extra > 10:
                text += self.chinese(int(extra))
        else:
            nouns = self.rng.sample(TECH_WORDS, 2)
            verbs = self.rng.sample(VERBS, 2)
            text = self.rng.choice(QUESTION_TEMPLATES).format(
                verb=verbs[0], verb2=verbs[1], noun=nouns[0], noun2=nouns[1], lang=self.rng.choice(LANGUAGES)
            )
            extra = budget * CHARS_PER_TOKEN["en"] - len(text)
            if extra > 40:
                text += " " + self.english(int(extra), markdown=False)
        if coding and self.rng.random() < 0.3:
            text += "\n\n" + self.code(int(self._tokens(USER_TOKENS) * CHARS_PER_TOKEN["code"]))
        return text

    def answer(self, language: str, coding: bool) -> str:
        budget = self._tokens(ASSISTANT_TOKENS)
        code_share = self.rng.uniform(0.3, 0.7) if coding else 0.0
        prose_tokens = budget * (1 - code_share)
        if language == "zh":
            text = self.chinese(int(prose_tokens * CHARS_PER_TOKEN["zh"]))
        elif language == "mixed":
            half = prose_tokens / 2
            text = self.english(int(half * CHARS_PER_TOKEN["en"]), markdown=True)
            text += "\n\n" + self.chinese(int(half * CHARS_PER_TOKEN["zh"]))
        else:
            text = self.english(int(prose_tokens * CHARS_PER_TOKEN["en"]), markdown=True)
        if coding:
            code = self.code(int(budget * code_share * CHARS_PER_TOKEN["code"]))
            text += "\n\n" + code + "\n\n" + self.english(120, markdown=False)
        return text

    def conversation(self) -> dict[str, Any]:
        """One ShareGPT row: ``conversations`` (human/gpt turns) and, for some rows, ``system``."""
        language = self.rng.choices(("en", "zh", "mixed"), (70, 20, 10))[0]
        coding = self.rng.random() < 0.3
        turns = self.rng.choices(range(1, 7), TURN_WEIGHTS)[0]
        messages = []
        for _ in range(turns):
            messages.append({"from": "human", "value": self.question(language, coding)})
            messages.append({"from": "gpt", "value": self.answer(language, coding)})
        row: dict[str, Any] = {"conversations": messages}
        if self.rng.random() < 0.4:
            row["system"] = self.rng.choice(SYSTEM_PROMPTS)
        return row


def generate_conversations(samples: int, seed: int = 0) -> list[dict[str, Any]]:
    """``samples`` ShareGPT rows; the same arguments always give the same rows."""
    writer = ChatWriter(seed)
    return [writer.conversation() for _ in range(samples)]


def write_dataset(out_dir: Path, samples: int, seed: int = 0, jsonl: bool = False) -> Path:
    """Write ``samples`` rows as the ``synthetic_chat`` dataset in ``out_dir``; returns ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = generate_conversations(samples, seed)
    file_name = f"{DATASET_NAME}.jsonl" if jsonl else f"{DATASET_NAME}.json"
    with open(out_dir / file_name, "w", encoding="utf-8") as handle:
        if jsonl:
            handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        else:
            json.dump(rows, handle, ensure_ascii=False, indent=1)
    info = {
        DATASET_NAME: {
            "file_name": file_name,
            "formatting": "sharegpt",
            "columns": {"messages": "conversations", "system": "system"},
        }
    }
    (out_dir / "dataset_info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return out_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="directory for the data file and dataset_info.json")
    parser.add_argument("--samples", type=int, default=20_000, help="number of conversations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jsonl", action="store_true", help="write JSON lines instead of one JSON array")
    options = parser.parse_args()
    write_dataset(options.out_dir, options.samples, options.seed, options.jsonl)
    print(f"wrote {options.samples} conversations to {options.out_dir} (dataset {DATASET_NAME!r})")


if __name__ == "__main__":
    main()
