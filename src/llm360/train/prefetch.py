"""The next step's rows, read from the chunk in a background thread while the device trains.

On a GPU the rows land in pinned host memory, so that the copy to the device is asynchronous
(`non_blocking=True`) and overlaps the step before it.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import torch

from llm360.data.store import RunData


class Prefetcher:
    def __init__(self, data: RunData, rank: int, world: int, device: torch.device):
        self.data, self.rank, self.world = data, rank, world
        self.pin = device.type == "cuda"
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llm360-prefetch")
        self.ahead: tuple[int, Future] | None = None

    def _read(self, step: int) -> torch.Tensor:
        rows = torch.from_numpy(self.data.rows_at(step, self.rank, self.world))
        return rows.pin_memory() if self.pin else rows

    def get(self, step: int) -> torch.Tensor:
        """The host rows of `step` (read now unless they were read ahead), then start on `step + 1`."""
        if self.ahead is not None and self.ahead[0] == step:
            rows = self.ahead[1].result()
        else:
            rows = self._read(step)
        nxt = step + 1
        self.ahead = (nxt, self.pool.submit(self._read, nxt)) if nxt < self.data.total_steps else None
        return rows

    def close(self) -> None:
        self.ahead = None
        self.pool.shutdown(wait=True, cancel_futures=True)
