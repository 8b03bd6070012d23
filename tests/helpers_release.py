"""Shared pieces of the release tests: a trained tiny run, stand-in eval/memorization records, and
headless Chromium to look at the report."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"  # git-ignored: screenshots of the report
PLANTED = "<script>alert(1)</script>"
PLANTED_NAME = "<img src=x onerror=alert(2)>.txt"  # a file name that is HTML, so the document uri is too


def train(run: Path, *overrides: str) -> dict:
    from llm360.train.trainer import apply_train_overrides, run_training

    cfg = apply_train_overrides(run, list(overrides))
    return run_training(run, cfg)


def write_records(run: Path) -> None:
    """eval.jsonl and memorization summary.jsonl in the formats of SPEC.md 6, made up but plausible
    (the real evaluation and analysis have their own tests; these exercise the cards and report)."""
    manifest = json.loads((run / "data" / "manifest.json").read_text())
    spc, n_chunks = manifest["steps_per_chunk"], len(manifest["chunks"])
    tokens_per_step = manifest["global_batch_rows"] * manifest["seq_len"]
    rng = random.Random(0)
    names = ["init"] + [f"ckpt_{c:03d}" for c in range(n_chunks)]
    with open(run / "metrics" / "eval.jsonl", "w") as f:
        for i, name in enumerate(names):
            step = i * spc
            for task, metric, base, gain in (("arc_easy", "acc", 0.25, 0.02), ("arc_easy", "acc_norm", 0.26, 0.03),
                                             ("heldout/prose", "perplexity", 320.0, -60.0)):
                value = base + gain * i + rng.uniform(-0.005, 0.005)
                f.write(json.dumps({"checkpoint": name, "step": step, "tokens": step * tokens_per_step, "task": task,
                                    "metric": metric, "value": value, "stderr": abs(value) * 0.04, "n": 100}) + "\n")
    folder = run / "analysis" / "memorization"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "summary.jsonl", "w") as f:
        for i, name in enumerate(names):
            for chunk in range(n_chunks):
                seen = chunk < i
                mean = (0.05 + 0.1 * (i - chunk) / n_chunks) if seen else 0.03 + rng.uniform(0, 0.01)
                hist = [rng.randint(0, 3) for _ in range(33)]
                hist[0] += 4
                f.write(json.dumps({"checkpoint": name, "step": i * spc, "chunk": chunk, "seen": seen, "n": 4,
                                    "mean_score": mean, "extractable_frac": 0.25 if seen and i - chunk > 1 else 0.0,
                                    "histogram": hist}) + "\n")


def chromium_args(user_data: Path) -> list[str]:
    return [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={user_data}", "--hide-scrollbars"]


def render(html: Path, tmp: Path, screenshot: Path | None = None, height: int = 2400) -> tuple[str, str]:
    """Open `html` in headless Chromium: (the DOM after the scripts ran, the browser's log).
    With `screenshot`, also save a PNG of the page (1280 wide)."""
    url = html.resolve().as_uri()
    run = subprocess.run([*chromium_args(tmp / "profile-dom"), "--enable-logging=stderr", "--v=0",
                          "--virtual-time-budget=3000", "--dump-dom", url],
                         capture_output=True, text=True, timeout=90)
    if screenshot is not None:
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        shot = subprocess.run([*chromium_args(tmp / "profile-shot"), f"--screenshot={screenshot}",
                               f"--window-size=1280,{height}", "--virtual-time-budget=3000", url],
                              capture_output=True, text=True, timeout=90)
        assert screenshot.exists(), shot.stderr[-2000:]
    return run.stdout, run.stderr


def console_messages(log: str) -> list[str]:
    """Console lines of a Chromium log. Chromium logs them all at INFO (console.error, uncaught
    exceptions and CSP refusals alike), and the report logs nothing unless a chart fails, so any
    of them is an error."""
    return [line for line in log.splitlines() if ":CONSOLE" in line]


def copy_run(template: Path, dest: Path) -> Path:
    shutil.copytree(template, dest, symlinks=True)
    return dest


_RELEASED: dict[str, Path] = {}


def released_template(prepared_template: Path, tmp_path_factory) -> Path:
    """The tiny run trained (with a NaN injected at step 4, so a batch is skipped), given made-up
    eval and memorization records, and released: built once per session, whichever test file
    asks first. Tests copy it."""
    if "run" not in _RELEASED:
        from llm360.release.release import make_release

        run = tmp_path_factory.mktemp("released") / "run"
        shutil.copytree(prepared_template, run)
        result = train(run, "--train.fault_injection.nan_at_steps=[4]")
        assert result["finished"], result
        write_records(run)
        make_release(run)
        _RELEASED["run"] = run
    return _RELEASED["run"]
