"""When the parts of one ``fastsft preprocess`` run start and end (the timeline in ``docs/benchmarks.md``).

    python benchmarks/command_timeline.py preprocess --dataset synthetic_chat --dataset-dir DIR \\
        --tokenizer PATH --template qwen --cutoff-len 2048 --quiet --overwrite --output OUT

Runs the command in this interpreter with timers wrapped around fastokens' build, the encoder's
render and encode halves and ``build_to_disk``, and prints each stamp (seconds since this script
started, and the thread) to stderr. Run it twice: the first run saves the tokenizer spec.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any

START = time.perf_counter()


def stamp(event: str) -> None:
    print(
        f"{time.perf_counter() - START:7.3f}  {threading.current_thread().name:<16} {event}", file=sys.stderr
    )


def around(owner: Any, name: str, before: str, after: str, times: int = 1) -> None:
    """Stamp ``before`` and ``after`` the first ``times`` calls of ``owner.name``."""
    function: Callable[..., Any] = getattr(owner, name)
    calls = [0]

    def timed(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] <= times:
            stamp(before.format(calls[0]))
        result = function(*args, **kwargs)
        if calls[0] <= times:
            stamp(after.format(calls[0]))
        return result

    setattr(owner, name, timed)


def main() -> int:
    stamp("imports start")
    import fastsft.cli as cli
    import fastsft.data.pipeline as pipeline
    import fastsft.data.rows.encoder as encoder
    import fastsft.tokenizer.encoders as encoders

    stamp("imports done (the command imports less before the build starts)")
    around(encoders.FastokensEncoder, "_build", "fastokens build starts", "fastokens build done")
    around(encoder.Encoder, "render_batch", "render batch {}", "rendered batch {}")
    around(encoder.Encoder, "encode_rendered", "encode batch {}", "encoded batch {}", times=2)
    around(pipeline, "build_to_disk", "build_to_disk starts", "build_to_disk done")
    status = cli.main(sys.argv[1:])
    stamp(f"exit {status}")
    return status


if __name__ == "__main__":
    sys.exit(main())
