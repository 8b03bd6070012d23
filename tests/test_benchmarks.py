"""The GPU benchmark script keeps working: its --smoke mode runs on CPU with the tiny preset."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_train_smoke(tmp_path):
    pytest.importorskip("transformers")  # the baseline side of the benchmark
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_train.py"), "--smoke", "--out", str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_train.json").read_text())
    assert result["preset"] == "tiny" and result["device"] == "cpu"
    for side in ("llm360", "transformers"):
        assert result[side]["tokens_per_s"] > 0
    assert "llm360 / transformers" in out.stdout
    assert result["llm360"]["host_syncs_per_step"] == 0
    assert result["determinism"]["bitwise_equal"], result["determinism"]
    assert result["amber_7b"]["fits"] and result["amber_7b"]["strategy"] == "fsdp", result["amber_7b"]
