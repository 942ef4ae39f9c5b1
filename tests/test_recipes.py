"""Every recipe of docs/collators.md, followed as written, trains the tiny model and gets every sequence.

Each test builds fastsft's outputs with ``fastsft preprocess`` (the five layouts), trains a few
steps of the tiny random-init Qwen2 (``examples/tiny/model/config.json``) on their first rows
through one recipe (HF ``Trainer``, TRL ``SFTTrainer``, a plain torch loop), and records every
batch at the model's ``forward``. The sequences the model saw (split by ``cu_seq_lens_q``, else
by ``position_ids`` restarts under the attention mask) must be exactly the sequences of the rows
trained, token for token, and those must be samples of the unpacked output. The LLaMA-Factory
recipe is checked against ``tests/data/lf_tokenized_path_golden.json``, written by LLaMA-Factory
0.9.5 itself (``scripts/make_lf_tokenized_path_golden.py``).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from datasets import load_from_disk
from torch.utils.data import DataLoader
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

from fastsft import IGNORE_INDEX
from fastsft.cli import main as fastsft_main
from fastsft.collators import PaddingCollator, TokenBudgetBatchSampler, VarlenCollator
from fastsft.errors import DataError
from fastsft.integrations import trl_inputs, use_token_budget
from fastsft.train.attention import register_varlen_attention

REPO = Path(__file__).resolve().parent.parent
GOLDEN = REPO / "tests" / "data" / "lf_tokenized_path_golden.json"
TOKENIZER = REPO / "examples" / "tiny" / "tokenizer"
MODEL_CONFIG = REPO / "examples" / "tiny" / "model"
PAD_ID = 1451  # the qwen template's pad after fixing the tiny tokenizer (<|im_end|>)
LAYOUTS = {
    "unpacked": [],
    "packing": ["--packing"],
    "neat_packing": ["--neat-packing"],
    "bfd": ["--packing", "--packing-strategy", "bfd"],
    "neat_bfd": ["--neat-packing", "--packing-strategy", "bfd"],
}
CUTOFF_LEN = 2048  # packed rows longer than TRL's default max_length (1024): nothing may cut them
ROWS = {"unpacked": 8}  # rows trained per layout (packed rows hold about 14 samples each)
PACKED_ROWS = 4

Sequence = tuple[tuple[int, ...], tuple[int, ...]]  # input ids, labels after the first


def preprocess(output: Path, flags: list[str], cutoff_len: int) -> Path:
    argv = [
        "preprocess",
        "--dataset",
        "tiny_sharegpt",
        "--dataset-dir",
        str(REPO / "examples" / "tiny" / "data"),
        "--template",
        "qwen",
        "--tokenizer",
        str(TOKENIZER),
        "--cutoff-len",
        str(cutoff_len),
        "--output",
        str(output),
        "--quiet",
        *flags,
    ]
    assert fastsft_main(argv) == 0
    return output


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Any:
    """One torch thread: on a shared 2-core CI runner, more threads spin against each other (10x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("recipes")
    return {name: preprocess(root / name, flags, CUTOFF_LEN) for name, flags in LAYOUTS.items()}


def train_rows(outputs: dict[str, Path], layout: str) -> Any:
    split = load_from_disk(str(outputs[layout]))["train"]
    return split.select(range(ROWS.get(layout, PACKED_ROWS)))


def row_sequences(row: dict[str, Any]) -> list[Sequence]:
    """The samples a saved row holds: split at position id 0, without padding (mask 0 or lone pad tokens)."""
    ids, labels = list(row["input_ids"]), list(row["labels"])
    mask = row.get("attention_mask") or [1] * len(ids)
    positions = row.get("position_ids") or list(range(len(ids)))
    keep = [i for i, m in enumerate(mask) if m]
    starts = [k for k, i in enumerate(keep) if positions[i] == 0 or k == 0]
    sequences = []
    for start, end in itertools.pairwise([*starts, len(keep)]):
        span = keep[start:end]
        seq_ids = tuple(ids[i] for i in span)
        if seq_ids == (PAD_ID,) and labels[span[0]] == IGNORE_INDEX:  # LLaMA-Factory's plain padding
            continue
        sequences.append((seq_ids, tuple(labels[i] for i in span[1:])))
    return sequences


def expected_sequences(rows: Any) -> Counter:
    return Counter(seq for row in rows for seq in row_sequences(row))


def is_padding(sequence: Sequence) -> bool:
    ids, labels = sequence
    return set(ids) == {PAD_ID} and set(labels) <= {IGNORE_INDEX}


def seen_sequences(batches: list[dict[str, Any]]) -> Counter:
    """Sequences the model received: by ``cu_seq_lens_q`` when given, else by mask and position restarts."""
    seen: Counter = Counter()
    for batch in batches:
        ids, labels = batch["input_ids"].tolist(), batch["labels"].tolist()
        if batch.get("cu_seq_lens_q") is not None:
            assert len(ids) == 1
            bounds = batch["cu_seq_lens_q"].tolist()
            pieces = [(0, start, end) for start, end in itertools.pairwise(bounds)]
        else:
            pieces = []
            mask = batch["attention_mask"]
            positions = batch.get("position_ids")
            for r in range(len(ids)):
                keep = [i for i in range(len(ids[r])) if mask[r][i]]
                assert keep == list(range(keep[0], keep[-1] + 1)), "padding inside a row"
                starts = [i for i in keep if i == keep[0] or (positions is not None and positions[r][i] == 0)]
                pieces += [(r, s, e) for s, e in itertools.pairwise([*starts, keep[-1] + 1])]
        for r, start, end in pieces:
            sequence = (tuple(ids[r][start:end]), tuple(labels[r][start + 1 : end]))
            if not is_padding(sequence):
                seen[sequence] += 1
    return seen


class Recorder:
    """A forward pre-hook keeping every batch the model receives."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.batches: list[dict[str, Any]] = []
        model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        self.batches.append({key: value for key, value in kwargs.items() if torch.is_tensor(value)})


def tiny_model(attn_implementation: str) -> torch.nn.Module:
    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(MODEL_CONFIG)
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)


def trainer_args(output_dir: Path, **extra: Any) -> dict[str, Any]:
    """Few, fast CPU steps (TRL's bf16 and activation checkpointing defaults are off: fp32 on CPU is faster)."""
    return {
        "output_dir": str(output_dir),
        "per_device_train_batch_size": 2,
        "num_train_epochs": 1,
        "report_to": "none",
        "save_strategy": "no",
        "use_cpu": True,
        "seed": 0,
        "disable_tqdm": True,
        "bf16": False,
        "gradient_checkpointing": False,
        **extra,
    }


@pytest.fixture(scope="module")
def unpacked_samples(outputs: dict[str, Path]) -> Counter:
    return expected_sequences(load_from_disk(str(outputs["unpacked"]))["train"])


def check_every_sequence(seen: Counter, rows: Any, unpacked_samples: Counter) -> None:
    expected = expected_sequences(rows)
    assert sum(expected.values()) >= len(rows)
    assert not expected - unpacked_samples, "a packed row holds a sequence that is not a sample"
    assert seen == expected


# ---------------------------------------------------------------- HF Trainer


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_hf_trainer_recipe(
    layout: str, outputs: dict[str, Path], unpacked_samples: Counter, tmp_path: Path
) -> None:
    rows = train_rows(outputs, layout)
    model = tiny_model(register_varlen_attention())
    model.config.use_cache = False
    recorder = Recorder(model)
    trainer = Trainer(
        model=model,
        args=TrainingArguments(**trainer_args(tmp_path)),
        train_dataset=rows,
        data_collator=VarlenCollator(),
    )
    result = trainer.train()
    assert np.isfinite(result.training_loss)
    check_every_sequence(seen_sequences(recorder.batches), rows, unpacked_samples)


def test_hf_trainer_with_padding_collator(
    outputs: dict[str, Path], unpacked_samples: Counter, tmp_path: Path
) -> None:
    rows = train_rows(outputs, "unpacked")
    model = tiny_model("sdpa")
    recorder = Recorder(model)
    Trainer(
        model=model,
        args=TrainingArguments(**trainer_args(tmp_path)),
        train_dataset=rows,
        data_collator=PaddingCollator(pad_token_id=PAD_ID, pad_to_multiple_of=8),
    ).train()
    check_every_sequence(seen_sequences(recorder.batches), rows, unpacked_samples)


@pytest.mark.parametrize("trainer_kind", ["hf", "trl"])
def test_token_budget_sampler_drives_trainers(
    trainer_kind: str, outputs: dict[str, Path], unpacked_samples: Counter, tmp_path: Path
) -> None:
    rows = load_from_disk(str(outputs["unpacked"]))["train"].select(range(24))
    lengths = [len(ids) for ids in rows["input_ids"]]
    # 7 batches in epoch 0, 8 in epoch 1: Trainer runs one count per epoch, so epoch 0's is split to 8
    sampler = TokenBudgetBatchSampler(lengths, max_tokens=600, seed=0, megabatch_size=8)
    model = tiny_model(register_varlen_attention())
    model.config.use_cache = False
    recorder = Recorder(model)
    if trainer_kind == "hf":
        trainer = Trainer(
            model=model,
            args=TrainingArguments(**trainer_args(tmp_path, num_train_epochs=2)),
            train_dataset=rows,
            data_collator=VarlenCollator(),
        )
    else:
        from trl import SFTConfig, SFTTrainer

        inputs = trl_inputs(rows, AutoTokenizer.from_pretrained(TOKENIZER), template="qwen")
        trainer = SFTTrainer(
            model=model,
            args=SFTConfig(**trainer_args(tmp_path, num_train_epochs=2), **inputs.config_kwargs),
            **inputs.trainer_kwargs,
        )
    use_token_budget(trainer, sampler)
    trainer.train()
    assert [sampler.batches_in_epoch(0), sampler.batches_in_epoch(1)] == [7, 8]
    assert len(recorder.batches) == 16 == trainer.state.global_step
    for batch in recorder.batches:
        assert batch["input_ids"].numel() <= 600 or len(batch["cu_seq_lens_q"]) == 2
    epochs = [recorder.batches[:8], recorder.batches[8:]]
    for epoch in epochs:
        check_every_sequence(seen_sequences(epoch), rows, unpacked_samples)
    orders = [[tuple(batch["input_ids"][0, :4].tolist()) for batch in epoch] for epoch in epochs]
    assert orders[0] != orders[1]  # set_epoch reached the sampler: a new order each epoch


# ---------------------------------------------------------------- TRL SFTTrainer


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_trl_sft_trainer_recipe(
    layout: str, outputs: dict[str, Path], unpacked_samples: Counter, tmp_path: Path
) -> None:
    from trl import SFTConfig, SFTTrainer

    rows = train_rows(outputs, layout)
    if layout != "unpacked":
        assert max(len(ids) for ids in rows["input_ids"]) > 1024  # TRL's default max_length would cut
    model = tiny_model(register_varlen_attention())
    model.config.use_cache = False
    eos_before = model.config.eos_token_id
    recorder = Recorder(model)
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    inputs = trl_inputs(rows, tokenizer, template="qwen")
    trainer = SFTTrainer(
        model=model, args=SFTConfig(**trainer_args(tmp_path), **inputs.config_kwargs), **inputs.trainer_kwargs
    )
    result = trainer.train()
    assert np.isfinite(result.training_loss)
    assert model.config.eos_token_id == eos_before
    assert tokenizer.eos_token == "</s>"  # the caller's tokenizer is left as it was
    check_every_sequence(seen_sequences(recorder.batches), rows, unpacked_samples)


def test_trl_own_padding_free_collator_reads_seq_lengths(
    outputs: dict[str, Path], unpacked_samples: Counter, tmp_path: Path
) -> None:
    from trl import SFTConfig, SFTTrainer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    rows = train_rows(outputs, "packing")
    model = tiny_model(register_varlen_attention())
    model.config.use_cache = False
    recorder = Recorder(model)
    collator = DataCollatorForLanguageModeling(pad_token_id=PAD_ID, padding_free=True)
    inputs = trl_inputs(rows, AutoTokenizer.from_pretrained(TOKENIZER), template="qwen", collator=collator)
    SFTTrainer(
        model=model, args=SFTConfig(**trainer_args(tmp_path), **inputs.config_kwargs), **inputs.trainer_kwargs
    ).train()
    check_every_sequence(seen_sequences(recorder.batches), rows, unpacked_samples)


def test_trl_refuses_raw_packed_rows_loudly(outputs: dict[str, Path], tmp_path: Path) -> None:
    """Without ``trl_inputs``, packed rows never train silently without their boundaries."""
    from trl import SFTConfig, SFTTrainer

    rows = train_rows(outputs, "neat_bfd")
    model = tiny_model(register_varlen_attention())
    args = SFTConfig(**trainer_args(tmp_path), dataset_kwargs={"skip_prepare_dataset": True})
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    with pytest.raises(ValueError, match="vision-related"):  # the media columns stop TRL
        SFTTrainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer)
    # Media dropped by hand and position_ids lost, while the neat mask still reaches the collator.
    args.remove_unused_columns = False
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=rows.select_columns(["input_ids", "labels", "attention_mask"]),
        processing_class=tokenizer,
        data_collator=VarlenCollator(),
    )
    with pytest.raises(DataError, match="remove_unused_columns"):
        trainer.train()


# ---------------------------------------------------------------- plain torch loop


@pytest.mark.parametrize("layout", ["unpacked", "packing", "neat_bfd"])
def test_plain_torch_loop_recipe(layout: str, outputs: dict[str, Path], unpacked_samples: Counter) -> None:
    rows = train_rows(outputs, layout)
    dataset = rows.with_format("numpy")
    lengths = [len(ids) for ids in rows["input_ids"]]
    sampler = TokenBudgetBatchSampler(lengths, max_tokens=4096, seed=0)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=VarlenCollator())
    model = tiny_model(register_varlen_attention())
    model.config.use_cache = False
    recorder = Recorder(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for batch in loader:
        labelled = int((batch["labels"][..., 1:] != IGNORE_INDEX).sum())
        loss = model(**batch, num_items_in_batch=labelled).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        assert torch.isfinite(loss)
    check_every_sequence(seen_sequences(recorder.batches), rows, unpacked_samples)


# ---------------------------------------------------------------- LLaMA-Factory via tokenized_path

LF = json.loads(GOLDEN.read_text(encoding="utf-8"))


def lf_fingerprint(rows: list[dict]) -> str:
    """The fingerprint ``scripts/make_lf_tokenized_path_golden.py`` records for the rows it trained."""
    digest = hashlib.sha256()
    for row in rows:
        for key in ("input_ids", "labels", "position_ids", "attention_mask"):
            digest.update(json.dumps(row.get(key)).encode())
    return digest.hexdigest()


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_llamafactory_trains_every_layout_via_tokenized_path(
    layout: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    recorded = LF["layouts"][layout]
    assert recorded["flags"] == LAYOUTS[layout]
    output = preprocess(tmp_path_factory.mktemp("lf") / layout, LAYOUTS[layout], LF["cutoff_len"])
    rows = load_from_disk(str(output))["train"].select(range(LF["rows_trained"]))
    assert lf_fingerprint([dict(row) for row in rows]) == recorded["rows_fingerprint"], (
        "the output changed since the golden was made: rerun scripts/make_lf_tokenized_path_golden.py"
    )
    assert recorded["trained"], recorded.get("error")
    batches = []
    for batch in recorded["batches"]:
        tensors = {key: torch.tensor(value) for key, value in batch.items() if isinstance(value, list)}
        if "block_diagonal_mask" in batch:  # neat packing: LLaMA-Factory's 4-D mask, checked by the script
            assert batch["block_diagonal_mask"]
            tensors["attention_mask"] = torch.ones_like(tensors["input_ids"])
        batches.append(tensors)
    assert seen_sequences(batches) == expected_sequences(rows)
