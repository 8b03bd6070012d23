"""`llm360 data batch` and `llm360 data export-llm360`: looking at what the model trains on."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from llm360.data.store import RunData, batch_at
from llm360.errors import UserError
from llm360.rundir import pad_width
from llm360.utils import fsync_dir

# C0 and C1 control characters but newline and tab: ESC, BEL, CR... in a corpus must not reach
# the terminal raw (an escape sequence in a document could clear or rewrite the user's screen)
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """`text` with control characters (but newline and tab) shown as `\\xNN` escapes."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def cli_batch(args) -> int:
    data = RunData(args.run)
    rows = batch_at(data, args.step)
    if args.json:
        print(json.dumps({"step": args.step, "chunk": rows[0]["chunk"] if rows else None,
                          "fingerprint": data.fingerprint, "rows": rows}, ensure_ascii=False))
        return 0
    c, first = data.step_location(args.step)
    stage = data.stage_of_chunk(c)
    print(printable(f"step {args.step}: chunk {c} (stage {stage.index} {stage.name}), rows {first}.."
                    f"{first + data.global_batch_rows - 1} of {data.rows_in_chunk(c)}; fingerprint {data.fingerprint[:16]}"))
    for row in rows:
        print(printable(f"\n=== row {row['row']}  source {row['source']}"))
        for s in row["spans"]:
            end = s["doc_token_offset"] + s["length"]
            print(printable(f"    doc {s['doc_id']} {s['uri']} tokens [{s['doc_token_offset']}:{end}] at row offset {s['offset']}"
                            + _fim_note(s)))
        print(printable(row["text"]))
    return 0


def _fim_note(span: dict) -> str:
    """How FIM rearranged a span (data/fim.py), or "" when it did not."""
    if not span.get("fim"):
        return ""
    return (f", FIM {span['fim'].upper()}: prefix {span['fim_prefix']}, middle {span['fim_middle']}, "
            f"suffix {span['fim_suffix']} tokens (its last 3 dropped for the FIM tokens)")


def export_llm360(run: str | Path | RunData, out: str | Path, progress: bool = False) -> list[Path]:
    """Write train_000.jsonl ... : one {"token_ids": [...], "source": "..."} per row, training order."""
    data = run if isinstance(run, RunData) else RunData(run)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    width = pad_width(data.n_chunks)
    written = []
    from rich.progress import Progress

    with Progress(disable=not progress, transient=False) as bar:
        task = bar.add_task("export chunks", total=data.n_chunks)
        for c in range(data.n_chunks):
            chunk = data.chunk(c)
            sources = data.row_sources(c)
            path = out / f"train_{c:0{width}d}.jsonl"
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            # streamed (a chunk's JSON may not fit in memory), then fsynced and renamed like
            # utils.atomic_write_bytes does
            with open(tmp, "w", encoding="utf-8") as f:
                for start in range(0, len(chunk), 4096):
                    block = chunk[start : start + 4096].tolist()
                    f.write("".join(
                        '{"token_ids": [' + ", ".join(map(str, ids)) + '], "source": ' + json.dumps(sources[start + i]) + "}\n"
                        for i, ids in enumerate(block)
                    ))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            written.append(path)
            bar.advance(task)
    fsync_dir(out)
    return written


def cli_export_llm360(args) -> int:
    data = RunData(args.run)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a folder")
    files = export_llm360(data, out, progress=True)
    print(f"wrote {len(files)} files ({files[0].name} .. {files[-1].name}) to {out}" if files else f"no chunks in {args.run}")
    return 0
