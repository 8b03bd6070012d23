"""AdamW for weights kept in bf16: moments in fp32, each update rounded stochastically.

With `train.precision: bf16-weights` the model's weights and gradients are bf16 (half the
memory of fp32 master weights) while the optimizer keeps its two moments in fp32. The update is
computed in fp32; rounding it to the nearest bf16 would drop every change smaller than half a
bf16 step (1/256 of the weight), which late in training is most of them, so the result is
rounded *stochastically*: up or down with the probabilities that make the expected weight the
exact fp32 result. The random bits come from a generator seeded by (run seed, step, rank), so a
resumed or replayed run rounds exactly as the original.

The math is torch.optim.AdamW's (decoupled weight decay, bias-corrected moments), and the
trainer's `found_inf` contract is kept: when it is 1 the step leaves weights, moments and step
count as they were, decided on the device.
"""

from __future__ import annotations

import torch


def _local(t: torch.Tensor) -> torch.Tensor:
    """The shard this rank holds (FSDP2 DTensors); AdamW is elementwise, so shards suffice."""
    return t.to_local() if hasattr(t, "to_local") else t


def round_stochastic(x: torch.Tensor, dtype: torch.dtype, generator: torch.Generator | None) -> torch.Tensor:
    """fp32 `x` to bf16, up or down at random with the probabilities of an unbiased rounding:
    add 16 random low bits to the fp32 pattern, then cut them off (bf16 is fp32's upper half)."""
    if dtype != torch.bfloat16:
        return x.to(dtype)
    bits = torch.randint(0, 1 << 16, x.shape, dtype=torch.int32, device=x.device, generator=generator)
    bits.add_(x.contiguous().view(torch.int32)).bitwise_and_(-65536)  # -65536 == 0xFFFF0000
    return bits.view(torch.float32).to(torch.bfloat16)  # exact: the low bits are zero


def adamw_update(w: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, step: torch.Tensor,
                 keep: torch.Tensor, noise: torch.Tensor | None, lr: torch.Tensor, beta1: torch.Tensor,
                 beta2: torch.Tensor, eps: torch.Tensor, wd: torch.Tensor) -> None:
    """One AdamW update of one tensor, in place, with `keep` (0 or 1, a device scalar) scaling
    every change so that a withheld step changes nothing without the host knowing which it was.
    `noise`: 16 random low bits per element for the stochastic rounding of bf16 weights.
    The hyperparameters are CPU scalar tensors: compiled, a new learning rate recompiles
    nothing, and no value is baked into the graph (torch 2.13 baked `beta2 ** step` in once
    with a float beta2 and reused it for another beta2)."""
    g = torch.where(keep > 0, g.float(), 0.0)  # a NaN gradient must not reach the moments
    step.add_(keep)
    m.lerp_(g, (1 - beta1) * keep)
    v.lerp_(g.square_(), (1 - beta2) * keep)  # beta2 v + (1 - beta2) g^2
    done = step.clamp(min=1)  # a first step withheld: no 0/0 (its change is scaled by 0 anyway)
    bc1 = 1 - beta1 ** done
    bc2 = 1 - beta2 ** done
    w32 = w.float()  # w itself for fp32 weights
    w32.mul_(1 - lr * wd * keep)
    update = v.sqrt().div_(bc2.sqrt()).add_(eps)
    w32.addcmul_(m / update, -lr * keep / bc1)
    if noise is not None:
        bits = noise.add(w32.view(torch.int32)).bitwise_and_(-65536)  # round_stochastic, with given bits
        w.copy_(bits.view(torch.float32))  # exact: the low bits are zero


class AdamWLowPrecision(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, compile: bool = False):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))
        self.found_inf: torch.Tensor | None = None
        self.rounding_seed = 0
        self._generators: dict[torch.device, torch.Generator] = {}
        # compiled, the update is one fused kernel per tensor instead of about fifteen
        self._update = torch.compile(adamw_update, dynamic=True) if compile else adamw_update

    def _generator(self, device: torch.device) -> torch.Generator:
        gen = self._generators.get(device)
        if gen is None:
            gen = self._generators[device] = torch.Generator(device=device)
        return gen

    def load_state_dict(self, state_dict: dict) -> None:
        """As torch's, but the moments stay fp32: torch casts all state to its parameter's dtype."""
        super().load_state_dict(state_dict)
        ids = [i for group in state_dict["param_groups"] for i in group["params"]]
        params = [p for group in self.param_groups for p in group["params"]]
        for i, p in zip(ids, params):
            for key, value in state_dict["state"].get(i, {}).items():
                if torch.is_tensor(value):
                    self.state[p][key] = value.to(device=p.device if key != "step" else _local(p).device,
                                                  dtype=torch.float32)

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("AdamWLowPrecision.step takes no closure")
        seeded: set[torch.device] = set()
        for group in self.param_groups:
            lr, beta1, beta2, eps, wd = (torch.tensor(float(x), dtype=torch.float64) for x in (
                group["lr"], *group["betas"], group["eps"], group["weight_decay"]))
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32, device=_local(p).device)
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32, memory_format=torch.preserve_format)
                w = _local(p)
                keep = torch.ones((), device=w.device)
                if self.found_inf is not None:
                    keep = 1.0 - self.found_inf.to(w.device, non_blocking=True).clamp(0, 1)
                noise = None
                if w.dtype == torch.bfloat16:
                    if w.device not in seeded:
                        self._generator(w.device).manual_seed(self.rounding_seed)
                        seeded.add(w.device)
                    noise = torch.randint(0, 1 << 16, (w.numel(),), dtype=torch.int32, device=w.device,
                                          generator=self._generator(w.device))
                elif w.dtype != torch.float32:
                    raise TypeError(f"AdamWLowPrecision keeps fp32 or bf16 weights, not {w.dtype}")
                self._update(w.view(-1), _local(p.grad).view(-1), _local(state["exp_avg"]).view(-1),
                             _local(state["exp_avg_sq"]).view(-1), state["step"], keep, noise, lr,
                             beta1, beta2, eps, wd)
        return None
