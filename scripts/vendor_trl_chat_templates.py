"""Copy TRL's training chat templates into fastsft, with the index that finds them.

TRL (``trl/chat_templates/``, Apache-2.0) ships the original chat templates of about 35 model
families and, for most, a training version with ``{% generation %}`` markers around the assistant
output; ``SFTTrainer(assistant_only_loss=True)`` swaps the training version in when the
tokenizer's template equals the original exactly (``trl.chat_template_utils.get_training_chat_template``).
fastsft's chat-template mode does the same without importing TRL: this script copies every
``NAME_training.jinja`` into ``fastsft/assets/trl_chat_templates/`` and writes ``index.json``,
the SHA-256 of each original's text to its ``NAME``. Run it with the TRL the project tests
against; ``tests/test_chat_template_mode.py`` checks the copies against the installed TRL::

    python scripts/vendor_trl_chat_templates.py
"""

from __future__ import annotations

import hashlib
import json
import shutil
from importlib.metadata import version
from pathlib import Path

import trl

REPO = Path(__file__).resolve().parent.parent
TARGET = REPO / "fastsft" / "assets" / "trl_chat_templates"


def main() -> None:
    source = Path(trl.__file__).parent / "chat_templates"
    TARGET.mkdir(parents=True, exist_ok=True)
    for old in TARGET.glob("*.jinja"):
        old.unlink()
    index = {}
    for training in sorted(source.glob("*_training.jinja")):
        name = training.name.removesuffix("_training.jinja")
        original = source / f"{name}.jinja"
        if not original.is_file():
            continue
        shutil.copyfile(training, TARGET / training.name)
        # hashed as TRL compares it: the text read with universal newlines
        text = original.read_text(encoding="utf-8")
        index[hashlib.sha256(text.encode("utf-8")).hexdigest()] = name
    record = {"trl": version("trl"), "license": "Apache-2.0 (TRL, huggingface/trl)", "originals": index}
    (TARGET / "index.json").write_text(json.dumps(record, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"{len(index)} training templates from TRL {version('trl')} in {TARGET}")


if __name__ == "__main__":
    main()
