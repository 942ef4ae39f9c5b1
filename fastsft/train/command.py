"""``fastsft train CONFIG [key=value ...]``: the config read, the run, and the exit status."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from fastsft.errors import FastSFTError, Terminated
from fastsft.train.config import add_train_arguments, load_config
from fastsft.train.launch import device_count, launch_torchrun, processes_per_node, torchrun_command
from fastsft.train.logs import say
from fastsft.train.workflow import train

__all__ = ["interrupted_message", "run_train"]


def run_train(args: argparse.Namespace | Sequence[str]) -> int:
    """Entry point of ``fastsft train``: parsed arguments (from the CLI) or an argv list."""
    if not isinstance(args, argparse.Namespace):
        parser = argparse.ArgumentParser(prog="fastsft train")
        add_train_arguments(parser)
        args = parser.parse_args(list(args))
    config = load_config(args.config, args.overrides)  # a bad config fails once, before any launch
    devices = device_count()
    command = torchrun_command([args.config, *args.overrides], os.environ, devices)
    if command is not None:
        say(
            f"{devices} devices visible{' (FORCE_TORCHRUN)' if devices < 2 else ''}: training in "
            f"{processes_per_node(os.environ, devices)} processes "
            "per node under torchrun, as llamafactory-cli train does (NPROC_PER_NODE, NNODES, NODE_RANK, "
            "MASTER_ADDR, MASTER_PORT choose)"
        )
        return launch_torchrun(command, os.environ)
    try:
        train(config)
    except FastSFTError:
        print(
            file=sys.stderr, flush=True
        )  # the progress bar has no newline: the error gets a line of its own
        raise
    except KeyboardInterrupt as interrupt:
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not cut the message short
            signal.signal(sig, signal.SIG_IGN)
        if hasattr(signal, "SIGCHLD"):  # DataLoader workers stopped too: torch's check would raise
            signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # not SIG_DFL: one may be pending
        terminated = isinstance(interrupt, Terminated)
        if int(os.environ.get("RANK", "0")) == 0:
            message = interrupted_message(Path(config.output_dir), "SIGTERM" if terminated else "interrupted")
            print(
                f"\nfastsft train: {message}", file=sys.stderr, flush=True
            )  # the progress bar has no newline
        return Terminated.exit_code if terminated else 130
    finally:
        _close_process_group()
    return 0


def _close_process_group() -> None:
    """Tear down torch.distributed before exit: a gloo group left to the interpreter's shutdown
    can abort the process ("terminate called without an active exception") after a good run."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def interrupted_message(output_dir: Path, what: str = "interrupted") -> str:
    """The one line ``fastsft train`` prints on Ctrl-C or SIGTERM: the last complete checkpoint to resume from."""
    from fastsft.train.checkpoints import newest_intact

    last = newest_intact(output_dir)
    if last is None:
        return f"{what}; no checkpoint was saved in {output_dir}"
    return f"{what}; last checkpoint: {last} (rerun with resume_from_checkpoint=true to continue)"
