"""Record LLaMA-Factory 0.9.5's SFT collation as goldens for ``fastsft.collators.PaddingCollator``.

Runs LLaMA-Factory's own ``SFTDataCollatorWith4DAttentionMask``, configured as its SFT workflow
configures it (``train/sft/workflow.py``: ``pad_to_multiple_of=8`` when training, ``None`` for
prediction; ``label_pad_token_id=IGNORE_INDEX`` unless ``ignore_pad_token_for_loss`` is off,
in which case the tokenizer's pad id), on a few fixed batches, and writes inputs and outputs
to ``tests/data/collator_goldens.json``. LLaMA-Factory is not installed in CI, so the test
compares against this file. Run it with LLaMA-Factory's interpreter::

    /work/venv-lf/bin/python scripts/make_collator_goldens.py
"""

from __future__ import annotations

import importlib.machinery
import json
import random
import sys
import types
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
TOKENIZER_DIR = REPO / "examples" / "tiny" / "tokenizer"
OUTPUT = REPO / "tests" / "data" / "collator_goldens.json"
IGNORE_INDEX = -100


def hide_broken_media_packages() -> None:
    """Keep torchvision/torchaudio out of the import graph.

    In the reference venv they were built against another torch and fail to load; LLaMA-Factory's
    ``mm_plugin`` imports torchaudio unconditionally, though text collation never uses it.
    """
    stub = types.ModuleType("torchaudio")
    stub.__spec__ = importlib.machinery.ModuleSpec("torchaudio", None)
    sys.modules["torchaudio"] = stub
    import transformers.utils
    import transformers.utils.import_utils

    for name in ("is_torchvision_available", "is_torchaudio_available"):
        setattr(transformers.utils.import_utils, name, lambda: False)
        setattr(transformers.utils, name, lambda: False)


def random_sample(rng: random.Random, vocab: int, length: int, with_mask: bool) -> dict[str, list[int]]:
    """One unpacked SFT sample as LLaMA-Factory's supervised processor emits it."""
    input_ids = [rng.randrange(vocab) for _ in range(length)]
    prompt_len = rng.randrange(length)
    labels = [IGNORE_INDEX] * prompt_len + input_ids[prompt_len:]
    sample = {"input_ids": input_ids, "labels": labels}
    if with_mask:
        sample["attention_mask"] = [1] * length
    return sample


def neat_packed_rows(rng: random.Random, vocab: int, row_len: int, pad_id: int) -> list[dict[str, list[int]]]:
    """Two rows shaped like LLaMA-Factory's neat_packing output (mask numbered 1..k, 0 on padding)."""
    rows = []
    for _ in range(2):
        input_ids, labels, mask, position_ids = [], [], [], []
        seq = 0
        while True:
            length = rng.randrange(2, 9)
            if len(input_ids) + length > row_len - 2:
                break
            seq += 1
            ids = [rng.randrange(vocab) for _ in range(length)]
            input_ids += ids
            labels += [IGNORE_INDEX, *ids[1:]]
            mask += [seq] * length
            position_ids += list(range(length))
        pad = row_len - len(input_ids)
        rows.append(
            {
                "input_ids": input_ids + [pad_id] * pad,
                "attention_mask": mask + [0] * pad,
                "position_ids": position_ids + [0] * pad,
                "labels": labels + [IGNORE_INDEX] * pad,
            }
        )
    return rows


def to_jsonable(value: object) -> object:
    if torch.is_tensor(value):
        return {"dtype": str(value.dtype).removeprefix("torch."), "data": value.tolist()}
    raise TypeError(f"unexpected collator output {type(value)}")


def main() -> None:
    hide_broken_media_packages()
    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.data.collator import SFTDataCollatorWith4DAttentionMask
    from llamafactory.extras.constants import IGNORE_INDEX as LF_IGNORE_INDEX
    from llamafactory.hparams import DataArguments
    from transformers import AutoTokenizer

    assert LF_IGNORE_INDEX == IGNORE_INDEX
    rng = random.Random(20240611)
    tokenizer = AutoTokenizer.from_pretrained(str(TOKENIZER_DIR), padding_side="right")
    template = get_template_and_fix_tokenizer(tokenizer, DataArguments(template="qwen"))
    vocab = len(tokenizer)
    pad_id = tokenizer.pad_token_id

    def batch(lengths: list[int], with_mask: bool = True) -> list[dict[str, list[int]]]:
        return [random_sample(rng, vocab, length, with_mask) for length in lengths]

    cases = [
        # name, features, do_train, ignore_pad_token_for_loss, padding_side, numpy format
        ("train_lists", batch([5, 13, 9, 1]), True, True, "right", False),
        ("train_longest_multiple_of_8", batch([16, 3, 7]), True, True, "right", False),
        ("predict_no_multiple", batch([4, 11, 6]), False, True, "right", False),
        ("train_left_padding", batch([6, 2, 10]), True, True, "left", False),
        ("train_without_attention_mask", batch([3, 12], with_mask=False), True, True, "right", False),
        ("train_pad_labels_with_pad_id", batch([7, 2, 5]), True, False, "right", False),
        ("train_numpy_format", batch([9, 4, 14]), True, True, "right", True),
        ("train_single_sample", batch([21]), True, True, "right", False),
        ("train_neat_packed_rows", neat_packed_rows(rng, vocab, 32, pad_id), True, True, "right", False),
    ]

    goldens = []
    for name, features, do_train, ignore_pad, padding_side, numpy_format in cases:
        tokenizer.padding_side = padding_side
        pad_to_multiple_of = 8 if do_train else None
        label_pad_token_id = IGNORE_INDEX if ignore_pad else pad_id
        collator = SFTDataCollatorWith4DAttentionMask(
            template=template,
            model=None,
            pad_to_multiple_of=pad_to_multiple_of,
            label_pad_token_id=label_pad_token_id,
            block_diag_attn=False,
            neat_packing=False,
            attn_implementation="sdpa",
            compute_dtype=torch.float32,
            tokenizer=tokenizer,
        )
        lf_features = [
            {k: np.asarray(v, dtype=np.int64) if numpy_format else list(v) for k, v in f.items()}
            for f in features
        ]
        output = collator(lf_features)
        goldens.append(
            {
                "name": name,
                "pad_token_id": pad_id,
                "pad_to_multiple_of": pad_to_multiple_of,
                "label_pad_token_id": label_pad_token_id,
                "padding_side": padding_side,
                "numpy_format": numpy_format,
                "features": features,
                "expected": {k: to_jsonable(v) for k, v in output.items() if v is not None},
            }
        )

    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(json.dumps({"llamafactory": "0.9.5", "cases": goldens}, indent=1) + "\n")
    print(f"wrote {len(goldens)} cases to {OUTPUT}")


if __name__ == "__main__":
    main()
