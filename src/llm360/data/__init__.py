"""Data: raw sources -> tokenizer, documents, rows, stages and chunks in exact training order.

    from llm360.data import RunData, batch_at, prepare

- `prepare(cfg, run_dir)` builds RUN/data (prepare.py; the steps are in sources.py, tokenizer.py,
  encode.py and assemble.py, in that order).
- `RunData(run_dir)` reads it: the step rule, held-out rows, provenance (store.py).
"""

from __future__ import annotations

__all__ = ["RunData", "batch_at", "compute_fingerprint", "prepare"]


def __getattr__(name: str):
    # imported on use, so `import llm360.data` stays light
    if name in ("RunData", "batch_at", "compute_fingerprint"):
        from llm360.data import store

        return getattr(store, name)
    if name == "prepare":
        from llm360.data.prepare import prepare

        return prepare
    raise AttributeError(name)
