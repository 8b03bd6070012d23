"""The spike guard: decide, after each step, whether its update may be applied.

A step is *bad* when its loss or gradient norm is not finite, or when its loss is more than
`zscore` standard deviations above the mean of the last `window` accepted losses. What happens
then is the trainer's business (`skip`, `rollback`, `stop`, or only `log`); this class only
judges, and keeps the history that the judgement needs (saved in every checkpoint so that a
resumed run judges exactly as an uninterrupted one).

The judgement runs on the device, on tensors, so that a step never waits for the GPU: the
verdict gates the optimizer update there (AdamW's `found_inf`), and the host reads it one step
later to write the record. The history is a ring of fp64 losses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

NONFINITE, SPIKE = 1, 2
KINDS = {NONFINITE: "nonfinite", SPIKE: "spike"}


@dataclass
class Verdict:
    """The guard's judgement of one step, as device tensors (0-d)."""
    bad: torch.Tensor  # bool
    kind: torch.Tensor  # 0 good, NONFINITE or SPIKE
    mean: torch.Tensor  # mean and std of the history the loss was judged against
    std: torch.Tensor
    n: torch.Tensor  # entries in that history

    def stacked(self) -> torch.Tensor:
        return torch.stack([self.bad.double(), self.kind.double(), self.mean, self.std, self.n.double()])


def reason(kind: int, loss: float, grad_norm: float, mean: float, std: float, n: int) -> str:
    if kind == NONFINITE:
        return f"loss {loss}, grad_norm {grad_norm}"
    return f"loss {loss:.4f} is {(loss - mean) / std:.1f} std above the mean {mean:.4f} of the last {n} steps"


class SpikeGuard:
    def __init__(self, zscore: float, window: int, device: torch.device | str = "cpu"):
        self.zscore = zscore
        self.window = window
        self.device = torch.device(device)
        self._reset([])

    def _reset(self, history: list[float]) -> None:
        history = history[-self.window:]
        self.ring = torch.zeros(self.window, dtype=torch.float64, device=self.device)
        self.ring[:len(history)] = torch.tensor(history, dtype=torch.float64)
        self.count = torch.tensor(len(history), device=self.device)
        self.pos = torch.tensor(len(history) % self.window, device=self.device)

    def judge(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> Verdict:
        loss, grad_norm = loss.double(), grad_norm.double()
        finite = torch.isfinite(loss) & torch.isfinite(grad_norm)
        filled = torch.arange(self.window, device=self.device) < self.count
        n = self.count.clamp(min=1).double()
        mean = torch.where(filled, self.ring, 0.0).sum() / n
        std = (torch.where(filled, self.ring - mean, 0.0).pow(2).sum() / n).sqrt()
        enough = self.count >= max(self.window // 2, 2)
        spike = finite & enough & (std > 0) & ((loss - mean) > self.zscore * std)
        kind = torch.where(~finite, NONFINITE, torch.where(spike, SPIKE, 0))
        return Verdict(bad=kind > 0, kind=kind, mean=mean, std=std, n=self.count.clone())

    def accept(self, loss: torch.Tensor, take: torch.Tensor | bool = True) -> None:
        """Append `loss` to the history where `take` (a device bool) holds; no host sync."""
        take = torch.as_tensor(take, device=self.device)
        loss = torch.as_tensor(loss, dtype=torch.float64, device=self.device)
        at = self.pos.view(1)  # a tensor index: indexing with the 0-d tensor itself would sync
        self.ring.index_put_((at,), torch.where(take, loss, self.ring.index_select(0, at).squeeze(0)).view(1))
        self.count = torch.where(take, (self.count + 1).clamp(max=self.window), self.count)
        self.pos = torch.where(take, (self.pos + 1) % self.window, self.pos)

    # host conveniences (tests, and reading the state into a checkpoint)

    def check(self, loss: float, grad_norm: float) -> tuple[str, str] | None:
        """(kind, reason) for a bad step, kind 'nonfinite' or 'spike'; None for a good one."""
        v = self.judge(torch.tensor(loss, device=self.device), torch.tensor(grad_norm, device=self.device))
        bad, kind, mean, std, n = v.stacked().tolist()
        if not bad:
            return None
        return KINDS[int(kind)], reason(int(kind), loss, grad_norm, mean, std, int(n))

    def history(self) -> list[float]:
        n, pos = int(self.count), int(self.pos)
        ring = self.ring.tolist()
        return ring[:n] if n < self.window else ring[pos:] + ring[:pos]

    def state_dict(self) -> dict:
        return {"history": [x for x in self.history() if math.isfinite(x)]}

    def load_state_dict(self, state: dict) -> None:
        self._reset(list(state.get("history", [])))
