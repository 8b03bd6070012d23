"""Small file helpers shared by every stage: hashing and writes that never leave half a file."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable

CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
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
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one JSON line and flush it to disk, so a crash loses at most the line in flight."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, sort_keys=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | Path) -> list[dict]:
    """Read a JSONL file, ignoring a torn last line left by a crash."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break  # torn tail
            raise
    return records


def fsync_tree(root: str | Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(dirpath)


def write_checksums(folder: str | Path, name: str = "CHECKSUMS.sha256") -> None:
    """sha256 of every file under `folder` (except the checksum file), written last."""
    folder = Path(folder)
    lines = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != name):
        lines.append(f"{sha256_file(path)}  {path.relative_to(folder).as_posix()}")
    atomic_write_text(folder / name, "\n".join(lines) + "\n")


def check_checksums(folder: str | Path, name: str = "CHECKSUMS.sha256") -> list[str]:
    """Problems with `folder` against its checksum file; [] when every file matches."""
    folder = Path(folder)
    sums = folder / name
    if not sums.exists():
        return [f"{folder.name}: no {name} (incomplete)"]
    expected = {}
    for line in sums.read_text(encoding="utf-8").splitlines():
        if line.strip():
            digest, _, rel = line.partition("  ")
            expected[rel] = digest
    problems = []
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != name}
    for rel, digest in expected.items():
        if rel not in present:
            problems.append(f"{folder.name}/{rel}: missing")
        elif sha256_file(folder / rel) != digest:
            problems.append(f"{folder.name}/{rel}: sha256 differs")
    for rel in sorted(present - set(expected)):
        problems.append(f"{folder.name}/{rel}: not in {name}")
    return problems


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


def natural_index(name: str, prefix: str) -> int | None:
    """`ckpt_012` -> 12 for prefix 'ckpt_'; None when the name is not of that form."""
    if not name.startswith(prefix):
        return None
    rest = name[len(prefix):]
    return int(rest) if rest.isdigit() else None


def pad_width(count: int) -> int:
    """Zero padding of chunk and checkpoint numbers: 3 digits, more from 1000 on (SPEC 1)."""
    return max(3, len(str(max(count - 1, 0))))


def iter_batches(items: Iterable, size: int):
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
