"""One writer per run directory.

Every command that writes into a run (prepare, train, eval, analyze, index, release, run) holds
an exclusive lock on it for as long as it runs; a second writer is refused in one sentence that
names the holder. The lock is an `flock` on a small file beside the run directory, so it is held
by the process and released by the kernel when the process ends, however it ends: a kill -9
never leaves a stale lock. The file itself stays; only the lock on it matters.

Ranks of one torchrun job share the lock: rank 0 takes it, and the other ranks of the job,
which only ever write what rank 0 tells them to, do not ask for it. Readers (verify, data batch,
search, generate) take no lock.

    with run_lock(run_dir, "train"):
        ...
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from llm360.errors import UserError

_held: dict[str, int] = {}  # lock file -> file descriptor, for the locks this process holds


def lock_path(run_dir: str | Path) -> Path:
    """`runs/.demo.llm360-lock` for `runs/demo`: beside the run, never part of its release
    (and there before prepare creates the run directory itself)."""
    run_dir = Path(run_dir).absolute()
    return run_dir.with_name(f".{run_dir.name}.llm360-lock")


def _is_follower_rank() -> bool:
    return int(os.environ.get("RANK", "0")) != 0


def holder(run_dir: str | Path) -> dict | None:
    """Who holds the lock on `run_dir` now (pid, host, command, since), or None."""
    path = lock_path(run_dir)
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDWR)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read_holder(fd: int) -> dict:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode("utf-8") or "{}")
    except (ValueError, UnicodeDecodeError):
        info = {}
    return info if isinstance(info, dict) else {}


def acquire(run_dir: str | Path, command: str) -> bool:
    """Take the lock for this process; False when it already held it (then nothing changes)."""
    path = lock_path(run_dir)
    key = str(path)
    if key in _held or _is_follower_rank():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = _read_holder(fd)
        os.close(fd)
        raise UserError(f"{run_dir} is being written by another process ({_describe(other)}); wait until it "
                        "ends, or stop it, before writing to this run") from None
    except OSError as e:
        os.close(fd)
        raise UserError(f"cannot lock {path} ({e.strerror}); is the file system read-only?") from None
    me = {"pid": os.getpid(), "host": socket.gethostname(), "command": f"llm360 {command}",
          "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(me).encode("utf-8"), 0)
    _held[key] = fd
    return True


def release(run_dir: str | Path) -> None:
    fd = _held.pop(str(lock_path(run_dir)), None)
    if fd is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _describe(info: dict) -> str:
    if not info.get("pid"):
        return "its pid is not on record"
    return f"`{info.get('command', 'llm360')}`, pid {info['pid']} on host {info.get('host', '?')}, since {info.get('since', '?')}"


@contextlib.contextmanager
def run_lock(run_dir: str | Path, command: str):
    """Hold the run's lock inside the block (re-entrant within one process)."""
    took = acquire(run_dir, command)
    try:
        yield
    finally:
        if took:
            release(run_dir)
