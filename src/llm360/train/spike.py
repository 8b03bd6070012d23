"""The spike guard: decide, after each step, whether its update may be applied.

A step is *bad* when its loss or gradient norm is not finite, or when its loss is more than
`zscore` standard deviations above the mean of the last `window` accepted losses. What happens
then is the trainer's business (`skip`, `rollback`, `stop`, or only `log`); this class only
judges, and keeps the history that the judgement needs (saved in every checkpoint so that a
resumed run judges exactly as an uninterrupted one).
"""

from __future__ import annotations

import math
from collections import deque


class SpikeGuard:
    def __init__(self, zscore: float, window: int):
        self.zscore = zscore
        self.window = window
        self.history: deque[float] = deque(maxlen=window)

    def check(self, loss: float, grad_norm: float) -> tuple[str, str] | None:
        """(kind, reason) for a bad step, kind 'nonfinite' or 'spike'; None for a good one."""
        if not math.isfinite(loss) or not math.isfinite(grad_norm):
            return "nonfinite", f"loss {loss}, grad_norm {grad_norm}"
        if len(self.history) >= max(self.window // 2, 2):
            n = len(self.history)
            mean = sum(self.history) / n
            std = math.sqrt(sum((x - mean) ** 2 for x in self.history) / n)
            if std > 0 and (loss - mean) / std > self.zscore:
                return "spike", f"loss {loss:.4f} is {(loss - mean) / std:.1f} std above the mean {mean:.4f} of the last {n} steps"
        return None

    def accept(self, loss: float) -> None:
        self.history.append(loss)

    def state_dict(self) -> dict:
        return {"history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.history = deque(state.get("history", []), maxlen=self.window)
