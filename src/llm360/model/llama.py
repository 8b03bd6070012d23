"""A LLaMA in plain PyTorch, the one model every stage of llm360 uses, and CrystalCoder as a variant.

Architecture as LLaMA / LLM360 Amber: pre-norm blocks with RMSNorm, rotary position embeddings,
grouped-query attention and a SwiGLU MLP; input and output embeddings tied or not. Rotary
embeddings use the "rotate half" layout of Hugging Face's Llama, so weights move to and from
transformers without permuting q/k (see `llm360.model.hf` for the name mapping). The
architecture's numbers (ModelArgs, presets, parameter counts) are in `llm360.model.args`.

LLM360 CrystalCoder is the same skeleton with other parts, each picked once when the model is
built and never tested in `forward`: LayerNorm with a bias (`make_norm`), biases on the linear
layers, rotary on the first `rotary_dim` dims of a head with GPT-J's interleaved pairs
(`Rotary`), and µP: scaled embeddings and logits (`scale_by`), attention scores scaled by
1/d_head. `param_roles` tells the trainer which weights µP trains at a smaller learning rate.

Nothing here knows about parallelism, compilation or activation checkpointing: those are applied
from outside (`self.layers` is a ModuleList of blocks that can each be wrapped).

Build big models without allocating twice:

    with torch.device("meta"):
        model = Llama(args)
    model.to_empty(device="cuda")
    model.init_weights(seed=1234)

Initialization (`init_weights`), by `args.init`: "llama", every weight ~ N(0, init_std) except
the output projections of attention (wo) and of the MLP (w2), which get init_std /
sqrt(2 * n_layers) so the residual stream does not grow with depth (GPT-2 / OLMo); "normal",
N(0, init_std) for every weight (Amber); "crystal", as "llama" but truncated at 2 std and the
embeddings at embedding_init_std. Norm weights are 1, biases 0. The numbers are drawn on the CPU
from one torch.Generator seeded with `seed`, parameter by parameter in `named_parameters()` order,
then copied to the parameter's device, so the same seed gives the same weights whatever device or
construction path was used.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from llm360.errors import UserError
from llm360.model.args import PRESETS, ModelArgs, flops_per_token, model_args, num_params  # noqa: F401  (re-exported)


# --------------------------------------------------------------------------------------------
# building blocks


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # normalize in fp32 even under bf16 autocast, cast back before the weight (as HF Llama)
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.type_as(x)


def make_norm(args: ModelArgs) -> nn.Module:
    """The model's norm: RMSNorm (LLaMA) or LayerNorm with a bias (CrystalCoder)."""
    if args.norm == "layernorm":
        return nn.LayerNorm(args.dim, eps=args.norm_eps)
    return RMSNorm(args.dim, args.norm_eps)


class Scale(nn.Module):
    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


def scale_by(factor: float) -> nn.Module:
    """Multiply by a constant (a µP multiplier); a model without one pays no op for it."""
    return nn.Identity() if factor == 1 else Scale(factor)


def _partner_half(x: torch.Tensor) -> torch.Tensor:
    return x.roll(x.size(-1) // 2, dims=-1)  # i <-> i + d/2


def _partner_interleaved(x: torch.Tensor) -> torch.Tensor:
    return x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)  # 2i <-> 2i + 1


class Rotary:
    """Rotary position embeddings on the first `args.rope_dim` dims of each head.

    Rotating is x * cos + partner(x) * sin, where partner(x) swaps each dim with the other one of
    its pair and the sin table carries the rotation's sign. Pairs are i and i + d/2 ("half", HF
    Llama: the same products as HF's rotate_half, in fewer ops) or 2i and 2i + 1 ("interleaved",
    GPT-J / CrystalCoder). Dims past rope_dim pass through unchanged.
    """

    def __init__(self, args: ModelArgs):
        self.dim, self.theta, self.max_seq_len = args.rope_dim, args.rope_theta, args.max_seq_len
        self.interleaved = args.rope_pairing == "interleaved"
        self.partner = _partner_interleaved if self.interleaved else _partner_half
        # whole heads need no slicing: the LLaMA path stays the three ops it always was
        self.rotate = self._rotate_all if self.dim == args.head_dim else self._rotate_first

    def tables(self, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin for every position, each (max_seq_len, rope_dim), in fp32."""
        d = self.dim
        inv_freq = 1.0 / (self.theta ** (torch.arange(0, d, 2, dtype=torch.int64, device=device).float() / d))
        pos = torch.arange(self.max_seq_len, dtype=torch.int64, device=device).float()
        freqs = pos[:, None] * inv_freq[None, :]  # (S, d/2)
        if self.interleaved:
            cos = freqs.cos().repeat_interleave(2, dim=-1)
            return cos, torch.stack((-freqs.sin(), freqs.sin()), dim=-1).flatten(-2)
        return torch.cat((freqs, freqs), dim=-1).cos(), torch.cat((-freqs.sin(), freqs.sin()), dim=-1)

    def __call__(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        # x (B, T, nh, hs); cos, sin (B or 1, T, 1, rope_dim)
        return self.rotate(x, cos, sin)

    def _rotate_all(self, x, cos, sin):
        return x * cos + self.partner(x) * sin

    def _rotate_first(self, x, cos, sin):
        return torch.cat((self._rotate_all(x[..., :self.dim], cos, sin), x[..., self.dim:]), dim=-1)


def rope_tables(args: ModelArgs, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and signed sin of the model's rotary embeddings, each (max_seq_len, rope_dim)."""
    return Rotary(args).tables(device)


class KVCache:
    """A static key/value cache (gpt-fast style): preallocated for `batch_size` rows and
    `max_len` positions, written in place. Make one with `Llama.new_cache`."""

    def __init__(self, args: ModelArgs, batch_size: int, max_len: int, device, dtype: torch.dtype):
        shape = (batch_size, args.n_kv_heads, max_len, args.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(args.n_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(args.n_layers)]
        self.max_len = max_len

    def update(self, layer: int, start_pos: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, nkv, T, hs) at positions start_pos.. and return all keys/values so far."""
        B, _, T, _ = k.shape
        end = start_pos + T
        self.k[layer][:B, :, start_pos:end] = k
        self.v[layer][:B, :, start_pos:end] = v
        return self.k[layer][:B, :, :end], self.v[layer][:B, :, :end]  # (B, nkv, end, hs)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs, layer_id: int):
        super().__init__()
        self.layer_id = layer_id
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        self.rotary = Rotary(args)
        # None: SDPA's own 1/sqrt(d_head); µP scales the scores by 1/d_head
        self.scale = 1.0 / args.head_dim if args.attention_scale == "1/d" else None
        self.wq = nn.Linear(args.dim, args.n_heads * args.head_dim, bias=args.bias)
        self.wk = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=args.bias)
        self.wv = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=args.bias)
        self.wo = nn.Linear(args.n_heads * args.head_dim, args.dim, bias=args.bias)

    def forward(self, x, cos, sin, mask=None, cache: KVCache | None = None, start_pos: int = 0):
        B, T, _ = x.shape
        nh, nkv, hs = self.n_heads, self.n_kv_heads, self.head_dim
        q = self.rotary(self.wq(x).view(B, T, nh, hs), cos, sin).transpose(1, 2)  # (B, nh, T, hs)
        k = self.rotary(self.wk(x).view(B, T, nkv, hs), cos, sin).transpose(1, 2)  # (B, nkv, T, hs)
        v = self.wv(x).view(B, T, nkv, hs).transpose(1, 2)  # (B, nkv, T, hs)
        if cache is not None:
            k, v = cache.update(self.layer_id, start_pos, k, v)  # (B, nkv, S, hs)
        # is_causal is only right when queries and keys start at the same position; anything
        # else (cached decoding, padding) comes with an explicit mask or needs none (T == 1)
        is_causal = mask is None and T > 1 and start_pos == 0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                           scale=self.scale, enable_gqa=nkv != nh)  # (B, nh, T, hs)
        return self.wo(y.transpose(1, 2).reshape(B, T, nh * hs))


class FeedForward(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.w1 = nn.Linear(args.dim, args.ffn_dim, bias=args.bias)  # gate
        self.w2 = nn.Linear(args.ffn_dim, args.dim, bias=args.bias)  # down
        self.w3 = nn.Linear(args.dim, args.ffn_dim, bias=args.bias)  # up

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, args: ModelArgs, layer_id: int):
        super().__init__()
        self.attention_norm = make_norm(args)
        self.attention = Attention(args, layer_id)
        self.ffn_norm = make_norm(args)
        self.feed_forward = FeedForward(args)

    def forward(self, x, cos, sin, mask=None, cache: KVCache | None = None, start_pos: int = 0):
        x = x + self.attention(self.attention_norm(x), cos, sin, mask, cache, start_pos)
        return x + self.feed_forward(self.ffn_norm(x))


# --------------------------------------------------------------------------------------------
# the model


class Llama(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.scale_embeddings = scale_by(args.embedding_scale)
        self.layers = nn.ModuleList(Block(args, i) for i in range(args.n_layers))
        self.norm = make_norm(args)
        # tied: the logits use tok_embeddings.weight directly, so there is no second parameter
        # that to_empty / FSDP / load_state_dict could silently untie
        self.output = None if args.tie_embeddings else nn.Linear(args.dim, args.vocab_size, bias=False)
        self.scale_logits = scale_by(args.output_scale)
        cos, sin = rope_tables(args)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def init_rope(self, device: torch.device | str | None = None) -> None:
        """(Re)compute the fp32 rotary tables, after to_empty (which leaves them garbage) or on
        another device."""
        self.rope_cos, self.rope_sin = rope_tables(self.args, device=device or self.rope_cos.device)

    @torch.no_grad()
    def init_weights(self, seed: int) -> None:
        """Seeded initialization, the same on any device (see the module docstring)."""
        self.init_rope()
        gen = torch.Generator(device="cpu").manual_seed(seed)
        for name, role in param_roles(self).items():
            p = self.get_parameter(name)
            if role in ("norm", "bias"):
                p.fill_(1.0 if role == "norm" and name.endswith("weight") else 0.0)
                continue
            values = torch.empty(p.shape, dtype=torch.float32)
            std = self._init_std(name, role)
            if self.args.init == "crystal":
                nn.init.trunc_normal_(values, 0.0, std, -2 * std, 2 * std, generator=gen)
            else:
                values.normal_(0.0, std, generator=gen)
            _copy_into(p, values)

    def _init_std(self, name: str, role: str) -> float:
        a = self.args
        if role == "embedding" and a.embedding_init_std is not None:
            return a.embedding_init_std
        if a.init != "normal" and name.endswith(("attention.wo.weight", "feed_forward.w2.weight")):
            return a.init_std / math.sqrt(2 * a.n_layers)
        return a.init_std

    def new_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        p = self.tok_embeddings.weight
        return KVCache(self.args, batch_size, max_len or self.args.max_seq_len, p.device, p.dtype)

    def forward(
        self,
        tokens: torch.Tensor,
        *,
        cache: KVCache | None = None,
        start_pos: int = 0,
        positions: torch.Tensor | None = None,
        key_mask: torch.Tensor | None = None,
        segments: torch.Tensor | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Logits (B, T, V) in fp32 for tokens (B, T).

        cache, start_pos: decode with a KVCache; tokens sit at cache positions start_pos..+T.
        positions: (B, T) rotary positions when they differ from the cache positions (left-padded
            rows: a row's first real token is position 0).
        key_mask: (B, start_pos + T) bool, False for padding that no token may attend to.
        segments: (B, T) ints, the document each token belongs to in a packed row (no cache): a
            token attends only to earlier tokens of its own segment, and rotary positions restart
            at 0 where a segment starts, so each document is computed as if it were alone.
        last_only: return only the last position's logits (B, 1, V), all generation needs.
        Training and right-padded scoring need none of these: attention is causal.
        """
        B, T = tokens.shape
        if start_pos + T > self.args.max_seq_len:
            raise UserError(f"sequence of {start_pos + T} tokens exceeds the model context of {self.args.max_seq_len}.")
        if segments is not None:
            positions, key_mask = segment_positions(segments), None
        if positions is None:
            cos = self.rope_cos[start_pos:start_pos + T][None, :, None]  # (1, T, 1, hs)
            sin = self.rope_sin[start_pos:start_pos + T][None, :, None]
        else:
            cos = self.rope_cos[positions][:, :, None]  # (B, T, 1, hs)
            sin = self.rope_sin[positions][:, :, None]
        mask = None
        if segments is not None:
            mask = segment_mask(segments)  # (B, 1, T, T)
        elif key_mask is not None or (start_pos > 0 and T > 1):
            mask = attention_mask(B, T, start_pos, key_mask, tokens.device)  # (B, 1, T, S)
        h = self.scale_embeddings(self.tok_embeddings(tokens))  # (B, T, D)
        cos, sin = cos.to(h.dtype), sin.to(h.dtype)
        for layer in self.layers:
            h = layer(h, cos, sin, mask, cache, start_pos)
        if last_only:
            h = h[:, -1:]
        h = self.norm(h)
        logits = self.output(h) if self.output is not None else F.linear(h, self.tok_embeddings.weight)
        return self.scale_logits(logits.float())  # (B, T, V)


def param_roles(model: nn.Module) -> dict[str, str]:
    """Each parameter's name (as model.named_parameters() gives it, wrapper prefixes and all)
    -> its role for the optimizer: "embedding", "output" (an untied head), "norm" (weights and
    biases of norms), "bias" (of linear layers) or "hidden" (the matrices of the blocks, which
    µP trains at args.hidden_lr_scale times the base learning rate). Norms and biases usually
    get no weight decay."""
    roles = {}
    for name, p in model.named_parameters():
        if name.endswith("tok_embeddings.weight"):
            roles[name] = "embedding"
        elif name.endswith("output.weight"):
            roles[name] = "output"
        elif name.endswith(("norm.weight", "norm.bias")):
            roles[name] = "norm"
        elif name.endswith(".bias"):
            roles[name] = "bias"
        else:
            roles[name] = "hidden"
    return roles


def attention_mask(B: int, T: int, start_pos: int, key_mask: torch.Tensor | None, device) -> torch.Tensor:
    """Bool (B, 1, T, S) mask, True = may attend: causal from start_pos, padding keys hidden."""
    S = start_pos + T
    q_pos = torch.arange(start_pos, S, device=device)[:, None]  # (T, 1)
    k_pos = torch.arange(S, device=device)[None, :]  # (1, S)
    mask = (k_pos <= q_pos)[None].expand(B, T, S)  # (B, T, S)
    if key_mask is not None:
        # a padding query still sees itself: a fully masked row would make SDPA return NaN,
        # and NaN * 0 leaks into real rows through the next layer's attention
        mask = mask & (key_mask[:, None, :S] | (k_pos == q_pos)[None])
    return mask[:, None]


def segment_positions(segments: torch.Tensor) -> torch.Tensor:
    """(B, T) rotary positions of a packed row: 0 at each segment's first token, then 1, 2..."""
    T = segments.size(1)
    idx = torch.arange(T, device=segments.device).expand_as(segments)  # (B, T)
    starts = torch.ones_like(segments, dtype=torch.bool)
    starts[:, 1:] = segments[:, 1:] != segments[:, :-1]
    # the index of the latest segment start at or before each token
    return idx - torch.where(starts, idx, 0).cummax(dim=1).values


def segment_mask(segments: torch.Tensor) -> torch.Tensor:
    """Bool (B, 1, T, T) mask, True = may attend: causal, and only within the token's segment.
    Every token sees at least itself, so no row of the mask is empty (SDPA would give NaN)."""
    T = segments.size(1)
    causal = torch.ones(T, T, dtype=torch.bool, device=segments.device).tril()  # (T, T)
    same = segments[:, :, None] == segments[:, None, :]  # (B, T, T)
    return (same & causal)[:, None]


@torch.no_grad()
def grow_embeddings(model: Llama, new_vocab: int, seed: int) -> None:
    """Give `model` rows for token ids vocab_size..new_vocab-1 (tokens added to its tokenizer).

    Each new row (of the input embedding, and of the output head when untied) is drawn from a
    normal with the per-dimension mean and standard deviation of the existing rows, the noise
    from a CPU torch.Generator seeded with `seed` (embedding rows first, then output rows): a
    new token starts as a typical token, so its logit sits among the others' rather than far
    above or below them, and the same seed gives the same rows. Existing rows are not touched;
    args.vocab_size becomes new_vocab. Grow before sharding or building the optimizer.
    """
    old = model.args.vocab_size
    if new_vocab < old:
        raise UserError(f"cannot shrink the vocabulary from {old} to {new_vocab} tokens")
    if new_vocab == old:
        return
    gen = torch.Generator(device="cpu").manual_seed(seed)
    emb = model.tok_embeddings
    emb.weight = nn.Parameter(_grown(emb.weight, new_vocab - old, gen))
    emb.num_embeddings = new_vocab
    if model.output is not None:
        model.output.weight = nn.Parameter(_grown(model.output.weight, new_vocab - old, gen))
        model.output.out_features = new_vocab
    model.args.vocab_size = new_vocab


def _grown(weight: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """`weight` (V, D) with n rows appended ~ N(mean, std) of its rows, per dimension."""
    rows = weight.detach().float().cpu()
    mean, std = rows.mean(dim=0), rows.std(dim=0)  # (D,)
    new = mean + std * torch.randn(n, rows.size(1), generator=gen)  # (n, D)
    return torch.cat([weight.detach(), new.to(weight.dtype).to(weight.device)])


def _copy_into(p: torch.Tensor, full: torch.Tensor) -> None:
    """Copy a full CPU tensor into a parameter, plain or sharded (DTensor, as FSDP2 makes)."""
    if hasattr(p, "device_mesh"):  # a DTensor: each rank keeps its own shard of the same draw
        from torch.distributed.tensor import distribute_tensor
        full = distribute_tensor(full.to(p.device_mesh.device_type), p.device_mesh, p.placements, src_data_rank=None)
        p.to_local().copy_(full.to_local())
    else:
        p.copy_(full)
