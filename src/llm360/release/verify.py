"""`llm360 verify RUN`: every byte of a release checked against release.json (docs/run-directory.md §7).

    findings = verify(run_dir)      # [] when the release verifies; else one line per problem

What is checked:
  files        every file listed is there, with its size and sha256; no file is missing or extra
  paths        no listed path leaves RUN (`..`, absolute); no symbolic link or special file is in
               RUN; none of them is followed or opened
  data         the chunk files match data/manifest.json (hashes, count against the stages), and
               the data fingerprint recomputed from the manifest matches the manifest and release.json
  checkpoints  the checkpoint table matches the folders (names, steps, tokens), every checkpoint
               matches its CHECKSUMS.sha256, and each was trained on this data (fingerprint)
  frozen       consecutive checkpoints moved as train.jsonl says they were trained: not identical
               weights, nor an update norm under the floor of the recorded learning rates
               (llm360.release.frozen; weights read tensor by tensor)
  config       run.yaml hashes to release.json's config_sha256
  records      every line of metrics/*.jsonl and analysis/**/*.jsonl is a JSON record (a torn line
               is a finding naming file:line)
  root         MODEL_CARD.md and report/index.html show the release root, sha256(release.json), and
               are listed in their normal form (llm360.release.root); with `--expect ROOT`, the root
               is the one published, which anchors everything above
  signature    with `--allowed-signers FILE`, release.json.sig is a good ssh signature of release.json
               by a principal FILE allows (llm360.release.signature): who vouches for the root

Each finding names the file it is about. The run directory is read as data: JSON and text only,
every file as hostile (damage is a finding, never a crash). A file that release.json does not list
is reported without being read.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llm360.errors import UserError
from llm360.rundir import (ANALYSIS_DIR, CHECKPOINTS_DIR, CHECKSUMS_FILE, MANIFEST_FILE, METRICS_DIR, STATE_FILE,
                           checkpoint_order, compute_fingerprint, is_checkpoint_name, parse_checksums, step_rule_of)
from llm360.rundir import RELEASE_FILE, RELEASE_FORMAT
from llm360.release.files import (Scan, hash_files, link_leaves, parse_json, scan_tree,
                                  through_link, unsafe_path)
from llm360.release import signature
from llm360.release.frozen import frozen_findings
from llm360.release.root import ROOTED_DOCUMENTS, SIGNATURE_FILE, is_root, normal_form, shown_roots
from llm360.utils import sha256_bytes

MAX_JSON_BYTES = 1 << 30  # a manifest or release.json beyond this is not read
MAX_DOCUMENT_BYTES = 1 << 28  # a model card or report beyond this is not read (they are read whole)
MAX_SIGNATURE_BYTES = 1 << 16  # an ssh signature is under 2 KB, even with an RSA key
TORN_LINES_SHOWN = 10  # per file; the rest are counted


@dataclass
class Finding:
    path: str  # the file (or folder) the finding is about, relative to RUN
    kind: str  # changed, missing, extra, unsafe, inconsistent, invalid, frozen
    message: str
    line: int | None = None  # the line of `path` it is about, for a damaged JSONL line

    def __str__(self) -> str:
        return f"{shown(self.path)}{'' if self.line is None else f':{self.line}'}: {self.message}"


@dataclass
class Verification:
    run: str
    files: int = 0  # files listed in release.json
    bytes: int = 0  # bytes hashed
    checkpoints: int = 0
    chunks: int = 0
    signature: str = "none"  # none, not checked, verified, not verified
    signed_by: str | None = None  # the principal whose good signature release.json has
    findings: list[Finding] = field(default_factory=list)

    @property
    def verified(self) -> bool:
        return not self.findings

    def counts(self) -> dict:
        out = {"files": self.files, "bytes": self.bytes, "checkpoints": self.checkpoints, "chunks": self.chunks,
               "findings": len(self.findings)}
        for f in self.findings:
            out[f.kind] = out.get(f.kind, 0) + 1
        return out

    def to_json(self) -> dict:
        return {"run": self.run, "verified": self.verified, "counts": self.counts(), "signature": self.signature,
                "signed_by": self.signed_by,
                "findings": [{**asdict(f), "text": str(f)} for f in self.findings]}


def shown(path: str) -> str:
    """A path from a stranger, printable: control characters and the like as escapes."""
    return path if path.isprintable() else ascii(path)[1:-1]


def brief(value: object) -> str:
    """A value from a stranger, short enough for one line (it may be a list a megabyte long)."""
    text = repr(value)
    return shown(text if len(text) <= 60 else text[:57] + "...")


# -- reading files that the scan found ---------------------------------------------------------


def _read_bytes(run_dir: Path, rel: str, scan: Scan, limit: int = MAX_JSON_BYTES) -> bytes | None:
    st = scan.files.get(rel)
    if st is None or st.st_size > limit:
        return None
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(run_dir / rel, flags)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        return f.read(limit + 1)[:limit]


def _read_json(run_dir: Path, rel: str, scan: Scan, findings: list[Finding] | None = None) -> dict | None:
    """A JSON object from the run, or None; with `findings`, a damaged file is one of them."""
    data = _read_bytes(run_dir, rel, scan)
    return None if data is None else _parse_object(rel, data, findings)


def _parse_object(rel: str, data: bytes, findings: list[Finding] | None) -> dict | None:
    try:
        value = parse_json(data)
    except ValueError as e:
        if findings is not None:
            findings.append(Finding(rel, "invalid", f"not valid JSON ({shown(str(e)[:80])})"))
        return None
    if not isinstance(value, dict):
        if findings is not None:
            findings.append(Finding(rel, "invalid", "not a JSON object"))
        return None
    return value


def _read_checksums(run_dir: Path, rel: str, scan: Scan) -> dict[str, str] | None:
    data = _read_bytes(run_dir, rel, scan)
    if data is None:
        return None
    return parse_checksums(data.decode("utf-8", errors="replace"))[0]


# -- the checks -------------------------------------------------------------------------------


def check(run_dir: str | Path, progress: bool = False, expect: str | None = None,
          allowed_signers: str | Path | None = None) -> Verification:
    """Every finding on the release at `run_dir`; with `expect`, its root must be that one; with
    `allowed_signers`, release.json must be signed by one of its principals."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a directory")
    if expect is not None and not is_root(expect.lower()):
        raise UserError(f"--expect {shown(expect)} is not a release root (64 hex digits, as `llm360 release` prints)")
    if allowed_signers is not None:
        allowed_signers = Path(allowed_signers).expanduser()
        if not allowed_signers.is_file():
            raise UserError(f"--allowed-signers {allowed_signers}: no such file")
        signature.ssh_keygen()  # refuse before hashing anything when it cannot be checked
    result = Verification(run=str(run_dir))
    findings = result.findings
    scan = scan_tree(run_dir)

    for rel, target in sorted(scan.links.items()):
        where = "outside RUN" if link_leaves(run_dir, rel, target) else "inside RUN"
        findings.append(Finding(rel, "unsafe", f"symbolic link to {shown(target)} ({where}); not followed"))
    for rel, what in sorted(scan.odd.items()):
        findings.append(Finding(rel, "unsafe", f"{what}, not a regular file; not opened"))

    record, data = _load_release(run_dir, scan, findings)
    root = None if data is None else sha256_bytes(data)
    _check_signature(run_dir, scan, data, allowed_signers, result)
    if expect is not None and root is not None and root != expect.lower():
        findings.append(Finding(RELEASE_FILE, "changed", f"its sha256 (the release root) is {root}, not the "
                                                         f"expected {expect.lower()}"))
    listed = _check_listing(record, scan, findings) if record is not None else {}
    result.files = len(listed)

    # hash each listed file once (the consistency checks reuse the hashes); an extra file is
    # never read: it is reported whatever it holds, and it may be as large as the disk
    plain = {rel: scan.files[rel] for rel in listed if rel in scan.files and rel not in ROOTED_DOCUMENTS}
    hashes = hash_files(run_dir, plain, progress=progress, label="verifying")
    hashes.update(_hash_rooted(run_dir, listed, scan, root, findings))
    result.bytes = sum(scan.files[rel].st_size for rel in hashes)
    for rel, entry in sorted(listed.items()):
        st = scan.files.get(rel)
        if st is None:
            continue  # reported by the listing check
        if rel not in hashes:
            findings.append(Finding(rel, "unsafe", "could not be read"))
        elif st.st_size != entry.get("bytes"):
            findings.append(Finding(rel, "changed", f"{st.st_size} bytes, release.json says {brief(entry.get('bytes'))}"))
        elif hashes[rel] != entry.get("sha256"):
            findings.append(Finding(rel, "changed", "sha256 differs from release.json"))

    findings += consistency(run_dir, record, scan, hashes)
    findings += _damaged_records(run_dir, hashes)
    findings += [Finding(rel, "frozen", message) for rel, message in
                 frozen_findings(run_dir, set(scan.files), lambda rel: _read_json(run_dir, rel, scan))]
    result.checkpoints = len({_checkpoint_of(rel) for rel in scan.files} - {None})
    manifest = _read_json(run_dir, MANIFEST_FILE, scan)
    chunks = manifest.get("chunks") if manifest is not None else None
    result.chunks = len(chunks) if isinstance(chunks, list) else 0
    result.findings = _unique(findings)
    return result


def verify(run_dir: str | Path, progress: bool = False) -> list[str]:
    """The findings on a release, one line each naming its file; [] when it verifies."""
    return [str(f) for f in check(run_dir, progress=progress).findings]


def _unique(findings: list[Finding]) -> list[Finding]:
    seen, out = set(), []
    for f in findings:
        key = (f.path, f.line, f.message)
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out


def _load_release(run_dir: Path, scan: Scan, findings: list[Finding]) -> tuple[dict | None, bytes | None]:
    """release.json's record (None when it cannot be used) and its bytes (None when unread)."""
    if RELEASE_FILE in scan.links:
        return None, None  # already a finding: a link is never followed
    if RELEASE_FILE not in scan.files:
        findings.append(Finding(RELEASE_FILE, "missing", "no release.json: run `llm360 release RUN` first"))
        return None, None
    data = _read_bytes(run_dir, RELEASE_FILE, scan)
    if data is None:
        findings.append(Finding(RELEASE_FILE, "invalid", "could not be read"))
        return None, None
    record = _parse_object(RELEASE_FILE, data, findings)
    if record is None:
        return None, data
    if record.get("format") != RELEASE_FORMAT:
        findings.append(Finding(RELEASE_FILE, "invalid", f"format is {brief(record.get('format'))}, expected "
                                                         f"{RELEASE_FORMAT!r}"))
    for key in ("data", "model", "totals", "software", "training_environment", "documents"):
        if key in record and not isinstance(record[key], dict):
            findings.append(Finding(RELEASE_FILE, "invalid", f"`{key}` is not an object"))
    if not isinstance(record.get("files"), list):
        findings.append(Finding(RELEASE_FILE, "invalid", "has no `files` list"))
        return None, data
    return record, data


def _check_signature(run_dir: Path, scan: Scan, data: bytes | None, allowed: Path | None,
                     result: Verification) -> None:
    """release.json.sig against the bytes of release.json that were read (and hashed for the root)."""
    present = SIGNATURE_FILE in scan.files or SIGNATURE_FILE in scan.links or SIGNATURE_FILE in scan.odd
    if allowed is None:
        result.signature = "not checked" if present else "none"
        return
    result.signature = "not verified"
    if SIGNATURE_FILE not in scan.files:
        if not present:
            result.findings.append(Finding(SIGNATURE_FILE, "missing", "no signature of release.json (`llm360 "
                                                                      "release RUN --sign-key KEY` writes it)"))
        return  # a link or special file: already a finding, never opened
    sig = _read_bytes(run_dir, SIGNATURE_FILE, scan, MAX_SIGNATURE_BYTES)
    if sig is None:
        big = scan.files[SIGNATURE_FILE].st_size > MAX_SIGNATURE_BYTES
        result.findings.append(Finding(SIGNATURE_FILE, "invalid", "larger than any ssh signature; not read" if big
                                       else "could not be read"))
        return
    if data is None:
        return  # release.json could not be read: a finding already, and nothing to check the signature against
    principal, why = signature.check(data, sig, allowed)
    if why is not None:
        result.findings.append(Finding(SIGNATURE_FILE, "invalid", why))
        return
    result.signature, result.signed_by = "verified", principal


def _hash_rooted(run_dir: Path, listed: dict[str, dict], scan: Scan, root: str | None,
                 findings: list[Finding]) -> dict[str, str]:
    """The hashes of the documents that show the root, in their normal form, each root they show
    checked against release.json's sha256 (llm360.release.root says why that is sound)."""
    hashes = {}
    for rel in ROOTED_DOCUMENTS:
        data = _read_bytes(run_dir, rel, scan, MAX_DOCUMENT_BYTES) if rel in listed else None
        if data is None:
            continue  # missing or unreadable: a finding of the listing
        hashes[rel] = sha256_bytes(normal_form(data))
        wrong = sorted({r for r in shown_roots(data) if r != root})
        if root is not None and wrong:
            findings.append(Finding(rel, "inconsistent", f"shows the release root {wrong[0]}, but release.json's "
                                                         f"sha256 is {root}"))
    return hashes


def _check_listing(record: dict, scan: Scan, findings: list[Finding]) -> dict[str, dict]:
    """Paths in release.json against the walk: unsafe, duplicated, missing and extra files."""
    listed: dict[str, dict] = {}
    for i, entry in enumerate(record["files"]):
        path = entry.get("path") if isinstance(entry, dict) else None
        if not isinstance(path, str) or not path:
            findings.append(Finding(RELEASE_FILE, "invalid", f"files[{i}] is not an object with a path"))
            continue
        why = unsafe_path(path)
        if why is not None:
            findings.append(Finding(path, "unsafe", f"listed in release.json but {why}; not opened"))
            continue
        if path == RELEASE_FILE:
            findings.append(Finding(path, "invalid", "release.json lists itself"))
            continue
        if path in listed:
            findings.append(Finding(path, "invalid", "listed twice in release.json"))
            continue
        listed[path] = entry
        size = entry.get("bytes")
        if not isinstance(size, int) or isinstance(size, bool) or not is_root(entry.get("sha256")):
            findings.append(Finding(RELEASE_FILE, "invalid", f"files[{i}] ({shown(path)}) needs a whole number "
                                                             "`bytes` and a hex `sha256`"))
        link = through_link(scan, path)
        if link is not None:
            findings.append(Finding(path, "unsafe", f"reached through the symbolic link {shown(link)}; not followed"))
        elif path in scan.odd:
            pass  # reported with the scan
        elif path not in scan.files:
            findings.append(Finding(path, "missing", "listed in release.json but missing"))
    for rel in sorted(set(scan.files) - set(listed) - {RELEASE_FILE, SIGNATURE_FILE}):
        findings.append(Finding(rel, "extra", "not listed in release.json (an extra file)"))
    return listed


def consistency(run_dir: Path, record: dict | None, scan: Scan, hashes: dict[str, str]) -> list[Finding]:
    """Checks between the parts of a run: manifest vs chunks, checkpoints vs their checksums and the
    table, fingerprints and config hash against release.json. Used by verify and before a release."""
    findings: list[Finding] = []
    record = record or {}
    run_dir = Path(run_dir)

    if "run.yaml" in hashes and record and record.get("config_sha256") != hashes["run.yaml"]:
        findings.append(Finding("run.yaml", "inconsistent", "sha256 differs from release.json's config_sha256"))
    if "run.yaml" not in scan.files:
        findings.append(Finding("run.yaml", "missing", "the run's config is missing"))

    manifest = _read_json(run_dir, MANIFEST_FILE, scan, findings)
    fingerprint = _check_data(run_dir, manifest, record, scan, hashes, findings)
    _check_checkpoints(run_dir, record, scan, hashes, fingerprint, findings)
    return findings


def _chunk_path(file: str) -> str:
    return file if file.startswith("data/") else f"data/{file}"


def _check_data(run_dir: Path, manifest, record: dict, scan: Scan, hashes: dict[str, str],
                findings: list[Finding]) -> str | None:
    """Chunks against the manifest; returns the manifest's fingerprint when it holds."""
    m = MANIFEST_FILE
    if manifest is None:
        if not any(f.path == m for f in findings):
            findings.append(Finding(m, "missing", "the data manifest is missing") if m not in scan.files
                            else Finding(m, "invalid", "could not be read"))
        return None
    chunks, stages = _list(manifest.get("chunks")), _list(manifest.get("stages"))
    named: set[str] = set()
    for i, chunk in enumerate(chunks):
        if not isinstance(chunk, dict):
            findings.append(Finding(m, "invalid", f"chunk {i} is not an object"))
        elif chunk.get("index", i) != i:
            findings.append(Finding(m, "inconsistent", f"chunk {i} has index {brief(chunk.get('index'))}"))
    for what, file, digest in _manifest_files(manifest):
        why = unsafe_path(file)
        if why is not None:
            findings.append(Finding(m, "unsafe", f"{what}: {shown(str(file))} {why}; not opened"))
            continue
        rel = _chunk_path(file)
        named.add(rel)
        if rel not in scan.files:
            findings.append(Finding(rel, "missing", f"{what} in data/manifest.json, but the file is missing"))
        elif rel in hashes and hashes[rel] != digest:
            findings.append(Finding(rel, "inconsistent", f"sha256 differs from data/manifest.json ({what})"))
    for rel in sorted(scan.files):
        if rel.startswith("data/chunks/") and rel not in named and (rel.endswith(".npy") or rel.endswith(".parquet")):
            findings.append(Finding(rel, "extra", "a chunk file that data/manifest.json does not list"))
    planned = sum(s.get("chunks", 0) for s in stages if isinstance(s, dict) and isinstance(s.get("chunks"), int))
    if stages and planned != len(chunks):
        findings.append(Finding(m, "inconsistent", f"{len(chunks)} chunks listed, the stages make {planned}"))
    released = (record.get("data") or {}).get("chunks") if isinstance(record.get("data"), dict) else None
    if record and released is not None and released != len(chunks):
        findings.append(Finding(m, "inconsistent", f"{len(chunks)} chunks, release.json says {released}"))

    fingerprint = manifest.get("fingerprint")
    recomputed = _recompute_fingerprint(manifest)
    if recomputed != fingerprint:
        findings.append(Finding(m, "inconsistent", "the fingerprint recomputed from the manifest differs from the "
                                                   "one it records"))
        fingerprint = None
    if record and record.get("data_fingerprint") != manifest.get("fingerprint"):
        findings.append(Finding(m, "inconsistent", "its fingerprint differs from release.json's data_fingerprint"))
    return fingerprint


def _recompute_fingerprint(manifest: dict) -> str:
    try:
        return compute_fingerprint(manifest)
    except Exception as e:  # a malformed manifest
        return f"(cannot be computed: {type(e).__name__})"


def _manifest_files(manifest: dict):
    """(what, path under data/, sha256) of every file the manifest hashes."""
    def entry(what: str, item: object, key: str = "file", digest: str = "sha256"):
        if isinstance(item, dict) and (item.get(key) is not None or item.get(digest) is not None):
            yield what, item.get(key), item.get(digest)

    yield from entry("the tokenizer", manifest.get("tokenizer"))
    yield from entry("the documents", manifest.get("documents"))
    for i, chunk in enumerate(_list(manifest.get("chunks"))):
        yield from entry(f"chunk {i}", chunk)
        yield from entry(f"chunk {i} spans", chunk, "spans_file", "spans_sha256")
    for item in _list(manifest.get("heldout")):
        name = brief(item.get("source")) if isinstance(item, dict) else "?"
        yield from entry(f"held-out rows of {name}", item)
        yield from entry(f"held-out spans of {name}", item, "spans_file", "spans_sha256")


def _list(value: object) -> list:
    return value if isinstance(value, list) else []


def _checkpoint_of(rel: str) -> str | None:
    parts = rel.split("/")
    if len(parts) >= 3 and parts[0] == CHECKPOINTS_DIR and is_checkpoint_name(parts[1]):
        return parts[1]
    return None


def _check_checkpoints(run_dir: Path, record: dict, scan: Scan, hashes: dict[str, str], fingerprint: str | None,
                       findings: list[Finding]) -> None:
    folders: dict[str, list[str]] = {}
    for rel in scan.files:
        name = _checkpoint_of(rel)
        if name is not None:
            folders.setdefault(name, []).append(rel)
    manifest = _read_json(run_dir, MANIFEST_FILE, scan)
    rule = step_rule_of(manifest)  # None when the manifest cannot say it (already a finding)
    tokens_per_step = None
    if isinstance(manifest, dict) and isinstance(manifest.get("global_batch_rows"), int) \
            and isinstance(manifest.get("seq_len"), int):
        tokens_per_step = manifest["global_batch_rows"] * manifest["seq_len"]

    for name, files in sorted(folders.items()):
        base = f"checkpoints/{name}"
        sums = _read_checksums(run_dir, f"{base}/{CHECKSUMS_FILE}", scan)
        if sums is None:
            findings.append(Finding(f"{base}/{CHECKSUMS_FILE}", "missing", "the checkpoint has no checksums "
                                                                          "(an incomplete write)"))
            continue
        present = {rel[len(base) + 1:] for rel in files} - {CHECKSUMS_FILE}
        for inner, digest in sorted(sums.items()):
            why = unsafe_path(inner)
            if why is not None:
                findings.append(Finding(f"{base}/{CHECKSUMS_FILE}", "unsafe", f"lists {shown(inner)}, which {why}"))
            elif inner not in present:
                findings.append(Finding(f"{base}/{inner}", "missing", "in the checkpoint's CHECKSUMS.sha256 but missing"))
            elif f"{base}/{inner}" in hashes and hashes[f"{base}/{inner}"] != digest:
                findings.append(Finding(f"{base}/{inner}", "inconsistent", "sha256 differs from the checkpoint's "
                                                                          "CHECKSUMS.sha256"))
        for inner in sorted(present - set(sums)):
            findings.append(Finding(f"{base}/{inner}", "extra", "not in the checkpoint's CHECKSUMS.sha256"))
        state = _read_json(run_dir, f"{base}/{STATE_FILE}", scan, findings)
        if isinstance(state, dict) and fingerprint and state.get("fingerprint") not in (None, fingerprint):
            findings.append(Finding(f"{base}/{STATE_FILE}", "inconsistent",
                                    "trained on data with another fingerprint than data/manifest.json's"))

    if not record:
        return
    table = record.get("checkpoints")
    if not isinstance(table, list):
        findings.append(Finding(RELEASE_FILE, "invalid", "has no checkpoint table"))
        return
    in_table = set()
    for row in table:
        name = row.get("name") if isinstance(row, dict) else None
        if not isinstance(name, str) or not is_checkpoint_name(name):
            findings.append(Finding(RELEASE_FILE, "invalid", f"checkpoint table entry {brief(name)} is not a "
                                                             "checkpoint name"))
            continue
        in_table.add(name)
        base = f"checkpoints/{name}"
        if name not in folders:
            findings.append(Finding(base, "missing", "in release.json's checkpoint table, but the folder is missing"))
            continue
        if rule is not None:
            steps = checkpoint_order(name, rule)[0]
            if row.get("step") != steps or row.get("chunks_seen") != rule.chunks_seen(steps):
                findings.append(Finding(base, "inconsistent", f"release.json says step {brief(row.get('step'))}, chunks_seen "
                                                              f"{brief(row.get('chunks_seen'))}; the name means step {steps}"))
        state = _read_json(run_dir, f"{base}/{STATE_FILE}", scan)
        if isinstance(state, dict):
            tokens = state.get("tokens")
            if tokens is None and rule is not None and tokens_per_step:
                tokens = checkpoint_order(name, rule)[0] * tokens_per_step
            if tokens is not None and row.get("tokens") != tokens:
                findings.append(Finding(base, "inconsistent", f"release.json says {brief(row.get('tokens'))} tokens, the "
                                                              f"checkpoint's state says {brief(tokens)}"))
    for name in sorted(set(folders) - in_table):
        findings.append(Finding(f"checkpoints/{name}", "extra", "a checkpoint not in release.json's checkpoint table"))


def _damaged_records(run_dir: Path, hashes: dict[str, str]) -> list[Finding]:
    """A finding per line of a record log (metrics/*.jsonl, analysis/**/*.jsonl) that is not a JSON
    record: a torn line hides what it held, and readers skip it."""
    findings = []
    for rel in sorted(hashes):
        parts = rel.split("/")
        if not rel.endswith(".jsonl") or not (parts[0] == METRICS_DIR and len(parts) == 2 or parts[0] == ANALYSIS_DIR):
            continue
        bad = _bad_lines(run_dir / rel)
        for number in bad[:TORN_LINES_SHOWN]:
            findings.append(Finding(rel, "invalid", "not a JSON record (a torn or damaged line)", line=number))
        if len(bad) > TORN_LINES_SHOWN:
            findings.append(Finding(rel, "invalid", f"and {len(bad) - TORN_LINES_SHOWN} more damaged lines"))
    return findings


def _bad_lines(path: Path) -> list[int]:
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return []
    bad = []
    with os.fdopen(fd, "rb") as f:
        for number, line in enumerate(f, start=1):
            if line.strip() and _parse_object("", line, None) is None:
                bad.append(number)
    return bad


# -- the command ------------------------------------------------------------------------------


def _signature_line(result: Verification) -> str:
    if result.signature == "verified":
        return f"signed by {shown(result.signed_by or '')}: a good signature of release.json"
    if result.signature == "not checked":
        return "signed, not checked (give --allowed-signers)"
    return result.signature  # none, or not verified (a finding says why)


def cli_verify(args) -> int:
    from rich.console import Console
    from rich.markup import escape

    result = check(Path(args.run), progress=not args.json, expect=args.expect, allowed_signers=args.allowed_signers)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
        return 0 if result.verified else 1
    console = Console(highlight=False, soft_wrap=True)  # one finding per line, whatever the width
    c = result.counts()
    kinds = ", ".join(f"{c[k]} {k}" for k in ("changed", "missing", "extra", "unsafe", "inconsistent", "invalid")
                      if c.get(k))
    console.print(f"[bold]llm360 verify[/bold] {escape(result.run)}")
    console.print(f"  files        {c['files']} listed in release.json, {c['bytes'] / 1e6:,.1f} MB hashed")
    console.print(f"  data         {c['chunks']} chunks")
    console.print(f"  checkpoints  {c['checkpoints']}")
    console.print(f"  signature    {_signature_line(result)}", markup=False)
    console.print(f"  findings     {c['findings']}" + (f" ({kinds})" if kinds else ""))
    for f in result.findings:
        console.print(f"  [red]x[/red] {escape(str(f))}  [dim]({f.kind})[/dim]")
    if result.verified:
        console.print("[bold green]verified[/bold green]: every file matches release.json and the run is consistent")
        return 0
    console.print(f"[bold red]not verified[/bold red]: {len(result.findings)} finding(s)")
    return 1
