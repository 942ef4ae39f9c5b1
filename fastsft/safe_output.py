"""Writing an output folder without ever losing data: one run per path, a staged result, a safe swap.

Beside ``OUTPUT`` a run keeps::

    .OUTPUT.lock            flock held while a run writes OUTPUT (holds its pid; removed at the end)
    .OUTPUT.tmp-XXXXXXXX/   the run's work: owner.json (pid, host), rows.arrow, spill/, dataset/,
                            and previous/ for the moment the old output is swapped out
    OUTPUT/                 the result, moved into place only when complete
    OUTPUT/fastsft_output.json   the marker: what made the folder (fastsft.data.store.provenance)

What it guarantees:

* ``check_output_path``: OUTPUT is never an input (a dataset file, ``dataset_dir``, the tokenizer
  folder), inside one or around one, and never the working directory or one of its parents.
* An existing OUTPUT is replaced only when asked (``overwrite``) and only when it carries the
  marker, so it is a previous fastsft output and not someone's folder.
* Two runs to one OUTPUT cannot both proceed: the second finds the lock held and stops at once.
* The result is renamed into place with a no-replace rename (``renameat2(RENAME_NOREPLACE)``
  on Linux), so a folder that appears at OUTPUT during the run is never replaced; the previous
  output is moved aside first and put back if the swap cannot finish.
* On any error or signal the temporary folder is removed (the caller turns SIGTERM into an
  exception), ``owner.json`` last; the swap (old output to ``previous/``, ``dataset/`` to OUTPUT,
  ``previous/`` to ``obsolete/``) runs with SIGINT and SIGTERM held, so a signal lands before it
  or after it, and ``interrupted_outcome`` says which. A run killed outright (SIGKILL), or a
  second signal during the cleanup, leaves its folder with its pid in ``owner.json``; the next
  run on OUTPUT removes it, with a notice, after putting back a previous output only when the
  kill came between the swap's first two renames (``previous/`` beside a ``dataset/`` not yet
  moved); a ``previous/`` without ``dataset/``, or an ``obsolete/``, was replaced for good.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import glob
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from fastsft.errors import ConfigError, FastSFTError

__all__ = [
    "MARKER",
    "OutputError",
    "StagedOutput",
    "check_output_path",
    "check_replaceable",
    "clear_outcomes",
    "interrupted_outcome",
    "is_fastsft_output",
    "os_error_line",
    "output_lock",
    "rename_noreplace",
    "staged_output",
    "write_json_atomically",
]

MARKER = "fastsft_output.json"
OWNER_FILE = "owner.json"
STAGED = "dataset"  # the new output, until the swap renames it into place
PREVIOUS = "previous"  # where a replaced output waits during the swap
OBSOLETE = "obsolete"  # the replaced output once the new one is in place, to be deleted
DEFERRED = (signal.SIGINT, signal.SIGTERM)  # held during the swap


class OutputError(FastSFTError):
    """The output could not be written (lock held, a race, an OS error); nothing was replaced."""


def is_fastsft_output(path: Path) -> bool:
    """Whether ``path`` is a folder fastsft wrote (it holds the marker)."""
    return (path / MARKER).is_file()


def check_output_path(output: Path, inputs: Iterable[Path], *, what: str = "--output") -> None:
    """Refuse an output that is, contains or lies inside an input, or holds the working directory."""
    target = output.resolve()
    cwd = Path.cwd().resolve()
    if target == cwd or target in cwd.parents:
        raise ConfigError(f"{what} {output} is the working directory or holds it; choose a new folder")
    sources = [(path, path.resolve()) for path in inputs]
    for path, source in sources:
        if target == source:
            raise ConfigError(f"{what} {output} is an input ({path}); choose a new folder")
    for path, source in sources:
        if source.is_relative_to(target):
            raise ConfigError(f"{what} {output} holds an input ({path}); choose a new folder")
        if source.is_dir() and target.is_relative_to(source):
            raise ConfigError(
                f"{what} {output} lies inside an input folder ({path}); choose a folder outside it"
            )


SPACE_HINT = "a run needs about the output's size free beside the output, twice with --overwrite"


def os_error_line(err: OSError, action: str, *, what: str = "--output", space_hint: str = SPACE_HINT) -> str:
    """An ``OSError`` as one line: what was being done, the path, the cause, and a hint where there is one
    (``what`` names the output option, ``space_hint`` says what space a run needs)."""
    path = f" {os.fsdecode(err.filename)}:" if err.filename else ""
    cause = err.strerror or str(err)
    hint = {
        errno.ENOSPC: f" ({space_hint})",
        errno.EDQUOT: f" ({space_hint})",
        errno.EROFS: f" (choose an {what} on a writable file system)",
        errno.EACCES: " (check the folder's permissions)",
        errno.EPERM: " (check the folder's permissions)",
    }.get(err.errno or 0, "")
    return f"cannot {action}:{path} {cause}{hint}"


class StagedOutput:
    """A run's temporary folder beside ``output``; ``commit`` moves its ``dataset`` folder into place."""

    def __init__(self, output: Path, workdir: Path, replaces: os.stat_result | None) -> None:
        self.output = output
        self.workdir = workdir
        self.dataset = workdir / STAGED
        self._replaces = replaces  # the previous output found at the start (with overwrite), if any
        self.keep = False  # set when the temporary folder holds the previous output and must stay

    def commit(self, marker: dict[str, Any]) -> None:
        """Write ``marker`` into the staged dataset, then swap it in; never replaces what was not expected.

        SIGINT and SIGTERM wait until the swap is over, so a signal never leaves the previous
        output moved aside; a run killed outright there leaves it in ``previous`` beside the
        staged ``dataset``, which the next run puts back (``_remove_stale_workdirs``). Once the
        new output is in place the previous one is renamed ``obsolete`` (a ``previous`` without a
        ``dataset`` beside it is obsolete too: killed between the two renames).
        """
        write_json_atomically(self.dataset / MARKER, marker)
        previous = self.workdir / PREVIOUS
        with _signals_deferred():
            if self._replaces is not None:
                self._move_previous_aside(previous)
            try:
                rename_noreplace(self.dataset, self.output)
            except FileExistsError:
                if previous.exists() and not _put_back(previous, self.output):
                    self.keep = True
                    raise OutputError(
                        f"{self.output} appeared while the previous output was being replaced; "
                        f"the previous output is kept in {previous}"
                    ) from None
                raise OutputError(
                    f"{self.output} appeared during the run; it was left untouched and this run's result discarded"
                ) from None
            _published.append(self.output)
            if previous.exists():  # replaced for good: never to be put back
                os.rename(previous, self.workdir / OBSOLETE)

    def _move_previous_aside(self, previous: Path) -> None:
        try:
            now = self.output.lstat()
        except FileNotFoundError:
            return  # removed during the run: nothing to replace
        expected = self._replaces
        assert expected is not None
        if not os.path.samestat(now, expected) or not is_fastsft_output(self.output):
            raise OutputError(f"{self.output} was replaced during the run; it was left untouched")
        os.rename(self.output, previous)


def _put_back(previous: Path, output: Path) -> bool:
    try:
        rename_noreplace(previous, output)
    except OSError:
        return False
    return True


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM that arrive in the block are handled when it ends (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []
    handlers = {sig: signal.signal(sig, lambda signum, frame: arrived.append(signum)) for sig in DEFERRED}
    try:
        yield
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        for signum in dict.fromkeys(arrived):
            signal.raise_signal(signum)


@contextlib.contextmanager
def staged_output(
    output: Path, *, overwrite: bool, notice: Callable[[str], None] | None = None
) -> Iterator[StagedOutput]:
    """Lock ``output``, clear what killed runs left, and yield a temporary folder beside it.

    The folder (with everything in it) is removed when the block ends, by success, error or a
    signal turned into an exception; the caller calls ``commit`` inside the block to publish.
    """
    notice = notice or _stderr_notice
    output = Path(output)
    replaces = check_replaceable(output, overwrite)
    output.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(output):
        _remove_stale_workdirs(output, notice)
        replaces = check_replaceable(output, overwrite)  # again, under the lock
        workdir = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
        staged = StagedOutput(output, workdir, replaces)
        try:
            write_json_atomically(workdir / OWNER_FILE, {"pid": os.getpid(), "host": socket.gethostname()})
            yield staged
        finally:
            if not staged.keep:
                try:
                    _remove_workdir(workdir)
                except KeyboardInterrupt:  # a signal during the cleanup: the next run removes the rest
                    _left_over.append(workdir)
                    raise


def _remove_workdir(workdir: Path) -> None:
    """Remove a temporary folder, ``owner.json`` last (with signals held), so that whatever a
    signal leaves is still a folder the next run knows to be a dead run's."""
    for entry in workdir.iterdir():
        if entry.name != OWNER_FILE:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
    with _signals_deferred():
        (workdir / OWNER_FILE).unlink(missing_ok=True)
        shutil.rmtree(workdir, ignore_errors=True)


# What this process published and left behind, for the line printed after a signal.
_published: list[Path] = []
_left_over: list[Path] = []


def clear_outcomes() -> None:
    """Forget what earlier commands in this process published (each command reports its own)."""
    _published.clear()
    _left_over.clear()


def interrupted_outcome() -> str:
    """What is on disk after a signal ended the run: the outputs it had already put in place (their
    previous versions discarded), the temporary folders it could not remove, or that nothing changed."""
    if not _published:
        outcome = "temporary files removed, existing outputs left as they were"
    else:
        done = ", ".join(str(path) for path in _published)
        outcome = f"the signal came after the new output was in place: {done} is complete (what it replaced is discarded)"
    if _left_over:
        left = ", ".join(str(path) for path in _left_over)
        outcome += f"; {left} is left over, removed by the next run on the same output"
    return outcome


def check_replaceable(output: Path, overwrite: bool) -> os.stat_result | None:
    """What a run may replace at ``output`` (its ``lstat``, ``None`` if nothing is there); refuses
    an existing path without ``overwrite``, and anything but a previous fastsft output with it."""
    try:
        found = output.lstat()
    except FileNotFoundError:
        return None
    if not overwrite:
        raise ConfigError(
            f"output {output} already exists (pass --overwrite to replace a previous fastsft output)"
        )
    if not output.is_dir() or output.is_symlink():
        raise ConfigError(
            f"output {output} exists and is not a folder; fastsft replaces only its own outputs"
        )
    if not is_fastsft_output(output):
        raise ConfigError(
            f"output {output} exists and is not a fastsft output (it has no {MARKER}); "
            "remove it yourself or choose another path"
        )
    return found


@contextlib.contextmanager
def output_lock(output: Path, *, what: str = "--output") -> Iterator[None]:
    """An exclusive, non-blocking ``flock`` on ``.OUTPUT.lock``; fails at once, naming the holder's pid,
    if another run holds it (``what`` names the output option in that message)."""
    lock_path = output.parent / f".{output.name}.lock"
    for _ in range(3):
        handle = open(lock_path, "a+", encoding="utf-8")  # noqa: SIM115 - held for the whole block
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise OutputError(
                f"another run (pid {holder}) is writing {output}; wait for it or choose another {what}"
            ) from None
        try:
            same_file = os.path.samestat(os.fstat(handle.fileno()), lock_path.stat())
        except FileNotFoundError:
            same_file = False
        if same_file:
            break
        handle.close()  # the holder removed this lock file as we took it; take the current one
    else:
        raise OutputError(f"could not lock {lock_path}; is another run starting on {output}?")
    try:
        handle.truncate(0)
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock_path.unlink()  # while still locked: a waiting run then sees a different file and retries
        handle.close()


def _remove_stale_workdirs(output: Path, notice: Callable[[str], None]) -> None:
    """Remove temporary folders of ``output`` whose recorded process is gone (a killed run)."""
    host = socket.gethostname()
    for workdir in sorted(output.parent.glob(f".{glob.escape(output.name)}.tmp-*")):
        try:
            owner = json.loads((workdir / OWNER_FILE).read_text(encoding="utf-8"))
            pid, owner_host = int(owner["pid"]), owner["host"]
        except (OSError, ValueError, KeyError, TypeError):
            if workdir.is_dir() and not any(workdir.iterdir()):  # killed as it began or ended
                workdir.rmdir()
                continue
            notice(f"left {workdir} in place: it records no owner (remove it if no run is using it)")
            continue
        if owner_host != host or _process_alive(pid):
            continue
        previous = workdir / PREVIOUS
        if previous.is_dir() and (workdir / STAGED).is_dir():  # killed between the swap's renames
            if not os.path.lexists(output) and _put_back(previous, output):
                notice(
                    f"restored the previous {output}, which a run (pid {pid}) killed while replacing it had moved aside"
                )
            else:
                notice(
                    f"left {workdir} in place: it holds a previous output ({previous}) that could not be put back"
                )
                continue
        # Any other previous/ or obsolete/ was replaced by an output the killed run put in place.
        _remove_workdir(workdir)
        notice(f"removed {workdir}, left by an interrupted run (pid {pid})")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_json_atomically(path: Path, value: Any) -> None:
    """``value`` as JSON at ``path``, via a temporary file and a rename (readers never see half a file)."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(partial, path)


def _stderr_notice(message: str) -> None:
    print(f"fastsft: {message}", file=sys.stderr, flush=True)


_RENAME_NOREPLACE = 1
_AT_FDCWD = -100


def _load_renameat2() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_renameat2 = _load_renameat2()


def rename_noreplace(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target``, failing with ``FileExistsError`` if ``target`` exists.

    Linux: ``renameat2(RENAME_NOREPLACE)``, atomic. Elsewhere, or on a file system without it
    (``EINVAL``): an existence check, then the rename; the output lock keeps fastsft runs apart.
    """
    if _renameat2 is not None:
        if _renameat2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), _RENAME_NOREPLACE) == 0:
            return
        code = ctypes.get_errno()
        if code == errno.EEXIST or code == errno.ENOTEMPTY:
            raise FileExistsError(code, os.strerror(code), str(target))
        if code not in (errno.EINVAL, errno.ENOSYS):
            raise OSError(code, os.strerror(code), str(target))
    if os.path.lexists(target):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target))
    os.rename(source, target)
