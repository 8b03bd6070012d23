"""Data: raw sources -> tokenizer, documents, rows, stages and chunks in exact training order.

    from llm360.data import RunData, batch_at, prepare

- `prepare(cfg, run_dir)` builds RUN/data (prepare.py; the steps are in sources.py, tokenizer.py,
  encode.py and assemble.py, in that order).
- `RunData(run_dir)` reads it: the step rule, held-out rows, provenance (store.py).
- Fine-tuning data: chat.py reads conversations and preference pairs, chat_template.py turns
  them into ids and loss masks, chat_rows.py packs or pads them into rows, chat_demo.py writes
  a demo set from the standard library.
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
