"""Learning rate: linear warmup from 0, cosine decay to `min_lr`, optional re-warm per stage.

A stage with `rewarm_steps: R > 0` (Crystal re-warmed at its stage 3) restarts the schedule at
its first step s0: the rate climbs linearly from `min_lr` back to `lr` over R steps, then decays
by a cosine from `lr` to `min_lr` over the steps left until the end of training.
"""

from __future__ import annotations

import math


def lr_at(step: int, *, lr: float, min_lr: float, warmup_steps: int, total_steps: int,
          rewarms: list[tuple[int, int]] = ()) -> float:
    """The learning rate of global step `step` (0-based). `rewarms` holds (first step, R)."""
    start, warm, floor = 0, warmup_steps, 0.0
    for first, steps in rewarms:
        if steps > 0 and step >= first:
            start, warm, floor = first, steps, min_lr
    t = step - start
    if t < warm:
        return floor + (lr - floor) * (t + 1) / warm
    decay_steps = max(total_steps - start - warm, 1)
    progress = min((t - warm) / decay_steps, 1.0)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))
