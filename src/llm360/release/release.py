"""`llm360 release RUN`: the cards, the report and release.json (docs/run-directory.md §7).

    make_release(run_dir)   # MODEL_CARD.md, DATA_CARD.md, report/index.html, release.json
    release_root(run_dir)   # sha256 of release.json: the value to publish (llm360.release.root)
    make_release(run_dir, sign_key="~/.ssh/id_ed25519")  # and release.json.sig (llm360.release.signature)

release.json lists every file under RUN (but itself and its signature) with its size and sha256, next to the
checkpoint table, the config hash and the data fingerprint; `llm360 verify` checks a run against
it. A release is refused when the run would not verify (a damaged checkpoint, a chunk that does
not match the manifest, a symbolic link), so what gets published is always consistent.

Releasing again is cheap: the hash of a file is taken from the previous release.json when the file
has not been written to (nor had its metadata changed: ctime) since that release began. Only
`created` changes when nothing else did, and with it the release root that two documents show.
"""

from __future__ import annotations

import json
import os
import platform
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from llm360 import __version__
from llm360.errors import UserError
from llm360.release import cards, report, signature
from llm360.release.facts import Facts, gather
from llm360.release.files import hash_files, link_leaves, parse_json, scan_tree
from llm360.release.root import SIGNATURE_FILE, normal_form, with_root
from llm360.release.verify import consistency
from llm360.rundir import DATA_CARD, MODEL_CARD, RELEASE_FILE, RELEASE_FORMAT
from llm360.rundir import REPORT_FILE as REPORT
from llm360.utils import atomic_write_bytes, atomic_write_text, finite_json, sha256_bytes, sha256_file

PACKAGES = ("torch", "numpy", "safetensors", "tokenizers", "pyarrow", "pyyaml", "pydantic", "transformers")
CACHE_MARGIN_NS = 2_000_000_000  # clocks and file systems with coarse timestamps: stay on the safe side


def software_versions() -> dict:
    versions = {"llm360": __version__, "python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_utc(text: object) -> float | None:
    try:
        return datetime.strptime(str(text), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return None


def previous_hashes(run_dir: Path, scan) -> dict[str, str]:
    """Hashes from the previous release.json that still hold: files unchanged since it began."""
    path = run_dir / RELEASE_FILE
    if RELEASE_FILE not in scan.files:
        return {}
    try:
        old = parse_json(path.read_bytes())  # a stranger's: damage of any kind means no cache
        began = _parse_utc(old.get("created"))
        entries = old.get("files") or []
    except (OSError, ValueError, AttributeError):
        return {}
    if began is None:
        return {}
    limit = int(began * 1e9) - CACHE_MARGIN_NS
    known = {}
    for e in entries:
        if not isinstance(e, dict):
            continue
        st = scan.files.get(e.get("path"))
        if (st is not None and st.st_size == e.get("bytes") and isinstance(e.get("sha256"), str)
                and st.st_ctime_ns < limit and st.st_mtime_ns < limit):
            known[e["path"]] = e["sha256"]
    return known


def release_record(facts: Facts, created: float, files: list[dict], config_sha256: str | None) -> dict:
    env = facts.env
    m = facts.model
    return {
        "format": RELEASE_FORMAT,
        "run": facts.name,
        "created": _utc(created),
        "software": software_versions(),
        "training_environment": {k: env[k] for k in ("llm360", "git_commit", "python", "torch", "cuda", "device",
                                                      "gpu", "gpu_count", "world_size", "start_time") if k in env},
        "config_sha256": config_sha256,
        "data_fingerprint": facts.fingerprint,
        "model": {"parameters": m.get("parameters"),
                  "architecture": {k: v for k, v in m.items() if not k.startswith("parameters")}},
        "data": {"chunks": len(facts.chunks), "stages": [s.get("name") for s in facts.stages],
                 "sources": [s.get("name") for s in facts.sources], "seq_len": facts.seq_len,
                 "global_batch_rows": facts.batch_rows, "steps_per_chunk": facts.steps_per_chunk},
        "tokens_trained": facts.tokens_trained,
        "steps_trained": facts.steps_done,
        "checkpoints": [{k: c[k] for k in ("name", "step", "tokens", "chunks_seen", "weights_sha256", "weights_dtype")}
                        for c in facts.checkpoints],
        "documents": {"model_card": MODEL_CARD, "data_card": DATA_CARD, "report": REPORT},
        "totals": {"files": len(files), "bytes": sum(f["bytes"] for f in files)},
        "files": files,
    }


def _check_tree(run_dir: Path) -> None:
    """Refuse links, special files and interrupted checkpoint writes; drop our own stale temporaries."""
    for name in (RELEASE_FILE, SIGNATURE_FILE, MODEL_CARD, DATA_CARD, REPORT):
        path = run_dir / name
        for tmp in path.parent.glob(f".{path.name}.*.tmp") if path.parent.is_dir() else []:
            if tmp.is_file() and not tmp.is_symlink():
                tmp.unlink()  # left by an interrupted release (llm360.utils.atomic_write_bytes)
    scan = scan_tree(run_dir)
    unfinished = sorted({rel.split("/")[1] for rel in scan.files if rel.startswith("checkpoints/.")})
    if unfinished:
        raise UserError(f"cannot release {run_dir}: checkpoints/{unfinished[0]} is an interrupted checkpoint write; "
                        "`llm360 train RUN` removes it (or delete it) before a release")
    bad = [f"{rel} is a symbolic link" + (" pointing outside the run" if link_leaves(run_dir, rel, target) else "")
           for rel, target in sorted(scan.links.items())]
    bad += [f"{rel} is {what}" for rel, what in sorted(scan.odd.items())]
    if bad:
        raise UserError(f"cannot release {run_dir}: a release holds regular files only; " + "; ".join(bad[:5]))


def make_release(run_dir: str | Path, progress: bool = False, sign_key: str | Path | None = None) -> dict:
    """Write the cards, the report and release.json (signed with `sign_key`, an ssh key, when
    given); return the release record."""
    run_dir = Path(run_dir)
    if not (run_dir / "run.yaml").is_file():
        raise UserError(f"{run_dir} is not a run directory (no run.yaml)")
    if sign_key is not None:
        signature.ssh_keygen()  # refuse before the work when it cannot sign
    created = time.time()
    _check_tree(run_dir)
    facts = gather(run_dir)
    config_sha256 = sha256_file(run_dir / "run.yaml")

    # the documents first: they are files of the release too; the two that show the root are
    # listed in their normal form and written once the root is known (llm360.release.root)
    _write_if_changed(run_dir / DATA_CARD, cards.data_card(facts))
    rooted = {MODEL_CARD: normal_form(cards.model_card(facts, config_sha256).encode("utf-8")),
              REPORT: normal_form(report.render(facts, config_sha256).encode("utf-8"))}

    scan = scan_tree(run_dir)
    listed = {rel: st for rel, st in scan.files.items() if rel not in (RELEASE_FILE, SIGNATURE_FILE, *rooted)}
    hashes = hash_files(run_dir, listed, progress=progress, known=previous_hashes(run_dir, scan),
                        label="hashing the release")
    missing = sorted(set(listed) - set(hashes))
    if missing:
        raise UserError(f"cannot release {run_dir}: could not read {', '.join(missing[:5])}")
    files = [{"path": rel, "bytes": listed[rel].st_size, "sha256": hashes[rel]} for rel in listed]
    files += [{"path": rel, "bytes": len(data), "sha256": sha256_bytes(data)} for rel, data in rooted.items()]
    record = release_record(facts, created, sorted(files, key=lambda f: f["path"]), config_sha256)

    found = consistency(run_dir, record, scan, hashes)
    if found:
        raise UserError(f"cannot release {run_dir}, it would not verify: "
                        + "; ".join(str(f) for f in found[:5]) + (f" (and {len(found) - 5} more)" if len(found) > 5 else ""))
    data = (json.dumps(finite_json(record)[0], indent=2, allow_nan=False) + "\n").encode("utf-8")
    # signed before release.json is replaced: a key that cannot sign leaves the previous release whole
    signed = signature.sign(data, sign_key) if sign_key is not None else None
    (run_dir / SIGNATURE_FILE).unlink(missing_ok=True)  # it signed the release.json being replaced
    atomic_write_bytes(run_dir / RELEASE_FILE, data)
    os.chmod(run_dir / RELEASE_FILE, 0o644)  # a release is for others to read, whatever the umask
    if signed is not None:
        atomic_write_bytes(run_dir / SIGNATURE_FILE, signed)
        os.chmod(run_dir / SIGNATURE_FILE, 0o644)
    root = sha256_bytes(data)
    for rel, data in rooted.items():
        _write_if_changed(run_dir / rel, with_root(data, root).decode("utf-8"))
    return record


def release_root(run_dir: str | Path) -> str:
    """The release root: sha256 of release.json's bytes, which anchors every file of the release."""
    return sha256_file(Path(run_dir) / RELEASE_FILE)


def _write_if_changed(path: Path, text: str) -> None:
    """Leave a file alone (and its cached hash valid) when its content would not change."""
    try:
        if path.is_file() and not path.is_symlink() and path.read_text(encoding="utf-8") == text:
            return
    except (OSError, UnicodeDecodeError):
        pass
    atomic_write_text(path, text)
    os.chmod(path, 0o644)  # a release is for others to read (the atomic write leaves 0600)


def cli_release(args) -> int:
    from rich.console import Console
    from rich.markup import escape

    console = Console(stderr=True)
    record = make_release(Path(args.run), progress=True, sign_key=args.sign_key)
    totals = record["totals"]
    console.print(f"released [bold]{escape(str(record['run']))}[/bold]: {totals['files']} files, "
                  f"{totals['bytes'] / 1e6:,.1f} MB, {len(record['checkpoints'])} checkpoints, "
                  f"data fingerprint {str(record['data_fingerprint'])[:16]}", markup=True, highlight=False)
    for rel in (MODEL_CARD, DATA_CARD, REPORT, RELEASE_FILE):
        console.print(f"  {Path(args.run) / rel}", markup=False, highlight=False)
    if args.sign_key is not None:
        console.print(f"  {Path(args.run) / SIGNATURE_FILE} (release.json signed with {args.sign_key}; "
                      "`llm360 verify RUN --allowed-signers FILE` checks it)", markup=False, highlight=False,
                      soft_wrap=True)  # a path to copy: never broken
    # on stdout, alone: the one value to publish (ROOT=$(llm360 release RUN | cut -d' ' -f3))
    print(f"release root {release_root(args.run)}")
    console.print("  publish it; `llm360 verify RUN --expect ROOT` then checks every byte against it",
                  markup=False, highlight=False)
    return 0
