"""Learning rate: warmup, then linear or cosine decay; per stage its own phase when asked.

The run-wide schedule (train.lr, train.min_lr, train.warmup_steps, train.decay): a linear
warmup from 0 to `lr`, then a decay to `min_lr` over the rest of training. A stage with
`rewarm_steps: R > 0` restarts it at its first step s0: the rate climbs linearly from `min_lr`
back to `lr` over R steps, then decays to `min_lr` over the steps left.

A stage named in `train.stage_schedules` runs a phase of its own from its first step, as
LLM360's Crystal did (three linear phases): warmup from `warmup_from` to `lr` over
`warmup_steps`, then a decay to `end_lr` over `decay_steps` (its horizon; the rate stays at
`end_lr` past it, and a stage may end before it, as Crystal's phase 1 did). A stage without a
phase of its own goes on with the phase before it.

`train.warmup_from_zero`: whether the first step of a warmup trains at the warmup's start value
(Amber: the first update used lr 0) or already one warmup step above it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Phase:
    """One schedule from step `first` on (global steps)."""
    first: int
    lr: float
    end_lr: float
    warmup_steps: int
    decay_steps: int
    warmup_from: float = 0.0
    shape: str = "cosine"  # or "linear"
    from_zero: bool = False

    def at(self, step: int) -> float:
        t = step - self.first
        if t < self.warmup_steps:
            done = (t if self.from_zero else t + 1) / self.warmup_steps
            return self.warmup_from + (self.lr - self.warmup_from) * done
        progress = min((t - self.warmup_steps) / max(self.decay_steps, 1), 1.0)
        if self.shape == "linear":
            return self.lr + (self.end_lr - self.lr) * progress
        return self.end_lr + 0.5 * (self.lr - self.end_lr) * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class Schedule:
    phases: tuple[Phase, ...]  # by first step

    def at(self, step: int) -> float:
        """The learning rate of global step `step` (0-based)."""
        phase = self.phases[0]
        for p in self.phases:
            if p.first <= step:
                phase = p
        return phase.at(step)


def build_schedule(train, stages: list[tuple[str, int, int, int]], total_steps: int) -> Schedule:
    """The run's schedule from its `train` config section and its stages as
    (name, first step, steps, rewarm steps), in order."""
    shape, from_zero = train.decay, train.warmup_from_zero
    phases = [Phase(0, train.lr, train.min_lr, train.warmup_steps, total_steps - train.warmup_steps,
                    shape=shape, from_zero=from_zero)]
    for name, first, steps, rewarm in stages:
        own = train.stage_schedules.get(name)
        if own is not None:
            phases.append(Phase(first, own.lr, own.end_lr, own.warmup_steps,
                                own.decay_steps if own.decay_steps is not None else steps - own.warmup_steps,
                                warmup_from=own.warmup_from, shape=own.decay or shape, from_zero=from_zero))
        elif rewarm > 0:
            phases.append(Phase(first, train.lr, train.min_lr, rewarm, total_steps - first - rewarm,
                                warmup_from=train.min_lr, shape=shape, from_zero=from_zero))
    return Schedule(tuple(phases))


def lr_at(step: int, *, lr: float, min_lr: float, warmup_steps: int, total_steps: int,
          rewarms: list[tuple[int, int]] = (), shape: str = "cosine", from_zero: bool = False) -> float:
    """The run-wide schedule of one step, with re-warms at (first step, R): a shortcut for tests
    and benchmarks that have no config at hand."""
    phases = [Phase(0, lr, min_lr, warmup_steps, total_steps - warmup_steps, shape=shape, from_zero=from_zero)]
    phases += [Phase(first, lr, min_lr, r, total_steps - first - r, warmup_from=min_lr, shape=shape,
                     from_zero=from_zero) for first, r in rewarms if r > 0]
    return Schedule(tuple(phases)).at(step)
