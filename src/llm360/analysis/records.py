"""Reading the memorization records (analysis/memorization/): what the plots, the report and
the analysis itself read back."""

from __future__ import annotations

from pathlib import Path

from llm360.rundir import MEMORIZATION_DIR
from llm360.utils import read_jsonl


def out_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / MEMORIZATION_DIR


def read_summary(run_dir: str | Path) -> list[dict]:
    """The latest summary record of each (checkpoint, chunk), in file order."""
    latest: dict[tuple, dict] = {}
    for rec in read_jsonl(out_dir(run_dir) / "summary.jsonl"):
        key = (rec.get("checkpoint"), rec.get("chunk"))
        latest.pop(key, None)
        latest[key] = rec
    return list(latest.values())


def read_scores(run_dir: str | Path):
    """scores.parquet as a pyarrow table (None when there is none yet)."""
    import pyarrow.parquet as pq

    path = out_dir(run_dir) / "scores.parquet"
    return pq.read_table(path) if path.exists() else None
