"""The model's architecture as numbers: ModelArgs, the named presets, parameter and FLOP counts.

Pure arithmetic, no torch, so the config can check a model before any work (`llm360 prepare`
refuses a preset that does not exist or a context too short for data.seq_len) and the release
can count parameters without loading the model. The model itself is `llm360.model.llama`.

Two families share one set of fields: LLaMA / Amber (RMSNorm, full "rotate half" rotary, no
biases, no multipliers) and CrystalCoder (LayerNorm, biases, rotary on a part of each head with
GPT-J's interleaved pairs, and the µP multipliers). The defaults are LLaMA's.

    args = model_args("tiny", vocab_size=300)
    num_params(args), flops_per_token(args, seq_len=256)
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from llm360.errors import UserError

# the sizes a model cannot have zero of
POSITIVE = ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "max_seq_len")


@dataclass
class ModelArgs:
    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn_dim: int
    max_seq_len: int
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    init_std: float = 0.02
    # the family's building blocks
    norm: str = "rmsnorm"  # or "layernorm" (with a bias)
    rotary_dim: int | None = None  # dims of each head that rotate, the first ones; None: all
    rope_pairing: str = "half"  # "half": i with i + rotary_dim/2 (HF Llama); "interleaved": 2i with 2i+1 (GPT-J)
    bias: bool = False  # a bias on every linear layer but the output head
    # µP (CrystalCoder): embeddings and logits multiplied, attention scores scaled by 1/d_head
    # instead of 1/sqrt(d_head), hidden matrices trained at hidden_lr_scale times the base rate
    embedding_scale: float = 1.0
    output_scale: float = 1.0
    attention_scale: str = "1/sqrt(d)"  # or "1/d"
    hidden_lr_scale: float = 1.0
    # "llama": N(0, init_std), output projections init_std / sqrt(2 * n_layers); "normal": N(0,
    # init_std) everywhere (Amber); "crystal": as llama, truncated at 2 std, embeddings at
    # embedding_init_std
    init: str = "llama"
    embedding_init_std: float | None = None  # None: init_std

    def __post_init__(self) -> None:
        # messages name the keys of the config's `model` section, where these values come from
        for name in POSITIVE:
            if getattr(self, name) < 1:
                raise UserError(f"model.{name} must be at least 1, got {getattr(self, name)}.")
        if self.rope_theta <= 0 or self.norm_eps < 0 or self.init_std < 0:
            raise UserError(f"model.rope_theta ({self.rope_theta}) must be > 0 and model.norm_eps "
                            f"({self.norm_eps}) and model.init_std ({self.init_std}) >= 0.")
        if self.dim % self.n_heads:
            raise UserError(f"model.dim {self.dim} is not divisible by model.n_heads {self.n_heads}.")
        if self.n_heads % self.n_kv_heads:
            raise UserError(f"model.n_heads {self.n_heads} is not divisible by model.n_kv_heads {self.n_kv_heads}.")
        if self.head_dim % 2 and self.rotary_dim is None:
            raise UserError(f"head_dim {self.head_dim} (model.dim / model.n_heads) must be even for rotary embeddings.")
        if not (0 < self.rope_dim <= self.head_dim and self.rope_dim % 2 == 0):
            raise UserError(f"model.rotary_dim {self.rope_dim} must be even and at most head_dim {self.head_dim} "
                            f"(model.dim / model.n_heads).")
        for key, allowed in CHOICES.items():
            if getattr(self, key) not in allowed:
                raise UserError(f"model.{key} must be one of {', '.join(allowed)}, got {getattr(self, key)!r}.")
        for key in ("embedding_scale", "output_scale", "hidden_lr_scale", "embedding_init_std"):
            if getattr(self, key) is not None and getattr(self, key) <= 0:
                raise UserError(f"model.{key} must be > 0, got {getattr(self, key)}.")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def rope_dim(self) -> int:
        """The dims of each head that rotate."""
        return self.head_dim if self.rotary_dim is None else self.rotary_dim


CHOICES = {"norm": ("rmsnorm", "layernorm"), "rope_pairing": ("half", "interleaved"),
           "attention_scale": ("1/sqrt(d)", "1/d"), "init": ("llama", "normal", "crystal")}


# the CrystalCoder family's features; rotary_dim is a quarter of its 128-dim heads
CRYSTAL = dict(norm="layernorm", norm_eps=1e-5, rotary_dim=32, rope_pairing="interleaved", bias=True,
               embedding_scale=14.6, output_scale=2.22 * 0.0625, attention_scale="1/d", hidden_lr_scale=0.0625,
               init="crystal", init_std=0.01825, embedding_init_std=0.073)

PRESETS: dict[str, ModelArgs] = {
    # every code path in seconds on a CPU; vocab_size is replaced by the tokenizer's
    "tiny": ModelArgs(vocab_size=512, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=192,
                      max_seq_len=256, tie_embeddings=True),
    # the default run: learns something real in a few minutes on 2 CPU cores in fp32
    "demo": ModelArgs(vocab_size=4096, dim=192, n_layers=4, n_heads=4, n_kv_heads=4, ffn_dim=512,
                      max_seq_len=512, tie_embeddings=True),
    # the 1.1B LLaMA of the throughput baselines (TinyLlama shape)
    "1b": ModelArgs(vocab_size=32000, dim=2048, n_layers=22, n_heads=32, n_kv_heads=4, ffn_dim=5632,
                    max_seq_len=2048),
    # LLM360 Amber = LLaMA-7B: 6,738,415,616 parameters, every weight drawn from N(0, 0.02)
    "amber-7b": ModelArgs(vocab_size=32000, dim=4096, n_layers=32, n_heads=32, n_kv_heads=32,
                          ffn_dim=11008, max_seq_len=2048, norm_eps=1e-6, init="normal"),
    # LLM360 CrystalCoder, as its published training config: 14.6 and 2.22 * 0.0625 are its µP
    # multipliers, 0.0625 its width scale (base width 256 / 4096)
    "crystal-7b": ModelArgs(vocab_size=32032, dim=4096, n_layers=32, n_heads=32, n_kv_heads=32,
                            ffn_dim=10922, max_seq_len=2048, tie_embeddings=True, **CRYSTAL),
    # the same features in a size for tests
    "crystal-tiny": ModelArgs(vocab_size=512, dim=64, n_layers=2, n_heads=4, n_kv_heads=4, ffn_dim=176,
                              max_seq_len=256, tie_embeddings=True, **{**CRYSTAL, "rotary_dim": 4}),
}


def model_args(preset: str, **overrides) -> ModelArgs:
    """The named preset with some fields replaced, e.g. model_args("tiny", vocab_size=300)."""
    if preset not in PRESETS:
        raise UserError(f"unknown model preset {preset!r}; known presets: {', '.join(PRESETS)}.")
    known = {f.name for f in fields(ModelArgs)}
    bad = sorted(set(overrides) - known)
    if bad:
        raise UserError(f"unknown model field {bad[0]!r}; fields are: {', '.join(sorted(known))}.")
    return replace(PRESETS[preset], **overrides)


# --------------------------------------------------------------------------------------------
# checkpoint format

# what a Hugging Face format holds only at one value: key -> (value, the value's words)
LLAMA_FIXED = {"bias": False, "rotary_dim": None, "rope_pairing": "half", "embedding_scale": 1.0,
               "output_scale": 1.0, "attention_scale": "1/sqrt(d)"}
CRYSTALCODER_FIXED = {"bias": True, "rope_pairing": "interleaved"}


def checkpoint_format(a: ModelArgs) -> str:
    """The Hugging Face format this model's checkpoints are written in: "llama" (LlamaForCausalLM)
    for an RMSNorm model, "crystalcoder" (LLM360's CrystalCoder) for a LayerNorm one. A setting
    the format cannot hold is a UserError naming its key, so it stops a run before any work."""
    if a.norm == "rmsnorm":
        name, fixed = "llama", LLAMA_FIXED
    else:
        name, fixed = "crystalcoder", CRYSTALCODER_FIXED
        if a.n_kv_heads != a.n_heads:
            raise UserError(f"model.n_kv_heads ({a.n_kv_heads}) must equal model.n_heads ({a.n_heads}) with "
                            f"model.norm=layernorm: the crystalcoder checkpoint format has no grouped-query attention.")
    for key, value in fixed.items():
        if getattr(a, key) != value and not (key == "rotary_dim" and a.rope_dim == a.head_dim):
            raise UserError(f"model.{key} must be {value!r} with model.norm={a.norm}: the {name} checkpoint "
                            f"format cannot hold {getattr(a, key)!r}.")
    return name


# --------------------------------------------------------------------------------------------
# counting


def num_params(model_or_args, exclude_embedding: bool = False) -> int:
    """Parameter count of a Llama or its ModelArgs; exclude_embedding drops the input embedding
    (not a tied output head)."""
    a = getattr(model_or_args, "args", model_or_args)
    norm = a.dim * (2 if a.norm == "layernorm" else 1)
    per_layer = (
        a.dim * a.n_heads * a.head_dim * 2  # wq, wo
        + a.dim * a.n_kv_heads * a.head_dim * 2  # wk, wv
        + a.dim * a.ffn_dim * 3  # w1, w2, w3
        + norm * 2
    )
    if a.bias:
        per_layer += (a.n_heads + 2 * a.n_kv_heads) * a.head_dim + a.dim + 2 * a.ffn_dim + a.dim
    embedding = a.vocab_size * a.dim
    n = embedding + a.n_layers * per_layer + norm + (0 if a.tie_embeddings else embedding)
    if exclude_embedding and not a.tie_embeddings:
        n -= embedding
    return n


def flops_per_token(args: ModelArgs, seq_len: int) -> int:
    """Training FLOPs per token, 6 * N + 12 * L * H * Q * T (PaLM appendix B), N without the
    input embedding (a tied head still does its matmul, so it stays in N)."""
    n = num_params(args, exclude_embedding=True)
    return 6 * n + 12 * args.n_layers * args.n_heads * args.head_dim * seq_len
