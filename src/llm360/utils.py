"""Small file helpers shared by every stage: hashing and writes that never leave half a file."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from llm360.errors import naming_a_full_disk

HASH_READ_BYTES = 1 << 20  # how much of a file is read per hash update


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(HASH_READ_BYTES):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fsync_dir(path: str | Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, fsync, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with naming_a_full_disk(path):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644 & ~_umask())  # mkstemp makes 0600; a release is for others to read
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    fsync_dir(path.parent)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Strict JSON: a non-finite number is written as null (see finite_json)."""
    atomic_write_text(path, json.dumps(finite_json(obj)[0], indent=2, sort_keys=False, allow_nan=False) + "\n")


def finite_json(obj: Any, path: str = "") -> tuple[Any, list[str]]:
    """`obj` with every NaN or infinity replaced by None, and the dotted keys where that happened:
    strict JSON readers (browsers, jq) reject the bare `NaN` that json.dumps writes."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None, [path or "(value)"]
    if isinstance(obj, dict):
        out, where = {}, []
        for k, v in obj.items():
            out[k], w = finite_json(v, f"{path}.{k}" if path else str(k))
            where += w
        return out, where
    if isinstance(obj, (list, tuple)):
        out, where = [], []
        for i, v in enumerate(obj):
            item, w = finite_json(v, f"{path}.{i}" if path else str(i))
            out.append(item)
            where += w
        return out, where
    return obj, []


def json_line(record: dict) -> str:
    """One strict JSON line; non-finite numbers become null, listed under `nonfinite`."""
    clean, where = finite_json(record)
    if where:
        clean["nonfinite"] = where
    return json.dumps(clean, sort_keys=False, allow_nan=False) + "\n"


def append_jsonl(path: str | Path, *records: dict) -> None:
    """Append JSON lines with one write and flush them to disk, so a crash loses at most the
    lines in flight (and a line a crash left torn is cut first, or it would swallow these)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    repair_torn_tail(path)
    with naming_a_full_disk(path), open(path, "a", encoding="utf-8") as f:
        f.write("".join(json_line(r) for r in records))
        f.flush()
        os.fsync(f.fileno())


def repair_torn_tail(path: str | Path) -> bool:
    """Cut a last line that has no newline (a crash or a full disk mid-append left it), so the
    next append starts a line of its own. True when something was cut."""
    path = Path(path)
    try:
        with open(path, "rb+") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return False
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return False
            f.truncate(_end_of_last_line(f, size))
            f.flush()
            os.fsync(f.fileno())
            return True
    except FileNotFoundError:
        return False


def _end_of_last_line(f, size: int) -> int:
    """The offset just past the last newline before `size` (0 when there is none), read backwards
    a block at a time: the torn line may be longer than a block."""
    end = size
    while end > 0:
        start = max(end - HASH_READ_BYTES, 0)
        f.seek(start)
        block = f.read(end - start)
        if b"\n" in block:
            return start + block.rfind(b"\n") + 1
        end = start
    return 0


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of a JSONL file; a line that is not a JSON object (torn by a crash, damaged) is
    skipped, never raised: read_jsonl_report says which."""
    return read_jsonl_report(path)[0]


def read_jsonl_report(path: str | Path) -> tuple[list[dict], list[int]]:
    """(records, numbers of the lines that are not a JSON object), lines counted from 1. A torn
    line in the middle (a crash or a full disk mid-append, then a resume) costs only itself."""
    path = Path(path)
    if not path.exists():
        return [], []
    records, bad = [], []
    for number, line in enumerate(path.read_bytes().split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"))
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError; so is a cut line
            record = None
        if isinstance(record, dict):
            records.append(record)
        else:
            bad.append(number)
    return records, bad


def fsync_tree(root: str | Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(dirpath)


def replace_dir(tmp: str | Path, final: str | Path) -> None:
    """Move a finished temporary folder into place (replacing an older one at `final`)."""
    tmp, final = Path(tmp), Path(final)
    if final.exists():
        trash = final.with_name(f".{final.name}.old")
        if trash.exists():
            shutil.rmtree(trash)
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash)
    else:
        os.replace(tmp, final)
    fsync_dir(final.parent)
