"""Training records (docs/run-directory.md §5): train.jsonl, events.jsonl, TensorBoard, env.json.

Only rank 0 writes. Each line is flushed and fsynced as it is written, so a crash loses at most
the line in flight, and a resumed run first cuts train.jsonl back to the checkpoint it resumes
from, so every step appears exactly once.
"""

from __future__ import annotations

import json
import math
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

import llm360
from llm360.errors import naming_a_full_disk
from llm360.rundir import ENV_FILE, EVENTS_LOG, TENSORBOARD_DIR, TRAIN_LOG, RunDir
from llm360.utils import append_jsonl, atomic_write_json, atomic_write_text, json_line, read_jsonl, repair_torn_tail


class Records:
    def __init__(self, run_dir: Path, enabled: bool = True):
        run = RunDir(run_dir)
        self.train_log, self.events_log, self.tb_dir = run.path(TRAIN_LOG), run.path(EVENTS_LOG), run.path(TENSORBOARD_DIR)
        self.enabled = enabled
        self.tb = None
        self._train_file = None
        if enabled:
            run.metrics_dir.mkdir(parents=True, exist_ok=True)
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.tb_dir))
            except ImportError:  # tensorboard is an extra; the JSONL files are the record
                self.tb = None

    def event(self, kind: str, step: int, **details) -> dict:
        record = {"time": time.time(), "step": step, "kind": kind, **details}
        if self.enabled:
            append_jsonl(self.events_log, record)
            if self.tb is not None:
                with naming_a_full_disk(self.tb_dir):
                    self.tb.add_text(f"events/{kind}", json_line(details), step)
        return record

    def step(self, record: dict) -> None:
        """One line per step, flushed but not fsynced: `sync()` makes them durable at each
        checkpoint, and lines after the newest checkpoint are trained (and written) again on
        resume anyway. An fsync per step costs more than the rest of the bookkeeping."""
        if not self.enabled:
            return
        with naming_a_full_disk(self.train_log):
            if self._train_file is None:
                repair_torn_tail(self.train_log)
                self._train_file = open(self.train_log, "a", encoding="utf-8")
            self._train_file.write(json_line(record))
            self._train_file.flush()
        if self.tb is not None:
            with naming_a_full_disk(self.tb_dir):
                for key in ("loss", "lr", "grad_norm", "tokens_per_s", "mfu"):
                    value = record.get(key)
                    if isinstance(value, (int, float)) and math.isfinite(value):
                        self.tb.add_scalar(f"train/{key}", value, record["step"])

    def sync(self) -> None:
        if self._train_file is not None:
            with naming_a_full_disk(self.train_log):
                os.fsync(self._train_file.fileno())
        if self.tb is not None:
            with naming_a_full_disk(self.tb_dir):
                self.tb.flush()

    def truncate_steps(self, first_step: int) -> None:
        """Drop train.jsonl lines of steps >= first_step (they are about to be trained again)."""
        if not self.enabled:
            return
        if self._train_file is not None:
            self._train_file.close()
            self._train_file = None
        if not self.train_log.exists():
            return
        kept = [r for r in read_jsonl(self.train_log) if isinstance(r.get("step"), int) and r["step"] < first_step]
        atomic_write_text(self.train_log, "".join(json_line(r) for r in kept))

    def close(self) -> None:
        if self._train_file is not None:
            self.sync()
            self._train_file.close()
            self._train_file = None
        if self.tb is not None:
            with naming_a_full_disk(self.tb_dir):
                self.tb.close()


def git_commit() -> str | None:
    root = Path(llm360.__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment(world_size: int, device: torch.device) -> dict:
    env = {
        "llm360": llm360.__version__,
        "git_commit": git_commit(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "world_size": world_size,
        "start_time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["gpu_count"] = torch.cuda.device_count()
    return env


def write_env(run_dir: Path, env: dict) -> None:
    """env.json holds the first start; later starts are appended under `restarts`."""
    path = Path(run_dir) / ENV_FILE
    if path.exists():
        first = json.loads(path.read_text())
        first.setdefault("restarts", []).append(env)
        atomic_write_json(path, first)
    else:
        atomic_write_json(path, env)


# peak dense bf16 FLOP/s of known accelerators, for MFU (ANCHORS.md)
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_FLOPS.items():
        if key in name:
            return value
    return None
