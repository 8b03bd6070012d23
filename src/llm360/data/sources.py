"""Sources: where documents come from, how they are read and cleaned, and what they are called.

A source (one entry of `data.sources`) is resolved into *units*: pieces of input that one worker
reads on its own. A unit is a file, a byte range of a large plain JSONL file, a run of row groups
of a large parquet file, or one standard-library module for `python-docs`. Units are listed in
document order, so concatenating what the units yield, in order, gives every source's documents
in order, however the units are later grouped into tasks, workers or shards.

Each kind of source (`jsonl`, `parquet`, `text`, `code`, `python-docs`, `python-code`) is one
class registered in `KINDS`: it lists a source's units, reads a unit's records, names a record's
uri and reads one document again by its uri. The config's allowed kinds are the names in `KINDS`;
adding a kind is one new class with `@register`.

Reading a unit yields `Record`s: a cleaned document, or a dropped one with the reason. Reasons
(the first five are broken input, which `data.strict` stops on; the rest are dropped by design):

    decode_error   bytes that are not UTF-8
    invalid_json   a JSONL line that does not parse
    missing_text   a record without a string `text_field` (absent, null, a number, not an object)
    unreadable     a file that cannot be read past some point (corrupt gzip, bad parquet...)
    syntax_error   a standard-library file that `ast` cannot parse (python-docs)
    empty          an empty file, an empty or blank line or record, a whitespace-only text
    too_short      fewer characters than filters.min_chars
    too_long       more characters than filters.max_chars
    duplicate      (counted later, by `assemble`) the same cleaned text seen before

Cleaning is Unicode NFC (and a leading byte-order mark removed from files), after ftfy's
`fix_text` for a source with `ftfy: true`; nothing else changes a document's text. uris (run-directory.md §2): `PATH:LINE` (1-based) for JSONL, `PATH#ROW` (0-based) for
parquet, `PATH` for a whole file, `python:MODULE.QUALNAME` for a docstring (`@N` appended for the
N-th docstring with the same name in one module, N >= 2) and `python:pydoc_data.topics#TOPIC` for
a language-reference topic. PATH is relative to the source root, `/`-separated.

The manifest records a source's root relative to the config's folder (or as the config wrote it
when it gave absolute paths), and `python:stdlib` for built-in sources: never a path of the
machine that prepared the run unless the config named it.

Built-in sources read the running Python's standard library without importing it: every `.py`
file under the stdlib folder, in sorted path order, skipping `site-packages`, folders that are
not Python identifiers (`lib-dynload`, `config-3.x-...`), `__pycache__` and test folders (`test`,
`tests`, `idle_test`: 60% of the bytes, and not the text the demo wants).
"""

from __future__ import annotations

import ast
import glob
import gzip
import io
import json
import os
import sysconfig
import unicodedata
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar, Iterator, NamedTuple

from llm360.errors import UserError

# Plain JSONL and parquet files above UNIT_BYTES are split into units (byte ranges, row groups).
# Fixed, never derived from --workers: shards run with any worker count must agree on the units.
UNIT_BYTES = 4 << 20
BROKEN_REASONS = ("decode_error", "invalid_json", "missing_text", "unreadable", "syntax_error")
FILTERED_REASONS = ("empty", "too_short", "too_long", "duplicate")
DROP_REASONS = BROKEN_REASONS + FILTERED_REASONS
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
COMPRESSED_SUFFIXES = (".gz", ".zst", ".zstd")
TEST_FOLDERS = {"test", "tests", "idle_test"}
TOPICS_FILE = "pydoc_data/topics.py"
STDLIB_ROOT = "python:stdlib"  # the root a manifest records for built-in sources


@dataclass(frozen=True)
class Unit:
    """One piece of a source that a worker reads on its own."""

    index: int  # position in the global document order
    source: int  # index into data.sources
    kind: str  # the source kind's name in KINDS (jsonl, parquet, text, code, python-docs, python-code)
    path: str  # absolute path of the file read
    rel: str  # PATH as written in uris
    size: int  # bytes (balancing and progress only)
    start: int = 0  # jsonl: first byte; parquet: first row group
    stop: int = -1  # jsonl: end byte (-1: end of file); parquet: end row group
    first_row: int = 0  # parquet: row number of row group `start` in the file
    text_field: str = "text"
    module: str = ""  # python-docs: dotted module name
    part: str = ""  # python-docs: "topics" for the language-reference topics
    problem: str = ""  # a file that cannot be read at all: what is wrong (read as one `unreadable` record)
    ftfy: bool = False  # the source's `ftfy` option: fix mojibake before NFC (see `clean`)


class Record(NamedTuple):
    """A document read from a unit: `text` is the cleaned text, or None when it was dropped."""

    key: int  # jsonl: line within the unit, parquet: row within the unit (both 0-based), else a counter
    name: str | None  # the uri, when the reader names the document itself (python docs)
    text: str | None
    reason: str | None  # why it was dropped
    what: str  # what is wrong with a dropped record ("" otherwise); `message` adds where


@dataclass(frozen=True)
class SourcePlan:
    name: str
    kind: str  # the config kind (jsonl, parquet, text, code, builtin)
    builtin: str | None
    root: str  # absolute, on this machine: where the files are read
    recorded_root: str  # what the manifest says (see the module docstring)
    text_field: str
    license: str | None
    description: str | None
    first_unit: int
    n_units: int
    ftfy: str | None = None  # the ftfy version cleaning this source's text, when its option is on


@dataclass
class Plan:
    """All units of all sources, in document order."""

    sources: list[SourcePlan]
    units: list[Unit]

    def units_of(self, source: int) -> list[Unit]:
        s = self.sources[source]
        return self.units[s.first_unit : s.first_unit + s.n_units]

    def identity(self) -> list:
        """What the units are; part of the shard plan id (sizes, not times: copies may differ)."""
        return [[u.source, u.kind, u.part, u.rel, u.size, u.start, u.stop] for u in self.units]


# ---------------------------------------------------------------------------------------------
# the registry of kinds


class SourceKind:
    """One kind of source. Subclasses set `name` and override what differs from a whole file."""

    name: ClassVar[str] = ""
    builtin: ClassVar[bool] = False  # reads the running Python's own files; takes no `paths`

    def units(self, src, si: int, offset: int, base: Path) -> tuple[Path, list[Unit]]:
        """(root, units) of source `src` (a SourceConfig), the units numbered from `offset`."""
        raise NotImplementedError

    def recorded_root(self, src, root: Path, base: Path) -> str:
        raise NotImplementedError

    def root_of(self, source: dict, base_dir: str | Path | None) -> Path:
        """Where to read a manifest source entry's files again."""
        raise NotImplementedError

    def read(self, unit: Unit) -> Iterator[Record]:
        """The unit's records in order, raw (not cleaned, not filtered)."""
        text, problem = _decode_file(unit)
        yield problem if problem else Record(0, None, text, None, "")

    def where(self, unit: Unit, key: int, name: str | None, path: str) -> str:
        """`path` with the record's place in the file, for messages."""
        return path

    def uri(self, unit: Unit, key: int, name: str | None, before: int) -> str:
        """The run-directory.md §2 uri; `before` is the records of the same file in earlier units."""
        return name if name is not None else unit.rel

    def read_one(self, root: Path, uri: str, field: str) -> str:
        """The raw text of the document named `uri` under `root`; UserError when there is none."""
        unit = Unit(0, 0, self.name, str(root / uri), uri, 0)
        text, problem = _decode_file(unit)
        if problem:
            raise UserError(message(unit, problem))
        return text


KINDS: dict[str, SourceKind] = {}


def register(cls: type[SourceKind]) -> type[SourceKind]:
    KINDS[cls.name] = cls()
    return cls


def builtin_kinds() -> tuple[str, ...]:
    return tuple(name for name, kind in KINDS.items() if kind.builtin)


def config_kind(src) -> SourceKind:
    """The kind of a SourceConfig or a manifest source entry (`kind: builtin` names it in `builtin`)."""
    get = src.get if isinstance(src, dict) else lambda k: getattr(src, k)
    return KINDS[get("builtin") if get("kind") == "builtin" else get("kind")]


# ---------------------------------------------------------------------------------------------
# kinds read from files the config names


class FileSource(SourceKind):
    """Files, folders or globs of `paths`; each file is one document unless a subclass splits it."""

    def wanted(self, path: Path) -> bool:
        return True

    def folder_files(self, src, folder: Path) -> list[Path]:
        return [f for f in _visible_files(folder) if self.wanted(f)]

    def nothing_found(self, src) -> str:
        return f"no {self.name} file"

    def file_units(self, path: Path, rel: str, size: int, si: int, index: int, field: str) -> list[Unit]:
        return [Unit(index, si, self.name, str(path), rel, size)]

    def units(self, src, si: int, offset: int, base: Path) -> tuple[Path, list[Unit]]:
        matched = _matched_paths(src, base)
        root = _source_root(src, matched, base)
        files: list[Path] = []
        for m in matched:
            if m.is_dir():
                found = self.folder_files(src, m)
                if not found:
                    raise UserError(f"source {src.name!r}: folder {m} holds {self.nothing_found(src)}")
                files.extend(found)
            elif m.is_file():
                files.append(m)
        units: list[Unit] = []
        for f in dict.fromkeys(files):  # each file once, in the order first seen
            try:
                rel = f.relative_to(root).as_posix()
            except ValueError:
                raise UserError(f"source {src.name!r}: {f} is outside the source root {root}") from None
            units.extend(self.file_units(f, rel, f.stat().st_size, si, offset + len(units), src.text_field))
        return root, units

    def recorded_root(self, src, root: Path, base: Path) -> str:
        # relative to the config's folder, unless the config itself gave absolute paths
        written = [*src.paths, *([src.root] if src.root else [])]
        if any(Path(p).expanduser().is_absolute() for p in written):
            return str(root)
        return Path(os.path.relpath(root, base)).as_posix()

    def root_of(self, source: dict, base_dir: str | Path | None) -> Path:
        root = Path(source["root"])
        if root.is_absolute():
            return root
        if base_dir is None:
            raise UserError(
                f"source {source['name']!r} was read from {source['root']!r}, relative to the folder of the "
                f"config that prepared the run; give that folder (base_dir) to read its documents again"
            )
        return Path(base_dir) / root


def _matched_paths(src, base: Path) -> list[Path]:
    matched: list[Path] = []
    for pattern in src.paths:
        p = Path(pattern).expanduser()
        full = p if p.is_absolute() else base / p
        if glob.has_magic(pattern):
            hits = sorted(Path(h) for h in glob.glob(str(full), recursive=True))
            if not hits:
                raise UserError(f"source {src.name!r}: {pattern!r} matches no file (searched {full})")
            matched.extend(hits)
        elif not full.exists():
            raise UserError(f"source {src.name!r}: path {full} does not exist")
        else:
            matched.append(full)
    return [m.resolve() for m in matched]


def _source_root(src, matched: list[Path], base: Path) -> Path:
    if not src.root:
        return Path(os.path.commonpath([str(m if m.is_dir() else m.parent) for m in matched]))
    r = Path(src.root).expanduser()
    root = (r if r.is_absolute() else base / r).resolve()
    if not root.is_dir():
        raise UserError(f"source {src.name!r}: root {root} is not a folder")
    return root


def _visible_files(folder: Path) -> list[Path]:
    """Every file under `folder`, skipping hidden files and folders (.git, .DS_Store...)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(Path(dirpath) / f for f in filenames if not f.startswith("."))
    return sorted(out, key=lambda p: p.relative_to(folder).as_posix())


def _hidden(path: Path, top: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(top).parts)


def _bare_name(path: Path) -> str:
    """The file name in lower case without a compression suffix."""
    name = path.name.lower()
    for suffix in COMPRESSED_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


@register
class TextSource(FileSource):
    name = "text"


@register
class CodeSource(FileSource):
    """A source tree: the files of its folders that match `include` (hidden ones skipped)."""

    name = "code"

    def folder_files(self, src, folder: Path) -> list[Path]:
        inside = set()
        for pattern in src.include:
            inside.update(f for f in folder.glob(pattern) if f.is_file() and not _hidden(f, folder))
        return sorted(inside, key=lambda f: f.relative_to(folder).as_posix())

    def nothing_found(self, src) -> str:
        return f"no file matching include {src.include}"


@register
class JsonlSource(FileSource):
    """One JSON object per line; large plain files are split into byte ranges."""

    name = "jsonl"

    def wanted(self, path: Path) -> bool:
        return _bare_name(path).endswith(JSONL_SUFFIXES)

    def file_units(self, path: Path, rel: str, size: int, si: int, index: int, field: str) -> list[Unit]:
        if path.name.lower().endswith(COMPRESSED_SUFFIXES) or size <= UNIT_BYTES:
            return [Unit(index, si, self.name, str(path), rel, size, text_field=field)]
        # byte ranges; a range reads the lines that *start* inside it, so every line is read once
        return [
            Unit(index + k, si, self.name, str(path), rel, min(UNIT_BYTES, size - a), start=a,
                 stop=min(a + UNIT_BYTES, size), text_field=field)
            for k, a in enumerate(range(0, size, UNIT_BYTES))
        ]

    def read(self, unit: Unit) -> Iterator[Record]:
        return _read_jsonl(unit)

    def where(self, unit: Unit, key: int, name: str | None, path: str) -> str:
        return f"{path}:{_line_base(unit) + key + 1}"

    def uri(self, unit: Unit, key: int, name: str | None, before: int) -> str:
        return f"{unit.rel}:{before + key + 1}"

    def read_one(self, root: Path, uri: str, field: str) -> str:
        rel, _, line = uri.rpartition(":")
        unit = Unit(0, 0, self.name, str(root / rel), rel, 0, text_field=field)
        target = int(line) - 1
        with open_jsonl(unit.path) as f:
            for i, raw in enumerate(f):
                if i == target:
                    rec = _jsonl_record(unit, i, raw, field)
                    if rec.text is None:
                        raise UserError(message(unit, rec))
                    return rec.text
        raise UserError(f"{uri}: the file has fewer lines")


@register
class ParquetSource(FileSource):
    """A text column of parquet files; large files are split into runs of row groups."""

    name = "parquet"

    def wanted(self, path: Path) -> bool:
        return _bare_name(path).endswith(".parquet")

    def file_units(self, path: Path, rel: str, size: int, si: int, index: int, field: str) -> list[Unit]:
        return _parquet_units(path, rel, size, si, index, field)

    def read(self, unit: Unit) -> Iterator[Record]:
        return _read_parquet(unit)

    def where(self, unit: Unit, key: int, name: str | None, path: str) -> str:
        return f"{path}#{unit.first_row + key}"

    def uri(self, unit: Unit, key: int, name: str | None, before: int) -> str:
        return f"{unit.rel}#{unit.first_row + key}"

    def read_one(self, root: Path, uri: str, field: str) -> str:
        import pyarrow.parquet as pq

        rel, _, row = uri.rpartition("#")
        value = pq.read_table(root / rel, columns=[field]).column(0)[int(row)].as_py()
        return value.decode("utf-8") if isinstance(value, bytes) else value


def _parquet_units(path: Path, rel: str, size: int, si: int, index: int, field: str) -> list[Unit]:
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(path).metadata
    except Exception as e:  # corrupt or not parquet: one unit that reports it when read
        return [Unit(index, si, "parquet", str(path), rel, size, problem=f"not a readable parquet file ({e})")]
    units, group, row, first_row, nbytes = [], 0, 0, 0, 0
    for g in range(meta.num_row_groups):
        nbytes += meta.row_group(g).total_byte_size
        row += meta.row_group(g).num_rows
        if nbytes >= UNIT_BYTES or g == meta.num_row_groups - 1:
            units.append(Unit(index + len(units), si, "parquet", str(path), rel, nbytes, start=group, stop=g + 1,
                              first_row=first_row, text_field=field))
            group, first_row, nbytes = g + 1, row, 0
    if not units:  # a parquet file without row groups: no documents, say so
        units.append(Unit(index, si, "parquet", str(path), rel, size, start=0, stop=0, text_field=field))
    return units


# ---------------------------------------------------------------------------------------------
# built-in kinds: the running Python's standard library


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"]).resolve()


def stdlib_files() -> list[Path]:
    """The standard library's .py files in sorted relative-path order (see the module docstring)."""
    root = stdlib_dir()
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(
            d for d in dirnames
            if d.isidentifier() and d not in TEST_FOLDERS and d != "__pycache__" and not d.startswith(".")
        )
        found.extend(here / f for f in filenames if f.endswith(".py"))
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def module_name(rel: str) -> str:
    parts = rel[: -len(".py")].split("/")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


class StdlibSource(SourceKind):
    builtin = True

    def recorded_root(self, src, root: Path, base: Path) -> str:
        return STDLIB_ROOT  # this Python's stdlib; the manifest records the Python version

    def root_of(self, source: dict, base_dir: str | Path | None) -> Path:
        return stdlib_dir()


@register
class PythonCodeSource(StdlibSource):
    """Every standard-library .py file, one document each; uris are stdlib-relative paths."""

    name = "python-code"

    def units(self, src, si: int, offset: int, base: Path) -> tuple[Path, list[Unit]]:
        root = stdlib_dir()
        units = []
        for path in stdlib_files():
            rel = path.relative_to(root).as_posix()
            units.append(Unit(offset + len(units), si, self.name, str(path), rel, path.stat().st_size))
        return root, units


@register
class PythonDocsSource(StdlibSource):
    """The docstrings of every standard-library module, class and function, and the
    language-reference topics of pydoc_data (last); read with `ast`, never imported."""

    name = "python-docs"

    def units(self, src, si: int, offset: int, base: Path) -> tuple[Path, list[Unit]]:
        root = stdlib_dir()
        units = []
        for path in stdlib_files():
            rel = path.relative_to(root).as_posix()
            units.append(Unit(offset + len(units), si, self.name, str(path), rel, path.stat().st_size,
                              module=module_name(rel)))
        topics_path = root / TOPICS_FILE
        if topics_path.exists():
            units.append(Unit(offset + len(units), si, self.name, str(topics_path), TOPICS_FILE,
                              topics_path.stat().st_size, part="topics"))
        return root, units

    def read(self, unit: Unit) -> Iterator[Record]:
        return _read_topics(unit) if unit.part == "topics" else _read_docstrings(unit)

    def where(self, unit: Unit, key: int, name: str | None, path: str) -> str:
        if unit.part == "topics":
            return f"{path} ({name})" if name else path
        return f"{path}:{key}" if key else path

    def read_one(self, root: Path, uri: str, field: str) -> str:
        return _python_by_uri(root, uri)


# ---------------------------------------------------------------------------------------------
# resolving sources into units


def plan_sources(data_cfg, base_dir: str | Path | None) -> Plan:
    """Resolve every source of `data_cfg` (a DataConfig) into units; UserError on a bad path."""
    base = Path(base_dir or ".").expanduser().resolve()
    sources, units = [], []
    for si, src in enumerate(data_cfg.sources):
        kind = config_kind(src)
        first = len(units)
        root, new = kind.units(src, si, len(units), base)
        fixer = ftfy_version(f"data.sources[{si}].ftfy") if src.ftfy else None  # refused before any work
        if fixer:
            new = [replace(u, ftfy=True) for u in new]
        units.extend(new)
        sources.append(SourcePlan(
            name=src.name, kind=src.kind, builtin=src.builtin, root=str(root),
            recorded_root=kind.recorded_root(src, root, base), text_field=src.text_field,
            license=src.license, description=src.description, first_unit=first, n_units=len(new), ftfy=fixer,
        ))
    return Plan(sources, units)


# ---------------------------------------------------------------------------------------------
# reading


def ftfy_version(key: str) -> str:
    """The installed ftfy's version; UserError naming `key` when it is not installed."""
    try:
        import ftfy
    except ImportError:
        raise UserError(f"{key} is on but ftfy is not installed; pip install 'llm360[ftfy]'") from None
    return ftfy.__version__


def clean(text: str, fix: bool = False) -> str:
    """The only changes made to a document's text: ftfy's fix_text when `fix` (the source's `ftfy`
    option, as Crystal's text was normalized), then Unicode NFC."""
    if fix:
        import ftfy

        text = ftfy.fix_text(text)
    if not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
    return text


def _filter(text: str, min_chars: int, max_chars: int) -> tuple[str | None, str]:
    """(reason, what) when a cleaned text is dropped by the filters, else (None, "")."""
    if not text or text.isspace():
        return "empty", "empty text"
    n = len(text)
    if n < min_chars:
        return "too_short", f"{n} characters, fewer than data.filters.min_chars ({min_chars}), so it was dropped"
    if n > max_chars:
        return "too_long", f"{n} characters, more than data.filters.max_chars ({max_chars}), so it was dropped"
    return None, ""


def read_unit(unit: Unit, min_chars: int = 1, max_chars: int = 1 << 62, limit: int | None = None) -> Iterator[Record]:
    """Every record of `unit` in order, cleaned and filtered (dedup excepted).

    With `limit`, stop after the kept texts reach `limit` characters (tokenizer sampling).
    """
    raw = iter([Record(0, None, None, "unreadable", unit.problem)]) if unit.problem else KINDS[unit.kind].read(unit)
    kept = 0
    for rec in raw:
        if rec.text is not None:
            text = clean(rec.text, unit.ftfy)
            reason, what = _filter(text, min_chars, max_chars)
            if reason:
                rec = Record(rec.key, rec.name, None, reason, what)
            else:
                rec = rec._replace(text=text)
                kept += len(text)
        yield rec
        if limit is not None and kept >= limit:
            return


def where(unit: Unit, key: int, name: str | None = None, full: bool = True) -> str:
    """`PATH:LINE` (or `PATH#ROW`, `PATH`) of a record: PATH is the file's full path for messages
    to the user, or (`full=False`) relative to the source root, for what the run records."""
    path = unit.path if full else unit.rel
    return path if unit.problem else KINDS[unit.kind].where(unit, key, name, path)


def message(unit: Unit, rec: Record, full: bool = True) -> str:
    """"PATH:LINE: what is wrong" of a dropped record."""
    return f"{where(unit, rec.key, rec.name, full)}: {rec.what}"


def _line_base(unit: Unit) -> int:
    """Lines before a JSONL byte range (only computed for messages, which are rare)."""
    if unit.start == 0:
        return 0
    count = 0
    with open(unit.path, "rb") as f:
        left = unit.start
        while left > 0:
            block = f.read(min(left, 1 << 24))
            if not block:
                break
            count += block.count(b"\n")
            left -= len(block)
    return count


def _drop(key: int, reason: str, what: str, name: str | None = None) -> Record:
    return Record(key, name, None, reason, what)


def open_jsonl(path: str) -> io.BufferedIOBase:
    """A binary reader of a JSONL file, plain or compressed (.gz, .zst / .zstd by the suffix)."""
    name = path.lower()
    if name.endswith(".gz"):
        return gzip.open(path, "rb")
    if name.endswith((".zst", ".zstd")):
        try:
            import zstandard
        except ImportError:
            raise UserError(f"{path}: reading .zst needs the zstandard package (pip install zstandard)") from None
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True))
    return open(path, "rb")


def _read_jsonl(unit: Unit) -> Iterator[Record]:
    field = unit.text_field
    key = -1
    try:
        with open_jsonl(unit.path) as f:
            stop = unit.stop if unit.stop >= 0 else None
            if unit.start:
                f.seek(unit.start - 1)
                f.readline()  # the rest of a line that started before the range
            while True:
                if stop is not None and f.tell() >= stop:
                    break
                line = f.readline()
                if not line:
                    break
                key += 1
                yield _jsonl_record(unit, key, line, field)
    except Exception as e:  # corrupt or truncated compression (OSError, EOFError, zlib/zstd errors)
        yield _drop(key + 1, "unreadable", f"cannot read on ({type(e).__name__}: {e})")
        return
    if key < 0 and unit.start == 0:
        yield _drop(0, "empty", "empty file")


def _jsonl_record(unit: Unit, key: int, line: bytes, field: str) -> Record:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        return _drop(key, "decode_error", f"not UTF-8 ({e.reason} at byte {e.start})")
    if key == 0 and unit.start == 0:
        text = text.removeprefix("\ufeff")  # a byte-order mark opening the file
    if not text.strip():
        return _drop(key, "empty", "empty line")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        return _drop(key, "invalid_json", f"invalid JSON ({e.msg}, column {e.colno})")
    if not isinstance(obj, dict):
        return _drop(key, "missing_text", f"a JSON {type(obj).__name__}, not an object with {field!r}")
    value = obj.get(field)
    if not isinstance(value, str):
        what = "no" if field not in obj else f"a {type(value).__name__} in"
        return _drop(key, "missing_text", f"{what} text field {field!r}" + ("" if field not in obj else ", not a string"))
    return Record(key, None, value, None, "")


def _read_parquet(unit: Unit) -> Iterator[Record]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    field = unit.text_field
    key = -1
    try:
        pf = pq.ParquetFile(unit.path)
        if field not in pf.schema_arrow.names:
            n = sum(pf.metadata.row_group(g).num_rows for g in range(unit.start, unit.stop))
            for key in range(n):
                yield _drop(key, "missing_text", f"no column {field!r}")
            return
        column_type = pf.schema_arrow.field(field).type
        is_bytes = pa.types.is_binary(column_type) or pa.types.is_large_binary(column_type)
        for batch in pf.iter_batches(batch_size=4096, row_groups=list(range(unit.start, unit.stop)), columns=[field]):
            for value in batch.column(0).to_pylist():
                key += 1
                if is_bytes and value is not None:
                    try:
                        value = value.decode("utf-8")
                    except UnicodeDecodeError as e:
                        yield _drop(key, "decode_error", f"not UTF-8 ({e.reason} at byte {e.start})")
                        continue
                if not isinstance(value, str):
                    kind = "null" if value is None else f"{column_type}"
                    yield _drop(key, "missing_text", f"column {field!r} is {kind}, not a string")
                    continue
                yield Record(key, None, value, None, "")
    except Exception as e:  # a corrupt page or file (pyarrow raises several kinds)
        yield _drop(key + 1, "unreadable", f"cannot read on ({type(e).__name__}: {e})")


def _decode_file(unit: Unit) -> tuple[str | None, Record | None]:
    try:
        data = Path(unit.path).read_bytes()
    except OSError as e:
        return None, _drop(0, "unreadable", f"cannot read ({e.strerror})")
    if not data:
        return None, _drop(0, "empty", "empty file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, _drop(0, "decode_error", f"not UTF-8 ({e.reason} at byte {e.start})")
    return text.removeprefix("\ufeff"), None


_DEFINITIONS = {ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef}
_COMPOUND = {ast.If, ast.For, ast.AsyncFor, ast.While, ast.With, ast.AsyncWith, ast.Try, ast.Match}
if hasattr(ast, "TryStar"):
    _COMPOUND.add(ast.TryStar)


def docstrings(tree: ast.Module, module: str) -> Iterator[tuple[str, int, str]]:
    """(uri, line, docstring) of a module, its classes and functions, in source order.

    Qualified names follow Python's `__qualname__` (`Class.method`, `func.<locals>.inner`);
    definitions under `if`/`try`/`with`/loops count as where they are. A name seen again in the
    same module gets `@2`, `@3`... so every uri stays unique.
    """
    seen: dict[str, int] = {}

    def named(qual: str) -> str:
        uri = f"python:{module}.{qual}" if qual else f"python:{module}"
        n = seen.get(uri, 0) + 1
        seen[uri] = n
        return uri if n == 1 else f"{uri}@{n}"

    def walk(body: list, prefix: str) -> Iterator[tuple[str, int, str]]:
        for node in body:
            kind = type(node)
            if kind in _DEFINITIONS:
                qual = prefix + node.name
                doc = ast.get_docstring(node, clean=True)
                if doc is not None:
                    yield named(qual), node.body[0].lineno, doc
                yield from walk(node.body, qual + ("." if kind is ast.ClassDef else ".<locals>."))
            elif kind in _COMPOUND:
                for attr in ("body", "orelse", "finalbody"):
                    sub = getattr(node, attr, None)
                    if sub:
                        yield from walk(sub, prefix)
                for handler in getattr(node, "handlers", ()):
                    yield from walk(handler.body, prefix)
                for case in getattr(node, "cases", ()):
                    yield from walk(case.body, prefix)

    doc = ast.get_docstring(tree, clean=True)
    if doc is not None:
        yield named(""), tree.body[0].lineno, doc
    yield from walk(tree.body, "")


def _parse(unit: Unit) -> tuple[ast.Module | None, Record | None]:
    text, problem = _decode_file(unit)
    if problem:
        return None, problem
    try:
        return ast.parse(text, filename=unit.path), None
    except (SyntaxError, ValueError) as e:
        return None, _drop(getattr(e, "lineno", 0) or 0, "syntax_error", f"ast cannot parse it ({e.__class__.__name__})")


def _read_docstrings(unit: Unit) -> Iterator[Record]:
    tree, problem = _parse(unit)
    if problem:
        if problem.reason != "empty":  # an empty module simply has no docstrings
            yield problem
        return
    for uri, line, doc in docstrings(tree, unit.module):
        yield Record(line, uri, doc, None, "")


def topics(tree: ast.Module) -> dict[str, str]:
    """The `topics` dict of pydoc_data/topics.py, read with ast.literal_eval (never imported)."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "topics" for t in node.targets):
            value = ast.literal_eval(node.value)
            if isinstance(value, dict):
                return {str(k): v for k, v in value.items() if isinstance(v, str)}
    return {}


def _read_topics(unit: Unit) -> Iterator[Record]:
    tree, problem = _parse(unit)
    if problem:
        yield problem
        return
    for i, (name, text) in enumerate(sorted(topics(tree).items())):
        yield Record(i, f"python:pydoc_data.topics#{name}", text, None, "")


# ---------------------------------------------------------------------------------------------
# uris and finding a document again


def uri_of(unit: Unit, key: int, name: str | None, before: int = 0) -> str:
    """The run-directory.md §2 uri of a record; `before` is the records of the same file in earlier units."""
    return KINDS[unit.kind].uri(unit, key, name, before)


def read_by_uri(source: dict, uri: str, base_dir: str | Path | None = None) -> str:
    """Re-read one document from its source by uri and clean it as prepare did.

    `source` is a manifest source entry (it records `kind`, `builtin`, `root`, `text_field`);
    a relative root is read from `base_dir`, the folder of the config that prepared the run.
    Raises UserError when the uri does not name a document.
    """
    kind = config_kind(source)
    root = kind.root_of(source, base_dir)
    fix = "ftfy" in source
    if fix:
        ftfy_version(f"source {source['name']!r}'s ftfy")
    return clean(kind.read_one(root, uri, source.get("text_field", "text")), fix)


def _python_by_uri(root: Path, uri: str) -> str:
    body = uri[len("python:"):]
    if body.startswith("pydoc_data.topics#"):
        tree = ast.parse((root / TOPICS_FILE).read_text(encoding="utf-8"))
        name = body.split("#", 1)[1]
        found = topics(tree)
        if name not in found:
            raise UserError(f"{uri}: no such topic in {root / TOPICS_FILE}")
        return found[name]
    parts = body.split(".")
    for cut in range(len(parts), 0, -1):
        module = ".".join(parts[:cut])
        rel = module.replace(".", "/")
        for candidate in (root / f"{rel}.py", root / rel / "__init__.py"):
            if candidate.is_file():
                tree = ast.parse(candidate.read_text(encoding="utf-8-sig"))
                for found, _, doc in docstrings(tree, module):
                    if found == uri:
                        return doc
    raise UserError(f"{uri}: no such docstring in the standard library at {root}")
