"""The model's architecture as numbers: ModelArgs, the named presets, parameter and FLOP counts.

Pure arithmetic, no torch, so the config can check a model before any work (`llm360 prepare`
refuses a preset that does not exist or a context too short for data.seq_len) and the release
can count parameters without loading the model. The model itself is `llm360.model.llama`.

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
        if self.head_dim % 2:
            raise UserError(f"head_dim {self.head_dim} (model.dim / model.n_heads) must be even for rotary embeddings.")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


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
    # LLM360 Amber = LLaMA-7B: 6,738,415,616 parameters
    "amber-7b": ModelArgs(vocab_size=32000, dim=4096, n_layers=32, n_heads=32, n_kv_heads=32,
                          ffn_dim=11008, max_seq_len=2048, norm_eps=1e-6),
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
# counting


def num_params(model_or_args, exclude_embedding: bool = False) -> int:
    """Parameter count of a Llama or its ModelArgs; exclude_embedding drops the input embedding
    (not a tied output head)."""
    a = getattr(model_or_args, "args", model_or_args)
    per_layer = (
        a.dim * a.n_heads * a.head_dim * 2  # wq, wo
        + a.dim * a.n_kv_heads * a.head_dim * 2  # wk, wv
        + a.dim * a.ffn_dim * 3  # w1, w2, w3
        + a.dim * 2  # norms
    )
    embedding = a.vocab_size * a.dim
    n = embedding + a.n_layers * per_layer + a.dim + (0 if a.tie_embeddings else embedding)
    if exclude_embedding and not a.tie_embeddings:
        n -= embedding
    return n


def flops_per_token(args: ModelArgs, seq_len: int) -> int:
    """Training FLOPs per token, 6 * N + 12 * L * H * Q * T (PaLM appendix B), N without the
    input embedding (a tied head still does its matmul, so it stays in N)."""
    n = num_params(args, exclude_embedding=True)
    return 6 * n + 12 * args.n_layers * args.n_heads * args.head_dim * seq_len
