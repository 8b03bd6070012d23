"""The run directory: every path, name, order and schema of llm360's product, in one place.

A run directory is at once a training run's working state and its public release (the format is
described in docs/run-directory.md). Every stage asks this module where things are and what
they are called, instead of building paths or parsing checkpoint names itself:

    run = RunDir("runs/demo")
    run.manifest_path                          # RUN/data/manifest.json
    manifest = read_manifest(run)              # a typed Manifest (raises UserError when broken)
    rule = manifest.step_rule                  # which chunk and rows global step t trains on
    run.checkpoints(rule)                      # every checkpoint folder, oldest first
    run.select("0,3,init", rule)               # what `--checkpoints` means everywhere
    checksum_problems(run.checkpoint_dir("ckpt_003"))

It imports no torch and no numpy: release verification and the report read run directories
from strangers with it, on machines that may have neither.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import json
import re
from dataclasses import asdict, dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable

from llm360.errors import UserError
from llm360.utils import atomic_write_text, sha256_file

# -- names ------------------------------------------------------------------------------------

DATA_FORMAT = "llm360-data/1"  # data/manifest.json
RELEASE_FORMAT = "llm360-release/1"  # release.json

RUN_CONFIG = "run.yaml"
ENV_FILE = "env.json"
RELEASE_FILE = "release.json"
MODEL_CARD = "MODEL_CARD.md"
DATA_CARD = "DATA_CARD.md"
REPORT_FILE = "report/index.html"

DATA_DIR = "data"
MANIFEST_NAME = "manifest.json"  # inside data/
MANIFEST_FILE = f"{DATA_DIR}/{MANIFEST_NAME}"
TOKENIZER_DIR = "data/tokenizer"
CHECKPOINTS_DIR = "checkpoints"
CHECKSUMS_FILE = "CHECKSUMS.sha256"
STATE_DIR = "trainer_state"
STATE_FILE = "trainer_state/state.json"
OPTIMIZER_FILE = "trainer_state/optimizer.safetensors"
RNG_FILE = "trainer_state/rng.safetensors"
# before trainer states listed their files: the whole optimizer state in one file
LEGACY_STATE_FILES = (OPTIMIZER_FILE, RNG_FILE)
METRICS_DIR = "metrics"
TRAIN_LOG = "metrics/train.jsonl"
EVENTS_LOG = "metrics/events.jsonl"
EVAL_LOG = "metrics/eval.jsonl"
TENSORBOARD_DIR = "metrics/tb"
ANALYSIS_DIR = "analysis"
MEMORIZATION_DIR = "analysis/memorization"
SEARCH_DIR = "analysis/search"
CONTAMINATION_DIR = "analysis/contamination"
CONTAMINATION_SUMMARY = "analysis/contamination/summary.json"
CONTAMINATION_ITEMS = "analysis/contamination/items.parquet"
QUESTIONS_DIR = "metrics/questions"  # per-question eval logs: CHECKPOINT/TASK.parquet

INIT = "init"
CHUNK_PREFIX = "ckpt_"
STEP_PREFIX = "step_"
# at equal steps, which checkpoint comes last in the order (and is the one to resume from): the
# chunk checkpoint, then an extra step checkpoint, then init; they hold the same weights
_TIE_BREAK = {"init": 0, "step": 1, "ckpt": 2}


def pad_width(count: int) -> int:
    """Zero padding of chunk and checkpoint numbers: 3 digits, more from 1000 on."""
    return max(3, len(str(max(count - 1, 0))))


def chunk_checkpoint_name(chunk: int, n_chunks: int) -> str:
    """`ckpt_003`: the state after the last step of chunk 3 (LLM360's naming)."""
    return f"{CHUNK_PREFIX}{chunk:0{pad_width(n_chunks)}d}"


def step_checkpoint_name(steps_done: int) -> str:
    """`step_0000500`: an extra checkpoint after 500 steps (train.extra_checkpoint_steps)."""
    return f"{STEP_PREFIX}{steps_done:07d}"


def search_shard_name(shard: int, shards: int) -> str:
    """`shard-002-of-008`: shard 2 of 8 of the search index, a folder inside analysis/search/."""
    w = pad_width(shards)
    return f"shard-{shard:0{w}d}-of-{shards:0{w}d}"


def parse_search_shard_name(name: str) -> tuple[int, int] | None:
    m = re.fullmatch(r"shard-(\d+)-of-(\d+)", name)
    return (int(m.group(1)), int(m.group(2))) if m else None


def question_log_file(checkpoint: str, task: str) -> str:
    """metrics/questions/CHECKPOINT/TASK.parquet, TASK the eval.jsonl label with `/` as `__`."""
    return f"{QUESTIONS_DIR}/{checkpoint}/{task.replace('/', '__')}.parquet"


class StepRule:
    """Which rows global step t trains on: the chunks in order, chunk c trained by
    `chunk_steps[c]` consecutive steps of `batch_rows` rows each, rows [j*B, (j+1)*B) at its j-th
    step. Every chunk of a stage has the stage's steps per chunk; stages may differ (Crystal's
    phases had 79,721, 214,387 and 27,728 steps). `ckpt_c` is written after the last step of
    chunk c. An int stands for equal chunks of that many steps (as every run before stages could
    differ). `default` is the length given to chunk numbers past the run's (a stray `ckpt_999`
    still has a place in the order)."""

    def __init__(self, chunk_steps: list[int], default: int, batch_rows: int = 1):
        self.chunk_steps = [int(s) for s in chunk_steps]
        self.default = int(default)
        self.batch_rows = batch_rows
        self.ends = list(itertools.accumulate(self.chunk_steps))  # steps done after each chunk

    @classmethod
    def uniform(cls, steps_per_chunk: int, n_chunks: int = 0, batch_rows: int = 1) -> StepRule:
        return cls([steps_per_chunk] * n_chunks, steps_per_chunk, batch_rows)

    @property
    def n_chunks(self) -> int:
        return len(self.chunk_steps)

    @property
    def total_steps(self) -> int:
        return self.ends[-1] if self.ends else 0

    def first_step(self, chunk: int) -> int:
        return self.ends[chunk - 1] if chunk > 0 else 0

    def end(self, chunk: int) -> int:
        """Steps done after the last step of `chunk`: what `ckpt_{chunk}` has seen."""
        if chunk < len(self.ends):
            return self.ends[chunk]
        return self.total_steps + (chunk - len(self.ends) + 1) * self.default

    def chunk_of(self, step: int) -> int:
        return bisect.bisect_right(self.ends, step)

    def locate(self, step: int) -> tuple[int, int]:
        """(chunk, step within the chunk) of global step `step`."""
        c = self.chunk_of(step)
        return c, step - self.first_step(c)

    def chunks_seen(self, steps_done: int) -> int:
        """How many whole chunks the weights after `steps_done` steps have seen."""
        return bisect.bisect_right(self.ends, steps_done)

    def is_chunk_end(self, steps_done: int) -> bool:
        c = bisect.bisect_left(self.ends, steps_done)
        return c < len(self.ends) and self.ends[c] == steps_done


def as_rule(rule: StepRule | int) -> StepRule:
    return StepRule.uniform(rule) if isinstance(rule, int) else rule


def _number(name: str, prefix: str) -> int | None:
    rest = name[len(prefix):] if name.startswith(prefix) else ""
    return int(rest) if rest.isascii() and rest.isdigit() else None


@dataclass(frozen=True)
class CheckpointName:
    """A checkpoint folder's name, parsed: kind `init`, `ckpt` (number = chunk) or `step`
    (number = steps done)."""
    kind: str
    number: int

    @classmethod
    def parse(cls, name: str) -> CheckpointName | None:
        if name == INIT:
            return cls("init", 0)
        if (c := _number(name, CHUNK_PREFIX)) is not None:
            return cls("ckpt", c)
        if (k := _number(name, STEP_PREFIX)) is not None:
            return cls("step", k)
        return None

    def steps_done(self, rule: StepRule | int) -> int:
        """Optimizer steps the weights have seen: ckpt_c has seen chunks 0..c."""
        if self.kind == "ckpt":
            return as_rule(rule).end(self.number)
        return self.number if self.kind == "step" else 0


def is_checkpoint_name(name: str) -> bool:
    return CheckpointName.parse(name) is not None


def checkpoint_order(name: str, rule: StepRule | int) -> tuple[int, int] | None:
    """The sort key of a checkpoint name (steps done, tie-break); None for any other name."""
    parsed = CheckpointName.parse(name)
    return None if parsed is None else (parsed.steps_done(rule), _TIE_BREAK[parsed.kind])


@dataclass(frozen=True)
class Checkpoint:
    name: str
    path: Path
    steps_done: int  # optimizer steps the weights have seen


# -- the run directory -----------------------------------------------------------------------------


class RunDir:
    """Where everything of one run directory is. Paths only: nothing here reads or writes."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def __fspath__(self) -> str:
        return str(self.root)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    def path(self, rel: str) -> Path:
        return self.root / rel

    @property
    def config_path(self) -> Path:
        return self.root / RUN_CONFIG

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST_FILE

    @property
    def data_dir(self) -> Path:
        return self.root / DATA_DIR

    @property
    def tokenizer_dir(self) -> Path:
        return self.root / TOKENIZER_DIR

    @property
    def checkpoints_dir(self) -> Path:
        return self.root / CHECKPOINTS_DIR

    @property
    def metrics_dir(self) -> Path:
        return self.root / METRICS_DIR

    def checkpoint_dir(self, name: str) -> Path:
        return self.checkpoints_dir / name

    def checkpoint_temporary(self, name: str, pid: int) -> Path:
        """Where a checkpoint is written before it is renamed into place (hidden, per process)."""
        return self.checkpoints_dir / f".{name}.tmp-{pid}"

    def checkpoint_temporaries(self) -> list[Path]:
        if not self.checkpoints_dir.is_dir():
            return []
        return sorted(p for p in self.checkpoints_dir.iterdir() if re.fullmatch(r"\..+\.tmp-\d+", p.name))

    def checkpoints(self, rule: StepRule | int) -> list[Checkpoint]:
        """Every checkpoint folder of the run (complete or not), oldest first; links are skipped."""
        rule = as_rule(rule)
        found = []
        if self.checkpoints_dir.is_dir():
            for path in self.checkpoints_dir.iterdir():
                parsed = CheckpointName.parse(path.name)
                if parsed is not None and path.is_dir() and not path.is_symlink():
                    found.append(Checkpoint(path.name, path, parsed.steps_done(rule)))
        return sorted(found, key=lambda c: checkpoint_order(c.name, rule))

    def select(self, spec: str | Iterable[str] | None, rule: StepRule | int,
               among: list[Checkpoint] | None = None) -> list[Checkpoint]:
        """What `--checkpoints` means for every command: `all`, `last`, or a comma list of chunk
        numbers (`0,3` = ckpt_000, ckpt_003) and names (`init`, `ckpt_007`, `step_0000500`), in
        the run's order. `among` narrows the choice (to the valid ones, say)."""
        found = self.checkpoints(rule) if among is None else among
        if not found:
            raise UserError(f"{self.root} has no checkpoints; train it first: llm360 train {self.root}")
        if spec is None or spec == "all":
            return list(found)
        if spec == "last":
            return [found[-1]]
        items = spec.split(",") if isinstance(spec, str) else [str(s) for s in spec]
        chosen = []
        for item in filter(None, (s.strip() for s in items)):
            info = self._find(item, found)
            if info is None:
                raise UserError(f"no checkpoint {item!r} in {self.root}; checkpoints: "
                                f"{', '.join(c.name for c in found)}")
            if info not in chosen:
                chosen.append(info)
        return sorted(chosen, key=found.index)

    def resolve(self, spec: str | int, rule: StepRule | int) -> Checkpoint:
        """One checkpoint by number (a chunk checkpoint) or name; UserError when there is none."""
        return self.select(str(spec).strip() or "?", rule)[0]

    @staticmethod
    def _find(item: str, found: list[Checkpoint]) -> Checkpoint | None:
        if item.isdigit():
            item = CHUNK_PREFIX + item
        wanted = CheckpointName.parse(item)
        return next((c for c in found if CheckpointName.parse(c.name) == wanted), None) if wanted else None


# -- checksums --------------------------------------------------------------------------------------


def format_checksums(hashes: dict[str, str]) -> str:
    """CHECKSUMS.sha256 as `sha256sum` writes it: `HEX  relative/path`, sorted by path."""
    return "".join(f"{digest}  {rel}\n" for rel, digest in sorted(hashes.items()))


def parse_checksums(text: str) -> tuple[dict[str, str], list[int]]:
    """{relative path: sha256} and the numbers (1-based) of lines that are not `HEX  PATH`."""
    out, bad = {}, []
    for i, line in enumerate(text.splitlines(), 1):
        digest, sep, rel = line.partition("  ")
        if sep and rel and re.fullmatch(r"[0-9a-f]{64}", digest):
            out[rel] = digest
        elif line.strip():
            bad.append(i)
    return out, bad


def read_checksums(folder: str | Path) -> dict[str, str]:
    """A folder's CHECKSUMS.sha256 (lenient: {} when absent or unreadable)."""
    try:
        text = (Path(folder) / CHECKSUMS_FILE).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return {}
    return parse_checksums(text)[0]


def folder_files(folder: str | Path) -> list[str]:
    """Every regular file under `folder` except its checksum file, relative and `/`-separated."""
    folder = Path(folder)
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() and p.name != CHECKSUMS_FILE)


def write_checksums(folder: str | Path, hashes: dict[str, str] | None = None) -> None:
    """Write `folder`'s CHECKSUMS.sha256, last. `hashes` are those computed while writing; any
    file they do not cover is read and hashed here."""
    folder = Path(folder)
    known = dict(hashes or {})
    for rel in folder_files(folder):
        if rel not in known:
            known[rel] = sha256_file(folder / rel)
    atomic_write_text(folder / CHECKSUMS_FILE, format_checksums(known))


def checksum_problems(folder: str | Path) -> list[str]:
    """What is wrong with `folder` against its CHECKSUMS.sha256; [] when every file matches."""
    folder = Path(folder)
    try:
        text = (folder / CHECKSUMS_FILE).read_text(encoding="utf-8")
    except FileNotFoundError:
        return [f"{folder.name}: no {CHECKSUMS_FILE} (incomplete)"]
    except (OSError, UnicodeDecodeError) as e:
        return [f"{folder.name}/{CHECKSUMS_FILE}: unreadable ({e})"]
    expected, bad = parse_checksums(text)
    problems = [f"{folder.name}/{CHECKSUMS_FILE}: line {i} is not `SHA256  PATH`" for i in bad[:3]]
    present = set(folder_files(folder))
    for rel, digest in expected.items():
        if rel not in present:
            problems.append(f"{folder.name}/{rel}: missing")
        elif sha256_file(folder / rel) != digest:
            problems.append(f"{folder.name}/{rel}: sha256 differs")
    problems += [f"{folder.name}/{rel}: not in {CHECKSUMS_FILE}" for rel in sorted(present - set(expected))]
    return problems


def state_shard_file(rank: int, world: int) -> str:
    """`trainer_state/shard-00001-of-00004.safetensors`: the trainer state rank 1 of 4 wrote."""
    return f"{STATE_DIR}/shard-{rank:05d}-of-{world:05d}.safetensors"


def checkpoint_problems(checkpoint: Checkpoint) -> list[str]:
    """Why a checkpoint must not be loaded (damaged or incomplete); [] when it is sound."""
    found = checksum_problems(checkpoint.path)
    if not found and not (checkpoint.path / STATE_FILE).is_file():
        found = [f"{checkpoint.name}: no {STATE_FILE}"]
    return found


# -- the data manifest ---------------------------------------------------------------------------


class _Record:
    """A JSON object with known fields; unknown keys are kept in `extra` (newer writers)."""

    @classmethod
    def from_json(cls, obj: Any, where: str):
        if not isinstance(obj, dict):
            raise ManifestError(f"{where} is not a JSON object")
        known = {f.name for f in fields(cls) if f.name != "extra"}
        missing = [f.name for f in fields(cls) if f.name in cls._required() and f.name not in obj]
        if missing:
            raise ManifestError(f"{where} has no {missing[0]!r}")
        kwargs = {k: v for k, v in obj.items() if k in known}
        record = cls(**kwargs, extra={k: v for k, v in obj.items() if k not in known})
        record._check(where)
        return record

    @classmethod
    def _required(cls) -> set[str]:
        return set()

    def _check(self, where: str) -> None:
        pass

    def to_json(self) -> dict:
        out = asdict(self)
        return {**{k: v for k, v in out.items() if k != "extra"}, **self.extra}


class ManifestError(UserError):
    """data/manifest.json does not have the shape this llm360 reads."""


def _int(value, where: str, minimum: int = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ManifestError(f"{where} must be an integer >= {minimum}, got {value!r}")
    return value


@dataclass
class TokenizerInfo(_Record):
    sha256: str = ""
    vocab_size: int = 0
    eos_id: int = 0
    file: str = "tokenizer/tokenizer.json"
    extra: dict = field(default_factory=dict)

    @classmethod
    def _required(cls):
        return {"sha256", "vocab_size", "eos_id"}

    def _check(self, where):
        _int(self.vocab_size, f"{where}.vocab_size", 1)
        _int(self.eos_id, f"{where}.eos_id")


@dataclass
class SourceInfo(_Record):
    name: str = ""
    kind: str = ""
    tokens: int = 0
    rows: int = 0
    extra: dict = field(default_factory=dict)

    @classmethod
    def _required(cls):
        return {"name"}

    def as_config(self) -> dict:
        """The entry as the source reader takes it (every key prepare recorded)."""
        return self.to_json()


@dataclass
class StageInfo(_Record):
    index: int = 0
    name: str = ""
    first_chunk: int = 0
    chunks: int = 0
    mix: dict = field(default_factory=dict)
    rewarm_steps: int = 0
    steps_per_chunk: int | None = None  # None: the run's (manifest steps_per_chunk)
    extra: dict = field(default_factory=dict)

    @classmethod
    def _required(cls):
        return {"name", "first_chunk", "chunks"}

    def _check(self, where):
        _int(self.first_chunk, f"{where}.first_chunk")
        _int(self.chunks, f"{where}.chunks", 1)
        if self.steps_per_chunk is not None:
            _int(self.steps_per_chunk, f"{where}.steps_per_chunk", 1)

    def holds(self, chunk: int) -> bool:
        return self.first_chunk <= chunk < self.first_chunk + self.chunks


@dataclass
class ChunkInfo(_Record):
    index: int = 0
    stage: int = 0
    file: str = ""
    sha256: str = ""
    rows: int = 0
    tokens: int = 0
    spans_file: str = ""
    spans_sha256: str = ""
    rows_per_source: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    @classmethod
    def _required(cls):
        return {"index", "file", "sha256", "spans_file", "spans_sha256"}

    def _check(self, where):
        _int(self.index, f"{where}.index")


@dataclass
class HeldoutInfo(_Record):
    source: str = ""
    file: str = ""
    sha256: str = ""
    rows: int = 0
    spans_file: str = ""
    spans_sha256: str = ""
    extra: dict = field(default_factory=dict)

    @classmethod
    def _required(cls):
        return {"source", "file", "rows"}


@dataclass
class DocumentsInfo(_Record):
    file: str = "documents.parquet"
    sha256: str = ""
    count: int = 0
    extra: dict = field(default_factory=dict)


@dataclass
class Manifest:
    """data/manifest.json, typed. `raw` is the file as parsed, for what only some readers need."""
    seq_len: int
    row_tokens: int
    global_batch_rows: int
    steps_per_chunk: int
    rows_per_chunk: int
    dtype: str
    fingerprint: str
    tokenizer: TokenizerInfo
    sources: list[SourceInfo]
    stages: list[StageInfo]
    chunks: list[ChunkInfo]
    heldout: list[HeldoutInfo]
    documents: DocumentsInfo
    seed: int = 0
    raw: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, obj: Any, where: str = MANIFEST_FILE) -> Manifest:
        if not isinstance(obj, dict):
            raise ManifestError(f"{where} is not a JSON object")
        if obj.get("format") != DATA_FORMAT:
            raise ManifestError(f"{where}: format {obj.get('format')!r}, this llm360 reads {DATA_FORMAT!r}")
        for key in ("seq_len", "row_tokens", "global_batch_rows", "steps_per_chunk", "rows_per_chunk"):
            _int(obj.get(key), f"{where}: {key}", 1)

        def many(key: str, kind):
            items = obj.get(key)
            if not isinstance(items, list):
                raise ManifestError(f"{where}: {key} is not a list")
            return [kind.from_json(item, f"{where}: {key}[{i}]") for i, item in enumerate(items)]

        manifest = cls(
            seq_len=obj["seq_len"], row_tokens=obj["row_tokens"], global_batch_rows=obj["global_batch_rows"],
            steps_per_chunk=obj["steps_per_chunk"], rows_per_chunk=obj["rows_per_chunk"],
            dtype=str(obj.get("dtype", "uint16")), fingerprint=str(obj.get("fingerprint", "")),
            tokenizer=TokenizerInfo.from_json(obj.get("tokenizer"), f"{where}: tokenizer"),
            sources=many("sources", SourceInfo), stages=many("stages", StageInfo), chunks=many("chunks", ChunkInfo),
            heldout=many("heldout", HeldoutInfo),
            documents=DocumentsInfo.from_json(obj.get("documents") or {}, f"{where}: documents"),
            seed=obj.get("seed", 0), raw=obj,
        )
        for i, chunk in enumerate(manifest.chunks):
            if chunk.index != i:
                raise ManifestError(f"{where}: chunks[{i}] has index {chunk.index}")
        return manifest

    @property
    def n_chunks(self) -> int:
        return len(self.chunks)

    @property
    def total_steps(self) -> int:
        return self.step_rule.total_steps

    @cached_property
    def step_rule(self) -> StepRule:
        """Steps per chunk, chunk by chunk: its stage's, else the run's."""
        steps = [self.steps_per_chunk] * self.n_chunks
        for stage in self.stages:
            for c in range(stage.first_chunk, min(stage.first_chunk + stage.chunks, self.n_chunks)):
                steps[c] = stage.steps_per_chunk or self.steps_per_chunk
        return StepRule(steps, self.steps_per_chunk, self.global_batch_rows)

    def rows_of_chunk(self, chunk: int) -> int:
        return self.step_rule.chunk_steps[chunk] * self.global_batch_rows

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch_rows * self.seq_len

    @property
    def source_names(self) -> list[str]:
        return [s.name for s in self.sources]

    def stage_of_chunk(self, chunk: int) -> StageInfo | None:
        return next((s for s in self.stages if s.holds(chunk)), None)

    def stage_steps(self) -> list[tuple[str, int, int, int]]:
        """(name, first step, steps, re-warm steps) of each stage, for the learning-rate schedule."""
        rule = self.step_rule
        return [(s.name, rule.first_step(s.first_chunk), rule.end(s.first_chunk + s.chunks - 1)
                 - rule.first_step(s.first_chunk), s.rewarm_steps) for s in self.stages]


def step_rule_of(manifest: object) -> StepRule | None:
    """The step rule of a manifest read as plain JSON from anywhere (verify, the report): None
    when the manifest cannot say it."""
    try:
        return Manifest.from_json(manifest).step_rule
    except (UserError, TypeError, ValueError, KeyError):
        spc = manifest.get("steps_per_chunk") if isinstance(manifest, dict) else None
        ok = isinstance(spc, int) and not isinstance(spc, bool) and spc > 0
        chunks = manifest.get("chunks") if isinstance(manifest, dict) else None
        return StepRule.uniform(spc, len(chunks) if isinstance(chunks, list) else 0) if ok else None


def compute_fingerprint(manifest: dict | Manifest) -> str:
    """The data fingerprint: sha256, as hex, of the UTF-8 bytes of

        json.dumps([tokenizer_sha256, seq_len, global_batch_rows, steps_per_chunk,
                    [chunk_000_sha256, chunk_001_sha256, ...]], separators=(",", ":"))

    e.g. `["9f86...",128,16,16,["3a7b...","c01d..."]]`, hashes as lowercase hex strings.
    """
    m = manifest.raw if isinstance(manifest, Manifest) else manifest
    body = [
        m["tokenizer"]["sha256"],
        int(m["seq_len"]),
        int(m["global_batch_rows"]),
        int(m["steps_per_chunk"]),
        [c["sha256"] for c in sorted(m["chunks"], key=lambda c: c["index"])],
    ]
    return hashlib.sha256(json.dumps(body, separators=(",", ":")).encode("utf-8")).hexdigest()


def read_manifest(run: RunDir | str | Path) -> Manifest:
    """The run's data manifest, typed; one sentence naming the file when it is absent or broken."""
    run = run if isinstance(run, RunDir) else RunDir(run)
    path = run.manifest_path
    if not path.exists():
        raise UserError(f"{run.root} has no prepared data ({path} is missing); run "
                        f"`llm360 prepare CONFIG --out {run.root}` first")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as e:
        raise UserError(f"{path}: not valid JSON ({str(e)[:80]})") from None
    return Manifest.from_json(obj, str(path))


# -- the trainer state -------------------------------------------------------------------------------


@dataclass
class TrainerState:
    """trainer_state/state.json: what a checkpoint carries, besides weights, optimizer moments and
    RNG states, to continue exactly."""
    steps_done: int = 0
    tokens: int = 0
    skipped_steps: list[int] = field(default_factory=list)  # global steps whose batch was left out
    rollbacks: int = 0
    spike: dict = field(default_factory=dict)  # the spike guard's history
    fingerprint: str | None = None  # of the data trained on
    world_size: int = 1
    seed: int = 0
    param_groups: list[dict] = field(default_factory=list)  # the optimizer's hyperparameters
    settings: dict = field(default_factory=dict)  # train.* in force when it was written
    saved_at: float = 0.0
    # the trainer-state files besides state.json, relative to the checkpoint folder (empty in
    # checkpoints written before they were listed: LEGACY_STATE_FILES)
    files: list[str] = field(default_factory=list)
    weights_dtype: str = ""  # of the published weights (config.json's torch_dtype)
    master_weights: bool = False  # the trainer-state shards hold the fp32 weights (published lower)
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_json(cls, obj: Any, where: str = STATE_FILE) -> TrainerState:
        if not isinstance(obj, dict):
            raise UserError(f"{where} is not a JSON object")
        known = {f.name for f in fields(cls)} - {"extra"}
        state = cls(**{k: v for k, v in obj.items() if k in known},
                    extra={k: v for k, v in obj.items() if k not in known})
        _int(state.steps_done, f"{where}: steps_done")
        if not all(isinstance(s, int) for s in state.skipped_steps):
            raise UserError(f"{where}: skipped_steps must be a list of step numbers")
        return state

    def to_json(self) -> dict:
        out = asdict(self)
        out.pop("extra")
        return {**out, **self.extra}


def read_trainer_state(checkpoint: Checkpoint | Path) -> TrainerState:
    path = (checkpoint.path if isinstance(checkpoint, Checkpoint) else Path(checkpoint)) / STATE_FILE
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} is missing: the checkpoint is incomplete") from None
    except (OSError, ValueError, RecursionError) as e:
        raise UserError(f"{path}: not readable JSON ({str(e)[:80]})") from None
    return TrainerState.from_json(obj, str(path))


def trainer_state_files(state: TrainerState) -> list[str]:
    """The files (besides state.json) that make up a checkpoint's trainer state."""
    return list(state.files) if state.files else list(LEGACY_STATE_FILES)


def missing_trainer_state(checkpoint: Checkpoint) -> list[str]:
    """The trainer-state files of `checkpoint` that are not there ([] when it can be resumed
    from; every file when state.json itself is missing or unreadable). Reads state.json only."""
    try:
        state = read_trainer_state(checkpoint)
    except UserError:
        return [STATE_FILE]
    return [rel for rel in trainer_state_files(state) if not (checkpoint.path / rel).is_file()]


def has_trainer_state(checkpoint: Checkpoint) -> bool:
    """Whether training can resume from `checkpoint` (its whole trainer state is there)."""
    return not missing_trainer_state(checkpoint)


def resume_problems(checkpoint: Checkpoint) -> list[str]:
    """Why training must not resume from `checkpoint` ([] when it can): damaged, or a file of its
    trainer state missing (a shard of a run written by another number of processes, say)."""
    missing = missing_trainer_state(checkpoint)
    if missing and missing != [STATE_FILE]:
        try:
            world = read_trainer_state(checkpoint).world_size
        except UserError:
            world = "?"
        return [f"checkpoint {checkpoint.name} lacks {missing[0]}" + (f" and {len(missing) - 1} more" if len(missing) > 1
                else "") + f" of the trainer state its {world} process(es) wrote, so it cannot be resumed from"]
    return checkpoint_problems(checkpoint)


# -- what prepare fixed ------------------------------------------------------------------------------

# The data identity: prepare cut and ordered the chunks with these, so a later command that
# changed any of them would train on other rows than the chunks hold.
FROZEN_BY_PREPARE = ("name", "seed", "data", "train.global_batch_rows", "train.steps_per_chunk")
# Once `init` is written, the architecture is that of the weights.
# which parameter is in which optimizer group (the moments are saved by group)
FROZEN_BY_INIT = ("model", "train.no_decay", "train.lr_scale")


def frozen_changes(changed_keys: Iterable[str], has_checkpoints: bool) -> list[str]:
    """The changed config keys (dotted) that the run's data or checkpoints cannot accept."""
    frozen = FROZEN_BY_PREPARE + (FROZEN_BY_INIT if has_checkpoints else ())
    return [k for k in changed_keys if any(k == f or k.startswith(f + ".") for f in frozen)]
