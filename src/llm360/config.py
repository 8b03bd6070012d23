"""The run config: one typed tree, loaded from YAML, overridden with `--section.key=value`.

The key names are those of docs/run-directory.md §9. Every section is a small pydantic model that
forbids unknown keys, so a typo is caught with the key's full dotted name. Each component of
llm360 takes only its own section (`cfg.data`, `cfg.train`, ...), never the whole tree.

    cfg = load_config("configs/demo.yaml", ["--train.lr=3e-4"])
    save_config(cfg, run_dir / "run.yaml")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from llm360.errors import UserError
from llm360.model.args import PRESETS, checkpoint_format, model_args

CONFIG_DIR = Path(__file__).parent / "configs"


def source_kinds() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(every source kind, the built-in ones), from the registry in data/sources.py.

    Imported when a config is validated, not with this module: sources.py needs only the
    standard library, and config stays cheap to import.
    """
    from llm360.data.sources import KINDS, builtin_kinds

    return tuple(KINDS), builtin_kinds()


class Section(BaseModel):
    # a NaN or infinite float (`.nan`, `.inf` in YAML) passes every `gt`/`ge` bound and only
    # surfaces as a NaN loss or a broken mixture later: refused in every section
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


# ---------------------------------------------------------------------------------------------
# data


class TokenizerConfig(Section):
    vocab_size: int = Field(8192, ge=259, le=1_000_000)  # byte-level BPE needs the 256 bytes
    path: str | None = None  # an existing tokenizer.json or transformers tokenizer folder
    sample_chars: int = Field(20_000_000, gt=0)  # text drawn (seeded) to train the BPE on


class SourceConfig(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    kind: str  # a kind of data/sources.py's registry, or `builtin` (then `builtin` names one)
    paths: list[str] = []  # files, folders or globs, relative to the config file
    root: str | None = None  # what uris are relative to; default: the common parent
    text_field: str = "text"  # jsonl key / parquet column holding the text
    include: list[str] = ["**/*"]  # globs inside a `code` tree
    builtin: str | None = None
    license: str | None = None
    description: str | None = None  # where the data came from, in your words (manifest, data card)
    ftfy: bool = False  # fix mojibake with ftfy before NFC (Crystal's text was); needs the ftfy extra

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        kinds, _ = source_kinds()
        if kind not in (*kinds, "builtin"):
            raise ValueError(f"unknown source kind {kind!r}; allowed: {', '.join(sorted([*kinds, 'builtin']))}")
        return kind

    @field_validator("builtin")
    @classmethod
    def _known_builtin(cls, builtin: str | None) -> str | None:
        _, builtins = source_kinds()
        if builtin is not None and builtin not in builtins:
            raise ValueError(f"unknown built-in source {builtin!r}; allowed: {', '.join(sorted(builtins))}")
        return builtin

    @model_validator(mode="after")
    def _normalize_builtin(self) -> "SourceConfig":
        # `kind: python-docs` and `kind: builtin, builtin: python-docs` mean the same
        _, builtins = source_kinds()
        if self.kind in builtins:
            if self.builtin not in (None, self.kind):
                raise ValueError(f"kind {self.kind!r} contradicts builtin {self.builtin!r}")
            object.__setattr__(self, "builtin", self.kind)
            object.__setattr__(self, "kind", "builtin")
        if self.kind == "builtin" and self.builtin is None:
            raise ValueError(f"kind 'builtin' needs `builtin:` one of {', '.join(sorted(builtins))}")
        if self.kind != "builtin" and not self.paths:
            raise ValueError(f"source {self.name!r} of kind {self.kind!r} needs `paths`")
        return self


class FilterConfig(Section):
    min_chars: int = Field(1, ge=0)
    max_chars: int = Field(1_000_000, gt=0)
    dedup: bool = True


class FimConfig(Section):
    """Fill-in-the-middle for one source in one stage (data/fim.py): Crystal used rate 0.9 in its
    phase 2 and 0.3 in phase 3, half of them SPM."""

    rate: float = Field(ge=0, le=1)  # the share of document pieces rearranged
    spm_ratio: float = Field(0.5, ge=0, le=1)  # of those, the share in SPM order (the rest PSM)


class StageConfig(Section):
    name: str
    chunks: int = Field(ge=1)
    mix: dict[str, float]
    rewarm_steps: int = Field(0, ge=0)  # re-warm the LR at this stage's start (Crystal stage 3)
    # the stage's own steps per chunk (default train.steps_per_chunk): stages of different lengths
    steps_per_chunk: int | None = Field(None, ge=1)
    exact_mix: bool = False  # every chunk holds each source's 1/chunks of the stage's rows (Amber)
    fim: dict[str, FimConfig] = {}  # source name -> its FIM in this stage

    @field_validator("mix")
    @classmethod
    def _positive_weights(cls, mix: dict[str, float]) -> dict[str, float]:
        if not mix:
            raise ValueError("a stage needs at least one source in `mix`")
        for name, weight in mix.items():
            if weight < 0:
                raise ValueError(f"weight of {name!r} must be >= 0, got {weight}")
        if sum(mix.values()) <= 0:
            raise ValueError("mixture weights must not all be 0")
        return mix


class DataConfig(Section):
    seq_len: int = Field(256, ge=8)
    workers: int = Field(1, ge=1)
    strict: bool = False
    heldout_rows: int = Field(8, ge=0)
    tokenizer: TokenizerConfig = TokenizerConfig()
    sources: list[SourceConfig] = []
    filters: FilterConfig = FilterConfig()
    stages: list[StageConfig] = []

    @model_validator(mode="after")
    def _consistent(self) -> "DataConfig":
        names = [s.name for s in self.sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"source names must be unique, repeated: {', '.join(dupes)}")
        for stage in self.stages:
            unknown = sorted(set(stage.mix) - set(names))
            if unknown:
                raise ValueError(
                    f"stage {stage.name!r} mixes unknown source(s) {', '.join(unknown)}; "
                    f"sources are: {', '.join(names) or '(none)'}"
                )
            unmixed = sorted(set(stage.fim) - {n for n, w in stage.mix.items() if w > 0})
            if unmixed:
                raise ValueError(f"stage {stage.name!r} has fim for {', '.join(unmixed)}, not in its mix")
        return self

    def uses_fim(self) -> bool:
        """Whether any stage rearranges documents, so the tokenizer needs the FIM tokens."""
        return any(f.rate > 0 for st in self.stages for f in st.fim.values())


# ---------------------------------------------------------------------------------------------
# model


class ModelConfig(Section):
    """Architecture: a named preset, any field of which may be overridden. The fields are those of
    `llm360.model.args.ModelArgs` (tests/test_config.py keeps them in step)."""

    preset: str = "demo"
    dim: int | None = None
    n_layers: int | None = None
    n_heads: int | None = None
    n_kv_heads: int | None = None
    ffn_dim: int | None = None
    rope_theta: float | None = None
    norm_eps: float | None = None
    tie_embeddings: bool | None = None
    max_seq_len: int | None = None
    vocab_size: int | None = None  # default: the tokenizer's
    init_std: float | None = None
    # the family's building blocks (CrystalCoder: the crystal-7b preset sets them all)
    norm: Literal["rmsnorm", "layernorm"] | None = None
    rotary_dim: int | None = None
    rope_pairing: Literal["half", "interleaved"] | None = None
    bias: bool | None = None
    embedding_scale: float | None = None  # µP multipliers
    output_scale: float | None = None
    attention_scale: Literal["1/sqrt(d)", "1/d"] | None = None
    hidden_lr_scale: float | None = None  # µP width scale: hidden matrices' learning rate
    init: Literal["llama", "normal", "crystal"] | None = None
    embedding_init_std: float | None = None

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, preset: str) -> str:
        if preset not in PRESETS:
            raise ValueError(f"not a model preset; presets are {', '.join(PRESETS)}")
        return preset

    def overrides(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump().items() if k != "preset" and v is not None}


# ---------------------------------------------------------------------------------------------
# train


class SpikeConfig(Section):
    action: Literal["skip", "rollback", "stop", "log"] = "skip"
    zscore: float = Field(6.0, gt=0)
    window: int = Field(50, ge=2)
    skip_batches: int = Field(1, ge=1)  # for rollback: batches skipped from the spike on
    max_rollbacks: int = Field(5, ge=0)


class FaultInjectionConfig(Section):
    """Faults on purpose, for tests and drills."""

    nan_at_steps: list[int] = []  # the loss of these global steps becomes NaN
    kill_in_checkpoint: list[str] = []  # SIGKILL in the middle of writing these checkpoints
    exit_after_steps: list[int] = []  # exit right after the checkpoint written at these step counts


class StageSchedule(Section):
    """A stage's own learning-rate phase (train.stage_schedules.STAGE), as LLM360's Crystal had."""

    lr: float = Field(gt=0)  # the peak, reached at the end of the warmup
    end_lr: float = Field(ge=0)  # where the decay leads
    warmup_steps: int = Field(0, ge=0)
    decay_steps: int | None = Field(None, ge=1)  # the decay's horizon; default: the rest of the stage
    warmup_from: float = Field(0.0, ge=0)
    decay: Literal["cosine", "linear"] | None = None  # default: train.decay


PARAM_ROLES = ("embedding", "hidden", "output", "norm", "bias")


class TrainConfig(Section):
    global_batch_rows: int = Field(16, ge=1)
    micro_batch_rows: int = Field(16, ge=1)
    steps_per_chunk: int = Field(20, ge=1)
    lr: float = Field(1e-3, gt=0)
    min_lr: float = Field(1e-4, ge=0)
    warmup_steps: int = Field(20, ge=0)
    decay: Literal["cosine", "linear"] = "cosine"
    # true: the first step of a warmup trains at its start value (Amber's first update had lr 0)
    warmup_from_zero: bool = False
    stage_schedules: dict[str, StageSchedule] = {}  # by stage name: a phase of its own (schedule.py)
    # learning-rate multipliers by parameter role (embedding, hidden, output, norm, bias); µP
    # trains hidden weight matrices at a fraction of the base rate (Crystal: hidden 0.0625)
    lr_scale: dict[str, float] = {}
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    no_decay: list[str] = ["norm", "bias"]  # parameters whose name contains one of these
    grad_clip: float = Field(1.0, ge=0)  # 0 disables clipping
    # auto: fp32 on CPU, bf16 autocast on GPU; bf16-weights: bf16 weights and gradients, fp32
    # AdamW moments, stochastically rounded updates (train/optim.py)
    precision: Literal["auto", "fp32", "bf16", "bf16-weights"] = "auto"
    compile: bool = False
    # full: every block recomputed; selective: every other block; ops: every block, but the
    # matmul and attention outputs are kept and only the cheap elementwise work is recomputed
    activation_checkpointing: Literal["none", "full", "selective", "ops"] | bool = "none"
    strategy: Literal["auto", "single", "ddp", "fsdp"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    deterministic: bool = True
    collective_timeout_minutes: float = Field(60, gt=0)  # how long ranks wait on each other (checkpoint writes)
    extra_checkpoint_steps: list[int] = []
    # dtype of the published weights: auto = the training weights' (fp32, as LLM360 published;
    # bf16 under bf16-weights); bf16 halves them, and the trainer state then keeps fp32 master weights
    checkpoint_dtype: Literal["auto", "fp32", "bf16"] = "auto"
    spike: SpikeConfig = SpikeConfig()
    fault_injection: FaultInjectionConfig = FaultInjectionConfig()

    @model_validator(mode="after")
    def _batch_shape(self) -> "TrainConfig":
        if self.global_batch_rows % self.micro_batch_rows:
            raise ValueError(
                f"train.global_batch_rows ({self.global_batch_rows}) must be a multiple of "
                f"train.micro_batch_rows ({self.micro_batch_rows})"
            )
        if self.min_lr > self.lr:
            raise ValueError(f"train.min_lr ({self.min_lr}) must not exceed train.lr ({self.lr})")
        unknown = sorted(set(self.lr_scale) - set(PARAM_ROLES))
        if unknown:
            raise ValueError(f"train.lr_scale: unknown parameter role(s) {', '.join(unknown)}; roles: "
                             f"{', '.join(PARAM_ROLES)}")
        if any(v <= 0 for v in self.lr_scale.values()):
            raise ValueError("train.lr_scale: every multiplier must be > 0")
        return self


# ---------------------------------------------------------------------------------------------
# eval and analysis


class EvalConfig(Section):
    every_checkpoint: bool = True
    heldout: bool = True
    tasks: list[str] = []  # names of ../shared/benchmarks style files, or paths
    max_questions: int | None = Field(None, ge=1)  # per task, a seeded sample; None = all
    batch_size: int = Field(32, ge=1)


class MemorizationConfig(Section):
    samples_per_chunk: int = Field(1000, ge=1)
    prompt_tokens: int = Field(32, ge=1)
    continuation_tokens: int = Field(32, ge=1)
    checkpoints: list[str] | Literal["all", "last"] = "all"
    batch_size: int = Field(64, ge=1)


class AnalysisConfig(Section):
    memorization: MemorizationConfig = MemorizationConfig()


# ---------------------------------------------------------------------------------------------
# the tree


class RunConfig(Section):
    name: str = "run"
    seed: int = Field(0, ge=0, le=2**63 - 1)  # what numpy and torch generators take
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    analysis: AnalysisConfig = AnalysisConfig()
    # where relative source paths start (default: the config's folder); never saved in run.yaml,
    # which would put a path of this machine in the run
    base_dir: str | None = Field(None, exclude=True)

    @model_validator(mode="after")
    def _model_fits(self) -> "RunConfig":
        # build the architecture now, so a model that cannot exist stops `prepare`, not `train`
        try:
            args = model_args(self.model.preset, **self.model.overrides())
            checkpoint_format(args)  # an architecture no checkpoint format can hold stops here
        except UserError as e:
            raise ValueError(str(e).rstrip(".")) from None
        if self.data.seq_len > args.max_seq_len:
            where = "" if self.model.max_seq_len is not None else f" of preset {self.model.preset!r}"
            raise ValueError(
                f"data.seq_len ({self.data.seq_len}) is beyond the model's context "
                f"model.max_seq_len ({args.max_seq_len}{where})"
            )
        return self

    @model_validator(mode="after")
    def _stage_schedules_name_stages(self) -> "RunConfig":
        stages = [s.name for s in self.data.stages] or ["all"]  # no stages: one stage, `all`
        unknown = sorted(set(self.train.stage_schedules) - set(stages))
        if unknown:
            raise ValueError(f"train.stage_schedules names no stage {', '.join(map(repr, unknown))}; "
                             f"stages: {', '.join(stages)}")
        for stage in self.data.stages:
            phase = self.train.stage_schedules.get(stage.name)
            steps = stage.chunks * (stage.steps_per_chunk or self.train.steps_per_chunk)
            if phase is not None and phase.warmup_steps > steps:
                raise ValueError(f"train.stage_schedules.{stage.name}.warmup_steps ({phase.warmup_steps}) is longer "
                                 f"than the stage ({steps} steps = data.stages chunks x steps_per_chunk)")
        return self


# ---------------------------------------------------------------------------------------------
# loading


def builtin_config(name: str) -> Path:
    path = CONFIG_DIR / f"{name}.yaml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
        raise UserError(f"no shipped config named {name!r}; shipped configs: {known}")
    return path


# Keys that earlier versions wrote into run.yaml and that no longer exist: a run recorded by
# them still loads (a user's own config with such a key is refused like any unknown key).
RETIRED_KEYS = (("train", "log_every"),)  # never did anything


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                recorded: bool = False) -> RunConfig:
    """Read a YAML config (default: the shipped demo), apply `--a.b=value` overrides, validate.

    `path` may also be a shipped config's name ("demo", "amber-7b", "crystal-7b"). `recorded`:
    the file is a run's run.yaml, written by llm360 (retired keys are dropped).
    """
    if path is None:
        path = builtin_config("demo")
    path = Path(path)
    if not path.exists() and path.suffix == "" and "/" not in str(path):
        path = builtin_config(str(path))
    tree = _read_yaml(path)
    if not isinstance(tree, dict):
        raise UserError(f"{path}: the config must be a mapping of sections, got {type(tree).__name__}")
    for section, key in RETIRED_KEYS if recorded else ():
        if isinstance(tree.get(section), dict):
            tree[section].pop(key, None)
    for item in overrides or []:
        apply_override(tree, item)
    tree.setdefault("base_dir", str(path.resolve().parent))
    return validate(tree, source=str(path))


def _read_yaml(path: Path) -> Any:
    if not path.exists():
        raise UserError(f"config file {path} does not exist")
    if path.is_dir():
        raise UserError(f"config file {path} is a folder; give the YAML file in it")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start} is {e.object[e.start]:#04x}); "
                        "a config is a UTF-8 YAML file") from None
    except OSError as e:
        raise UserError(f"config file {path} cannot be read: {e.strerror}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise UserError(f"{where}: not valid YAML ({getattr(e, 'problem', e)})") from None


def validate(tree: dict, source: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as e:
        raise UserError(describe_errors(e, source)) from None


def apply_override(tree: dict, item: str) -> None:
    """Apply one `--section.key=value` to the raw tree; the value is read as YAML."""
    text = item[2:] if item.startswith("--") else item
    if "=" not in text:
        raise UserError(f"override {item!r} must look like --section.key=value")
    key, raw = text.split("=", 1)
    parts = key.split(".")
    if not all(parts):
        raise UserError(f"override {item!r} has an empty key part")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    node = tree
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = _list_item(node, part, parts[: i + 1])
            continue
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, (dict, list)):
            raise UserError(f"override {item!r}: {'.'.join(parts[: i + 1])} is not a section")
        node = child
    if isinstance(node, list):
        index = int(_list_index(node, parts[-1], parts))
        node[index] = value
    else:
        node[parts[-1]] = value


def _list_index(items: list, part: str, parts: list[str]) -> int:
    if not part.isdigit() or int(part) >= len(items):
        raise UserError(f"override key {'.'.join(parts)}: {part!r} is not an index below {len(items)}")
    return int(part)


def _list_item(items: list, part: str, parts: list[str]) -> Any:
    return items[_list_index(items, part, parts)]


def describe_errors(error: ValidationError, source: str) -> str:
    """Turn pydantic's report into sentences that name each key and what it allows."""
    lines = []
    for err in error.errors():
        loc = [str(p) for p in err["loc"] if not str(p).startswith("function-")]
        key = ".".join(loc) or "(top level)"
        kind = err["type"]
        if kind == "extra_forbidden":
            parent = _section_of(loc[:-1])
            allowed = ", ".join(sorted(parent.model_fields)) if parent else ""
            lines.append(f"unknown config key {key!r}" + (f"; allowed here: {allowed}" if allowed else ""))
        elif kind == "missing":
            lines.append(f"config key {key!r} is required")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            got = err.get("input")
            shown = "" if isinstance(got, (dict, list)) or got is None else f" (got {got!r})"
            where = f"config key {key!r}: " if loc else ""
            lines.append(f"{where}{msg}{shown}")
    head = f"{source}: invalid config" if len(lines) > 1 else f"{source}"
    return head + (":\n  " + "\n  ".join(lines) if len(lines) > 1 else ": " + lines[0])


def _section_of(loc: list[str]) -> type[BaseModel] | None:
    model: Any = RunConfig
    for part in loc:
        if part.isdigit():
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        ann = field.annotation
        # unwrap list[X] / X | None
        for arg in (getattr(ann, "__args__", None) or (ann,)):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                model = arg
                break
            inner = getattr(arg, "__args__", None)
            if inner and isinstance(inner[0], type) and issubclass(inner[0], BaseModel):
                model = inner[0]
                break
        else:
            return None
    return model


def differences(a, b, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config trees (plain dicts)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += differences(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    return [] if a == b else [prefix]


def to_dict(cfg: RunConfig) -> dict:
    return cfg.model_dump(mode="json")


def save_config(cfg: RunConfig, path: str | Path) -> None:
    """Write the fully resolved config (every default filled in)."""
    from llm360.utils import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True))


def load_run_config(run_dir: str | Path) -> RunConfig:
    path = Path(run_dir) / "run.yaml"
    if not path.exists():
        raise UserError(f"{run_dir} is not a run directory (no run.yaml); run `llm360 prepare` first")
    return load_config(path, recorded=True)
