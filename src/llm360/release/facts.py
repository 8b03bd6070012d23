"""The facts of a run, gathered once from its files, for the cards, the report and release.json.

Everything here is read as data (JSON, YAML, safetensors headers, numpy arrays without pickles);
a missing or malformed piece is left empty rather than failing, because a report on a half
finished run is still worth having: a value of the wrong type is dropped, a damaged JSONL line is
skipped with a warning on stderr naming it (the other lines are kept). Evaluation and memorization
records are optional.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from llm360.model.args import model_args, num_params
from llm360.release.files import unsafe_path
from llm360.rundir import (EVAL_LOG, EVENTS_LOG, MANIFEST_FILE, MEMORIZATION_DIR, STATE_FILE, TRAIN_LOG,
                           CONTAMINATION_SUMMARY, RunDir, StepRule, read_checksums, step_rule_of)
from llm360.release.files import parse_json, shallow
from llm360.utils import read_jsonl_report

FIRST_BATCH_ROWS = 4  # rows of step 0 shown decoded in the report


@dataclass
class Facts:
    run_dir: Path
    name: str
    config: dict = field(default_factory=dict)  # run.yaml, as parsed
    env: dict = field(default_factory=dict)
    manifest: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)  # architecture, parameters
    checkpoints: list[dict] = field(default_factory=list)  # the release table, oldest first
    train: list[dict] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    memorization: list[dict] = field(default_factory=list)
    contamination: dict = field(default_factory=dict)  # analysis/contamination/summary.json
    steps_per_chunk: int = 1
    batch_rows: int = 1
    seq_len: int = 0

    # -- derived ----------------------------------------------------------------------------

    @property
    def chunks(self) -> list[dict]:
        return list(self.manifest.get("chunks") or [])

    @property
    def stages(self) -> list[dict]:
        return list(self.manifest.get("stages") or [])

    @property
    def sources(self) -> list[dict]:
        return list(self.manifest.get("sources") or [])

    @property
    def fingerprint(self) -> str | None:
        value = self.manifest.get("fingerprint")
        return value if isinstance(value, str) else None  # the cards slice and show it

    @property
    def rule(self) -> StepRule:
        """The step rule as the manifest says it (stages may have their own steps per chunk)."""
        return step_rule_of(self.manifest) or StepRule.uniform(self.steps_per_chunk, len(self.chunks), self.batch_rows)

    @property
    def total_steps(self) -> int:
        return self.rule.total_steps

    def stage_steps(self, first_chunk: int, chunks: int) -> tuple[int, int]:
        """(first step, end step) of the chunks first_chunk .. first_chunk + chunks - 1."""
        return self.rule.first_step(first_chunk), self.rule.end(first_chunk + chunks - 1)

    @property
    def tokens_per_step(self) -> int:
        return self.batch_rows * self.seq_len

    @property
    def steps_done(self) -> int:
        return max((c["step"] for c in self.checkpoints), default=0)

    @property
    def tokens_trained(self) -> int:
        return max((c["tokens"] for c in self.checkpoints), default=0)

    @property
    def final_loss(self) -> float | None:
        for record in reversed(self.train):
            if _finite(record.get("loss")):
                return record["loss"]
        return None

    def events_of(self, *kinds: str) -> list[dict]:
        return [e for e in self.events if e.get("kind") in kinds]

    def skipped_batches(self) -> list[dict]:
        """Every batch left out of training: {step, chunk, rows, reason}, by step."""
        seen: dict[int, dict] = {}
        for event in self.events_of("skip_batch"):
            for item in event.get("skipped") or []:
                if isinstance(item, dict) and isinstance(item.get("step"), int):
                    seen[item["step"]] = {**item, "reason": event.get("reason")}
        return [seen[s] for s in sorted(seen)]

    def stage_of_chunk(self, chunk: int) -> dict | None:
        for stage in self.stages:
            first = stage.get("first_chunk", 0)
            if first <= chunk < first + stage.get("chunks", 0):
                return stage
        return None


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _read_json(path: Path) -> dict:
    try:
        value = parse_json(path.read_bytes())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _read_records(path: Path) -> list[dict]:
    """The records of a JSONL file, each damaged line named on stderr and skipped."""
    try:
        records, bad = read_jsonl_report(path)
    except OSError:
        return []
    for number in bad:
        _warn(f"{path}:{number} is not a JSON record (a torn or damaged line); skipped")
    kept = [r for r in records if shallow(r)]
    if len(kept) < len(records):
        _warn(f"{path}: {len(records) - len(kept)} record(s) nested too deeply to be data; skipped")
    return kept


def _warn(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr)


def _latest(records: list[dict], key: tuple[str, ...]) -> list[dict]:
    """The last record of each key (files are appended to; a redo supersedes), in file order."""
    latest: dict[tuple, dict] = {}
    for r in records:
        k = tuple(str(r.get(part)) for part in key)
        latest.pop(k, None)
        latest[k] = r
    return list(latest.values())


def read_config(run_dir: Path) -> dict:
    try:
        tree = yaml.safe_load((run_dir / "run.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError, RecursionError):
        return {}
    return tree if isinstance(tree, dict) and shallow(tree) else {}


def _section(tree: dict, key: str) -> dict:
    value = tree.get(key)
    return value if isinstance(value, dict) else {}


def gather(run_dir: str | Path) -> Facts:
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    manifest = _usable_manifest(_read_json(run_dir / MANIFEST_FILE))
    train_cfg, data_cfg = _section(config, "train"), _section(config, "data")
    facts = Facts(
        run_dir=run_dir,
        name=str(config.get("name") or run_dir.name),
        config=config,
        env=_read_json(run_dir / "env.json"),
        manifest=manifest,
        train=_read_records(run_dir / TRAIN_LOG),
        events=_read_records(run_dir / EVENTS_LOG),
        evals=_read_records(run_dir / EVAL_LOG),
        memorization=_latest(_read_records(run_dir / MEMORIZATION_DIR / "summary.jsonl"),
                             ("checkpoint", "chunk")),
        contamination=_read_json(run_dir / CONTAMINATION_SUMMARY),
        steps_per_chunk=_count(manifest.get("steps_per_chunk"), train_cfg.get("steps_per_chunk"), 1),
        batch_rows=_count(manifest.get("global_batch_rows"), train_cfg.get("global_batch_rows"), 1),
        seq_len=_count(manifest.get("seq_len"), data_cfg.get("seq_len"), 0),
    )
    facts.checkpoints = checkpoint_table(run_dir, facts.rule, facts.tokens_per_step)
    facts.model = model_facts(run_dir, facts)
    return facts


def _list(value: object) -> list:
    return value if isinstance(value, list) else []


def _usable_manifest(manifest: dict) -> dict:
    """The manifest with every list of records holding objects only, and its objects objects:
    a damaged manifest reports what is left rather than failing on the first wrong type."""
    out = dict(manifest)
    for key in ("chunks", "stages", "sources", "heldout"):
        items = out.get(key)
        out[key] = [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []
    for key in ("tokenizer", "documents"):
        if not isinstance(out.get(key), dict):
            out.pop(key, None)
    return out


def _count(*candidates: object) -> int:
    """The first candidate that is a positive whole number (the last one is the default)."""
    for value in candidates[:-1]:
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return candidates[-1]


# -- checkpoints --------------------------------------------------------------------------------


def checkpoint_table(run_dir: Path, rule: StepRule, tokens_per_step: int) -> list[dict]:
    """name, step (optimizer steps the weights have seen), tokens, chunks_seen, per checkpoint."""
    rows = []
    for info in RunDir(run_dir).checkpoints(rule):
        state = _read_json(info.path / STATE_FILE)
        tokens = state.get("tokens")
        sums = read_checksums(info.path)
        rows.append({
            "name": info.name,
            "step": info.steps_done,
            "tokens": int(tokens) if _finite(tokens) else info.steps_done * tokens_per_step,
            "chunks_seen": rule.chunks_seen(info.steps_done),
            "weights_sha256": sums.get("model.safetensors") or sums.get("model.safetensors.index.json"),
            "weights_dtype": _read_json(info.path / "config.json").get("torch_dtype"),  # train.checkpoint_dtype
            "skipped_steps": [s for s in _list(state.get("skipped_steps")) if isinstance(s, int)],
        })
    return rows


# -- model --------------------------------------------------------------------------------------


def model_facts(run_dir: Path, facts: Facts) -> dict:
    """Architecture and parameter count, from a checkpoint's config.json (else from the config)."""

    args = None
    for row in reversed(facts.checkpoints):
        try:
            from llm360.model.hf import load_args

            args = load_args(run_dir / "checkpoints" / row["name"])
            break
        except Exception:  # a damaged config.json: try an older checkpoint
            continue
    preset = _section(facts.config, "model").get("preset")
    if args is None:
        args = _args_from_config(facts)
    if args is None:
        return {"preset": preset}
    return {
        "preset": preset,
        "vocab_size": args.vocab_size,
        "dim": args.dim,
        "n_layers": args.n_layers,
        "n_heads": args.n_heads,
        "n_kv_heads": args.n_kv_heads,
        "head_dim": args.head_dim,
        "ffn_dim": args.ffn_dim,
        "max_seq_len": args.max_seq_len,
        "rope_theta": args.rope_theta,
        "norm_eps": args.norm_eps,
        "tie_embeddings": args.tie_embeddings,
        "parameters": num_params(args),
        "parameters_without_embedding": num_params(args, exclude_embedding=True),
    }


def _args_from_config(facts: Facts):

    model_cfg = _section(facts.config, "model")
    overrides = {k: v for k, v in model_cfg.items() if k != "preset" and v is not None}
    vocab = (facts.manifest.get("tokenizer") or {}).get("vocab_size") if isinstance(
        facts.manifest.get("tokenizer"), dict) else None
    if vocab and "vocab_size" not in overrides:
        overrides["vocab_size"] = vocab
    try:
        return model_args(str(model_cfg.get("preset") or "demo"), **overrides)
    except Exception:
        return None


# -- the rows of step 0 ----------------------------------------------------------------------------


def first_batch(facts: Facts, max_rows: int = FIRST_BATCH_ROWS) -> list[dict]:
    """The first rows that step 0 trained on, decoded, with their documents (docs/run-directory.md §4).

    Returns [] when the data cannot be read; this is an illustration, never a check.
    """
    try:
        return _first_batch(facts, max_rows)
    except Exception:
        return []


def _first_batch(facts: Facts, max_rows: int) -> list[dict]:
    import numpy as np

    if not facts.chunks:
        return []
    chunk = facts.chunks[0]
    data = facts.run_dir / "data"
    file = _inside(data, chunk.get("file") or "chunks/chunk_000.npy")
    if file is None:
        return []
    rows = np.load(file, mmap_mode="r", allow_pickle=False)
    n = min(max_rows, facts.batch_rows, rows.shape[0])
    tokenizer = _tokenizer(data / "tokenizer" / "tokenizer.json")
    spans = _spans(data, chunk, n)
    documents = _documents(data, {d for s in spans.values() for d in s})
    out = []
    for row in range(n):
        ids = [int(t) for t in rows[row]]
        docs = [documents.get(d, {"doc_id": d}) for d in spans.get(row, [])]
        sources = sorted({str(d["source"]) for d in docs if d.get("source") is not None})
        out.append({
            "chunk": int(chunk.get("index", 0)),
            "row": row,
            "sources": sources,
            "documents": docs[:6],
            "text": tokenizer.decode(ids, skip_special_tokens=False) if tokenizer else None,
            "tokens": len(ids),
        })
    return out


def _inside(root: Path, rel: str) -> Path | None:

    if unsafe_path(rel) is not None:
        return None
    path = root / rel
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return None
    return path if path.is_file() else None


def _tokenizer(path: Path):
    if not path.is_file():
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path))


def _spans(data: Path, chunk: dict, n_rows: int) -> dict[int, list]:
    rel = chunk.get("spans_file") or str(chunk.get("file", "")).replace(".npy", ".spans.parquet")
    path = _inside(data, rel)
    if path is None:
        return {}
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["row", "doc_id"]).to_pylist()
    out: dict[int, list] = {}
    for item in table:
        if item["row"] < n_rows and item["doc_id"] not in out.setdefault(item["row"], []):
            out[item["row"]].append(item["doc_id"])
    return out


def _documents(data: Path, wanted: set) -> dict:
    path = data / "documents.parquet"
    if not wanted or not path.is_file() or path.is_symlink():
        return {}
    import pyarrow.parquet as pq

    schema = pq.read_schema(path)
    columns = [c for c in ("doc_id", "source", "uri") if c in schema.names]
    out = {}
    for item in pq.read_table(path, columns=columns).to_pylist():
        if item.get("doc_id") in wanted:
            out[item["doc_id"]] = item
    return out
