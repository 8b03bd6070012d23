"""LLM360 CrystalCoder for transformers: a GPT-2-shaped model (fused QKV, Conv1D weights stored
[in, out], LayerNorm with biases) with SwiGLU, rotary embeddings on the first `rotary_dim` dims of
each head (GPT-J's interleaved pairs) and the µP multipliers of its training: embeddings times
mup_embeddings_scale, attention scores over d_head instead of sqrt(d_head), logits times
mup_output_alpha * mup_width_scale.

Written by llm360 next to an exported checkpoint's config.json; load it with
`AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`. No key/value cache:
generation recomputes the whole sequence at each step, which is plain and right, if slow.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_crystalcoder import CrystalCoderConfig

try:
    from transformers import initialization as init  # transformers 5: leaves loaded weights alone
except ImportError:
    from torch.nn import init


class Conv1D(nn.Module):
    """A linear layer whose weight is stored (in, out), as GPT-2's."""

    def __init__(self, n_in, n_out):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x):
        return torch.addmm(self.bias, x.reshape(-1, x.size(-1)), self.weight).view(*x.shape[:-1], -1)


def rotate_every_two(x):
    x1, x2 = x[..., ::2], x[..., 1::2]
    return torch.stack((-x2, x1), dim=-1).flatten(-2)


def apply_rotary(x, positions, dim, theta):
    """x (B, nh, T, hs), positions (B, T): rotate the first `dim` dims of each head in pairs (2i, 2i+1)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, device=x.device).float() / dim))
    angles = positions[:, None, :, None].float() * inv_freq  # (B, 1, T, dim/2)
    cos = angles.cos().repeat_interleave(2, dim=-1).to(x.dtype)
    sin = angles.sin().repeat_interleave(2, dim=-1).to(x.dtype)
    rot, rest = x[..., :dim], x[..., dim:]
    return torch.cat((rot * cos + rotate_every_two(rot) * sin, rest), dim=-1)


class CrystalCoderAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.n_head, self.head_dim = config.n_head, config.n_embd // config.n_head
        self.rotary_dim, self.rope_theta = config.rotary_dim, config.rope_theta
        self.scale = self.head_dim ** (-1.0 if config.mup_scale_qk_dot_by_d else -0.5)
        self.c_attn = Conv1D(config.n_embd, 3 * config.n_embd)
        self.c_proj = Conv1D(config.n_embd, config.n_embd)

    def forward(self, x, positions, mask):
        B, T, D = x.shape
        q, k, v = (t.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
                   for t in self.c_attn(x).split(D, dim=-1))  # (B, nh, T, hs) each
        q = apply_rotary(q, positions, self.rotary_dim, self.rope_theta)
        k = apply_rotary(k, positions, self.rotary_dim, self.rope_theta)
        scores = (q @ k.transpose(-1, -2)) * self.scale  # (B, nh, T, T)
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        y = scores.softmax(dim=-1) @ v  # (B, nh, T, hs)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, D))


class CrystalCoderMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = Conv1D(config.n_embd, config.n_inner)  # up
        self.c_fc2 = Conv1D(config.n_embd, config.n_inner)  # gate
        self.c_proj = Conv1D(config.n_inner, config.n_embd)

    def forward(self, x):
        return self.c_proj(self.c_fc(x) * F.silu(self.c_fc2(x)))


class CrystalCoderBlock(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = CrystalCoderAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = CrystalCoderMLP(config)

    def forward(self, x, positions, mask):
        x = x + self.attn(self.ln_1(x), positions, mask)
        return x + self.mlp(self.ln_2(x))


class CrystalCoderPreTrainedModel(PreTrainedModel):
    config_class = CrystalCoderConfig
    base_model_prefix = "transformer"
    _no_split_modules = ["CrystalCoderBlock"]

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, Conv1D):
            init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
            init.zeros_(module.bias)


class CrystalCoderModel(CrystalCoderPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.h = nn.ModuleList(CrystalCoderBlock(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.post_init()

    def get_input_embeddings(self):
        return self.wte

    def set_input_embeddings(self, value):
        self.wte = value

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        B, T = input_ids.shape
        keys = torch.ones(B, T, dtype=torch.bool, device=input_ids.device) if attention_mask is None \
            else attention_mask.bool()
        if position_ids is None:  # count from each row's first real token (left padding)
            position_ids = (keys.long().cumsum(-1) - 1).clamp(min=0)
        causal = torch.ones(T, T, dtype=torch.bool, device=input_ids.device).tril()
        # a padding query still sees itself, so no row of the softmax is empty
        mask = (causal & (keys[:, None, :] | torch.eye(T, dtype=torch.bool, device=input_ids.device)))[:, None]
        x = self.wte(input_ids) * self.config.mup_embeddings_scale  # (B, T, D)
        for block in self.h:
            x = block(x, position_ids, mask)
        return self.ln_f(x)


class CrystalCoderLMHeadModel(CrystalCoderPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"}

    def __init__(self, config):
        super().__init__(config)
        self.transformer = CrystalCoderModel(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.output_logits_scale = config.mup_output_alpha * config.mup_width_scale
        self.post_init()

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, **kwargs):
        return {"input_ids": input_ids, "attention_mask": attention_mask}  # no cache: the whole sequence

    def forward(self, input_ids, attention_mask=None, position_ids=None, labels=None, **kwargs):
        hidden = self.transformer(input_ids, attention_mask, position_ids)
        logits = self.lm_head(hidden).float() * self.output_logits_scale  # (B, T, V)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1),
                                   ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits)
