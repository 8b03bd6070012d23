"""The files of a sharded checkpoint: safetensors written tensor by tensor and hashed as they go,
and the trainer state cut into row ranges, one file per rank (docs/run-directory.md §5.4).

Every tensor of the trainer state (AdamW moments, step, fp32 master weights) is cut along its
first dimension the way FSDP2 cuts parameters (`torch.chunk`: rank r of W holds rows
[r*c, min((r+1)*c, n)) with c = ceil(n / W)), so under FSDP2 a rank writes exactly what it
holds, and with DDP or one process it writes its slice of its full copy. Each file says in its
safetensors metadata which rows of which tensor it holds, so a reader with any number of
processes takes the rows it needs from whichever files hold them: resharding is reading.
The files are plain data: a JSON header and raw little-endian tensor bytes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from contextlib import ExitStack
from pathlib import Path

import torch
from safetensors import safe_open

from llm360.errors import UserError

SHARD_FORMAT = "llm360-trainer-state-shard/1"
DTYPE_CODES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.float64: "F64",
               torch.int64: "I64", torch.int32: "I32", torch.uint8: "U8", torch.bool: "BOOL"}


def chunk_rows(n: int, world: int, rank: int) -> tuple[int, int]:
    """The rows [start, end) of an n-row tensor that rank `rank` of `world` holds (torch.chunk's cut)."""
    size = math.ceil(n / world) if n else 0
    start = min(rank * size, n)
    return start, min(start + size, n)


class SafetensorsStream:
    """A safetensors file written one tensor at a time, in the order of its header (known up
    front from names, dtypes and shapes), its sha256 computed from the bytes as they go to disk:
    no tensor is held beyond the one being written, and nothing is read back to hash it."""

    def __init__(self, path: Path, entries: list[tuple[str, torch.dtype, tuple[int, ...]]], metadata: dict[str, str]):
        header: dict = {"__metadata__": metadata}
        offset = 0
        self.expected: list[tuple[str, int]] = []
        for name, dtype, shape in entries:
            nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
            header[name] = {"dtype": DTYPE_CODES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            self.expected.append((name, nbytes))
            offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        raw += b" " * (-len(raw) % 8)  # the tensor data starts 8-byte aligned, as safetensors writes it
        self.path = path
        self.hash = hashlib.sha256()
        self.file = open(path, "wb")
        self._put(struct.pack("<Q", len(raw)) + raw)
        self.done = 0

    def _put(self, data) -> None:
        self.hash.update(data)
        self.file.write(data)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        want, nbytes = self.expected[self.done]
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
        if name != want or data.nbytes != nbytes:
            raise ValueError(f"{self.path.name}: got {name} ({data.nbytes} bytes), expected {want} ({nbytes} bytes)")
        self._put(memoryview(data))
        self.done += 1

    def close(self) -> str:
        """Flush and fsync the file; its sha256."""
        if self.done != len(self.expected):
            raise ValueError(f"{self.path.name}: {len(self.expected) - self.done} tensors were not written")
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        return self.hash.hexdigest()


def write_rows_file(path: Path, tensors: dict[str, tuple[torch.Tensor, int, tuple[int, ...]]],
                    rank: int, world: int) -> str:
    """One rank's trainer-state file: {name: (rows, first row, full shape)}. Returns its sha256."""
    index = {name: [start, start + (t.shape[0] if t.dim() else 1), list(shape)]
             for name, (t, start, shape) in tensors.items()}
    meta = {"format": "pt", "llm360": json.dumps({"format": SHARD_FORMAT, "rank": rank, "world_size": world,
                                                  "rows": index}, separators=(",", ":"))}
    stream = SafetensorsStream(path, [(n, t.dtype, tuple(t.shape)) for n, (t, _, _) in tensors.items()], meta)
    for name, (t, _, _) in tensors.items():
        stream.write(name, t)
    return stream.close()


class RowShards:
    """The trainer-state files of one checkpoint, opened for reading rows of any tensor."""

    def __init__(self, checkpoint: Path, files: list[str]):
        self.checkpoint = Path(checkpoint)
        self.stack = ExitStack()
        self.where: dict[str, list[tuple[object, int, int]]] = {}  # name -> (file, first row, end row)
        self.shapes: dict[str, tuple[int, ...]] = {}
        for rel in files:
            handle = self.stack.enter_context(safe_open(str(self.checkpoint / rel), framework="pt"))
            meta = json.loads((handle.metadata() or {}).get("llm360", "{}"))
            if meta.get("format") != SHARD_FORMAT:
                raise UserError(f"{self.checkpoint / rel} is not an llm360 trainer-state shard")
            for name, (start, end, shape) in meta["rows"].items():
                self.where.setdefault(name, []).append((handle, start, end))
                self.shapes[name] = tuple(shape)

    def __enter__(self) -> RowShards:
        return self

    def __exit__(self, *exc) -> None:
        self.stack.close()

    def names(self) -> list[str]:
        return list(self.where)

    def rows(self, name: str, start: int = 0, end: int | None = None) -> torch.Tensor:
        """Rows [start, end) of tensor `name` (all of a 0-dim one), read from the files that hold them."""
        shape = self.shapes[name]
        if not shape:
            return self.where[name][0][0].get_tensor(name)
        end = shape[0] if end is None else end
        if end <= start:  # a rank that holds none of its rows
            return self.where[name][0][0].get_slice(name)[0:0]
        pieces, at = [], start
        for handle, first, last in sorted(self.where[name], key=lambda w: w[1]):
            if last <= at or first >= end:
                continue
            if first > at:
                self._missing(name, at, first)
            upto = min(last, end)
            pieces.append(handle.get_slice(name)[at - first:upto - first])
            at = upto
        if at < end:
            self._missing(name, at, end)
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

    def _missing(self, name: str, start: int, end: int):
        raise UserError(f"checkpoint {self.checkpoint.name}: no trainer-state file holds rows {start}..{end - 1} "
                        f"of {name}; its trainer_state/ is incomplete")
