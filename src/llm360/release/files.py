"""Walking and hashing a run directory without ever leaving it.

A run directory may come from a stranger, so it is read as data: the walk never follows a
symbolic link, never opens anything that is not a regular file (a FIFO would block, a device
would never end), and a path taken from release.json is checked against the walk before it is
opened, so `../x`, `/etc/passwd` or `link/x` (with `link` pointing out) are never read. Its JSON
is parsed with `parse_json`: damage of any kind (bytes that are not UTF-8, a cut, nesting thousands
deep) is a ValueError naming what is wrong, never a RecursionError.

    scan = scan_tree(run_dir)              # every regular file, and every oddity found
    hashes = hash_files(run_dir, scan.files, progress=True)
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from llm360.utils import HASH_READ_BYTES

MAX_JSON_DEPTH = 64  # no file of a run nests deeper; a stranger's may, to crash whoever walks it


@dataclass
class Scan:
    files: dict[str, os.stat_result] = field(default_factory=dict)  # relative posix path -> lstat
    links: dict[str, str] = field(default_factory=dict)  # symbolic links: path -> where they point
    odd: dict[str, str] = field(default_factory=dict)  # neither file, folder nor link: path -> what


def scan_tree(root: str | Path) -> Scan:
    """Every entry under `root`, walked without following links."""
    root = Path(root)
    scan = Scan()
    pending = [("", root)]
    while pending:
        prefix, folder = pending.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                rel = f"{prefix}{entry.name}"
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    scan.links[rel] = os.readlink(entry.path)
                elif stat.S_ISDIR(st.st_mode):
                    pending.append((rel + "/", Path(entry.path)))
                elif stat.S_ISREG(st.st_mode):
                    scan.files[rel] = st
                else:
                    scan.odd[rel] = _kind(st.st_mode)
    return scan


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def link_leaves(root: str | Path, rel: str, target: str) -> bool:
    """Whether the link at `rel` points outside `root` (judged on the text, never followed)."""
    if os.path.isabs(target):
        return True
    depth = len(PurePosixPath(rel).parts) - 1  # folders between root and the link
    for part in PurePosixPath(target).parts:
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part != ".":
            depth += 1
    return False


def unsafe_path(path: object) -> str | None:
    """Why a path from release.json must not be opened, or None when it is a plain relative path."""
    if not isinstance(path, str) or not path:
        return "is not a path"
    if "\x00" in path:
        return "holds a NUL byte"
    if "\\" in path:
        return "uses `\\`; paths in release.json are `/`-separated"
    if path.startswith("/") or (len(path) > 1 and path[1] == ":"):
        return "is absolute: it would leave RUN"
    parts = path.split("/")
    if ".." in parts:
        return "goes up with `..`: it would leave RUN"
    if any(p in ("", ".") for p in parts):
        return "is not in normal form (empty or `.` part)"
    return None


def through_link(scan: Scan, rel: str) -> str | None:
    """The symbolic link that `rel` would pass through (or is), if any."""
    parts = rel.split("/")
    for i in range(1, len(parts) + 1):
        prefix = "/".join(parts[:i])
        if prefix in scan.links:
            return prefix
    return None


def sha256_regular(path: str | Path, progress=None) -> str:
    """sha256 of a regular file, refusing a link or anything else at the last step."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    fd = os.open(path, flags)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
        h = hashlib.sha256()
        with os.fdopen(fd, "rb", closefd=False) as f:
            while block := f.read(HASH_READ_BYTES):
                h.update(block)
                if progress is not None:
                    progress(len(block))
        return h.hexdigest()
    finally:
        os.close(fd)


def hash_files(root: str | Path, files: dict[str, os.stat_result], progress: bool = False,
               known: dict[str, str] | None = None, label: str = "hashing") -> dict[str, str]:
    """sha256 of each file of a scan (relative path -> hex), with a progress bar over the bytes.

    `known` maps paths to hashes already trusted (release's cache); they are not read again.
    A file that cannot be read is left out of the result.
    """
    root = Path(root)
    known = known or {}
    todo = sorted(rel for rel in files if rel not in known)
    out = {rel: known[rel] for rel in files if rel in known}
    total = sum(files[rel].st_size for rel in todo)
    bar = _progress_bar(enabled=progress)
    with bar:
        task = bar.add_task(label, total=total or 1)
        for rel in todo:
            try:
                out[rel] = sha256_regular(root / rel, lambda n: bar.advance(task, n))
            except OSError:
                continue
        bar.update(task, completed=total or 1)
    return out


def _progress_bar(enabled: bool):
    from rich.console import Console
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    TimeRemainingColumn(), console=Console(stderr=True), transient=True, disable=not enabled)


def parse_json(data: bytes | str) -> object:
    """A JSON value from a stranger's file; ValueError saying why when it is not UTF-8 JSON nested
    at most MAX_JSON_DEPTH deep (deeper values would crash the code that walks them later)."""
    try:
        value = json.loads(data.decode("utf-8") if isinstance(data, bytes) else data)
    except RecursionError:
        raise ValueError("nested too deeply to parse") from None
    if not shallow(value):
        raise ValueError(f"nested more than {MAX_JSON_DEPTH} levels deep")
    return value


def shallow(value: object, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether a parsed JSON value nests at most `limit` levels (walked without recursion)."""
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        for child in children:
            if isinstance(child, (dict, list)):
                if depth + 1 > limit:
                    return False
                pending.append((child, depth + 1))
    return True
