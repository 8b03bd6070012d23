"""`llm360 verify`: a clean release verifies; every kind of tampering is found and named; paths
that leave the run are findings and are never opened."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from helpers_release import copy_run, released_template
from llm360.cli import main
from llm360.release import files as release_files
from llm360.release.files import link_leaves, unsafe_path
from llm360.release.verify import check, verify
from llm360.utils import sha256_file


@pytest.fixture
def run(prepared_template, tmp_path_factory, tmp_path) -> Path:
    return copy_run(released_template(prepared_template, tmp_path_factory), tmp_path / "run")


def flip_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0x01
    path.write_bytes(bytes(data))


def reseal(run: Path) -> None:
    """Rewrite release.json's file hashes to match the run as it is now: what a careless (or
    dishonest) re-release would do. Only the consistency checks can then find a problem."""
    record = json.loads((run / "release.json").read_text())
    for entry in record["files"]:
        path = run / entry["path"]
        if path.is_file():
            entry["bytes"], entry["sha256"] = path.stat().st_size, sha256_file(path)
    (run / "release.json").write_text(json.dumps(record, indent=2))


def test_clean_release_verifies(run, capsys):
    assert verify(run) == []
    assert main(["verify", str(run)]) == 0
    out = capsys.readouterr().out
    assert "verified" in out and "findings     0" in out
    assert main(["verify", str(run), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["verified"] is True and report["findings"] == []
    assert report["counts"]["files"] > 40 and report["counts"]["checkpoints"] == 4 and report["counts"]["chunks"] == 3


@pytest.mark.parametrize("target", ["data/chunks/chunk_001.npy", "checkpoints/ckpt_001/model.safetensors",
                                    "metrics/train.jsonl"])
def test_a_flipped_byte_is_found_and_named(run, target, capsys):
    path = run / target
    if target.endswith(".jsonl"):  # flip a digit inside a line: still valid JSON, another number
        text = path.read_text()
        i = text.index('"loss": ') + len('"loss": ') + 2
        flip_byte(path, i)
    else:
        flip_byte(path)
    findings = verify(run)
    assert findings, "tampering not found"
    assert all(f.startswith(target + ":") for f in findings), findings
    assert any("sha256 differs from release.json" in f for f in findings)
    if target.startswith("data/"):
        assert any("data/manifest.json" in f for f in findings)  # the manifest disagrees too
    if target.startswith("checkpoints/"):
        assert any("CHECKSUMS.sha256" in f for f in findings)  # so does the checkpoint
    assert main(["verify", str(run)]) == 1
    assert target in capsys.readouterr().out


def test_added_and_removed_files_are_named(run):
    (run / "metrics" / "notes.txt").write_text("an extra file\n")
    (run / "checkpoints" / "ckpt_000" / "trainer_state" / "rng.safetensors").unlink()
    result = check(run)
    by_path = {f.path: f for f in result.findings}
    assert by_path["metrics/notes.txt"].kind == "extra"
    assert by_path["checkpoints/ckpt_000/trainer_state/rng.safetensors"].kind == "missing"
    assert result.counts()["extra"] == 1 and result.counts()["missing"] >= 1


def test_a_removed_checkpoint_and_chunk_are_named(run):
    import shutil

    shutil.rmtree(run / "checkpoints" / "ckpt_002")
    (run / "data" / "chunks" / "chunk_002.npy").unlink()
    findings = verify(run)
    assert any(f.startswith("checkpoints/ckpt_002:") and "checkpoint table" in f for f in findings), findings
    assert any(f.startswith("data/chunks/chunk_002.npy:") and "missing" in f for f in findings)


def test_paths_leaving_the_run_are_findings_and_never_opened(run, tmp_path, monkeypatch):
    secret = tmp_path / "outside.txt"
    secret.write_text("not part of the run\n")
    os.symlink(secret, run / "analysis" / "leak.txt")  # a link out, as a file
    os.symlink(tmp_path, run / "metrics" / "up")  # a link out, as a folder
    record = json.loads((run / "release.json").read_text())
    digest = sha256_file(secret)
    record["files"] += [{"path": "../outside.txt", "bytes": 20, "sha256": digest},
                        {"path": str(secret), "bytes": 20, "sha256": digest},
                        {"path": "metrics/up/outside.txt", "bytes": 20, "sha256": digest}]
    (run / "release.json").write_text(json.dumps(record))

    opened = []
    real = release_files.sha256_regular
    monkeypatch.setattr(release_files, "sha256_regular", lambda p, progress=None: opened.append(Path(p)) or real(p, progress))
    result = check(run)
    root = run.resolve()
    assert opened and all(p.resolve().is_relative_to(root) for p in opened)
    assert not any(p.name == "outside.txt" for p in opened)

    by_path = {f.path: str(f) for f in result.findings}
    assert "goes up" in by_path["../outside.txt"]
    assert "absolute" in by_path[str(secret)]
    assert "symbolic link" in by_path["metrics/up/outside.txt"]
    assert "outside RUN" in by_path["analysis/leak.txt"] and "outside RUN" in by_path["metrics/up"]
    assert all(f.kind == "unsafe" for f in result.findings if f.path in by_path and "outside" in f.path)
    assert main(["verify", str(run)]) == 1


def test_consistency_is_checked_beyond_the_hashes(run):
    # a checkpoint table row, the config hash, the fingerprint and the manifest, each made
    # inconsistent with release.json's hashes resealed: only the consistency checks can tell
    record = json.loads((run / "release.json").read_text())
    record["checkpoints"] = [c for c in record["checkpoints"] if c["name"] != "ckpt_001"]
    record["checkpoints"][-1]["tokens"] += 1
    record["config_sha256"] = "0" * 64
    (run / "release.json").write_text(json.dumps(record))
    manifest = json.loads((run / "data" / "manifest.json").read_text())
    manifest["chunks"] = manifest["chunks"][:2]
    (run / "data" / "manifest.json").write_text(json.dumps(manifest))
    checksums = run / "checkpoints" / "ckpt_000" / "CHECKSUMS.sha256"
    checksums.write_text(checksums.read_text().replace("  config.json", "  config.jsn"))
    reseal(run)

    findings = verify(run)
    text = "\n".join(findings)
    assert "checkpoints/ckpt_001: a checkpoint not in release.json's checkpoint table" in text
    assert "checkpoints/ckpt_002: release.json says" in text and "tokens" in text
    assert "run.yaml: sha256 differs from release.json's config_sha256" in text
    assert "data/manifest.json: 2 chunks listed, the stages make 3" in text
    assert "data/manifest.json: the fingerprint recomputed from the manifest differs" in text
    assert "data/chunks/chunk_002.npy: a chunk file that data/manifest.json does not list" in text
    assert "checkpoints/ckpt_000/config.json: not in the checkpoint's CHECKSUMS.sha256" in text


def test_missing_or_broken_release_json(run):
    (run / "release.json").write_text("{not json")
    assert verify(run)[0].startswith("release.json: not valid JSON")
    (run / "release.json").unlink()
    findings = verify(run)
    assert findings == ["release.json: no release.json: run `llm360 release RUN` first"]


def test_special_files_are_not_opened(run):
    os.mkfifo(run / "metrics" / "pipe")  # opening a FIFO would block forever
    findings = verify(run)
    assert findings == ["metrics/pipe: a named pipe, not a regular file; not opened"]


def test_unsafe_path_rules():
    for ok in ("run.yaml", "data/chunks/chunk_000.npy", "a/.hidden", "..x/y"):
        assert unsafe_path(ok) is None, ok
    for bad in ("", "../x", "a/../../x", "/etc/passwd", "a//b", "./a", "a/./b", "a\\b", "C:/x", "a\x00", 3, None):
        assert unsafe_path(bad) is not None, bad
    assert link_leaves("/r", "a/link", "../b") is False
    assert link_leaves("/r", "a/link", "../../b") is True
    assert link_leaves("/r", "link", "/etc") is True
    assert link_leaves("/r", "a/b/link", "c/../../d") is False


def copy_weights(run: Path, source: str, target: str, change=None) -> None:
    """Checkpoint `target`'s weights replaced by `source`'s (changed by `change`, a function of the
    tensors), its CHECKSUMS.sha256 and release.json rewritten to match: every hash checks out."""
    from safetensors.torch import load_file, save_file

    from llm360.rundir import write_checksums

    tensors = load_file(run / "checkpoints" / source / "model.safetensors")
    if change is not None:
        tensors = change(tensors)
    save_file(tensors, run / "checkpoints" / target / "model.safetensors")
    (run / "checkpoints" / target / "CHECKSUMS.sha256").unlink()
    write_checksums(run / "checkpoints" / target)
    reseal(run)


def frozen(run: Path) -> list:
    return [f for f in check(run).findings if f.kind == "frozen"]


def test_a_frozen_checkpoint_is_found(run):
    """ckpt_001 holding ckpt_000's weights, with every checksum rewritten: only the weights
    themselves show it (a normal run has no such finding)."""
    assert frozen(run) == []
    copy_weights(run, "ckpt_000", "ckpt_001")
    found = frozen(run)
    assert [(f.path, f.kind) for f in found] == [("checkpoints/ckpt_001", "frozen")]
    assert "identical to ckpt_000's" in found[0].message and "2 optimizer step(s)" in found[0].message  # step 4 skipped
    assert [str(f) for f in check(run).findings if "ckpt_001" in f.path] == [str(f) for f in found]  # no other check sees it
    assert main(["verify", str(run)]) == 1


def test_an_update_too_small_for_the_recorded_lr_is_found(run):
    """ckpt_001 = ckpt_000 plus a nudge of 1e-9 per weight: not identical, but far less than two
    AdamW steps at the recorded learning rate move the weights."""
    import torch

    copy_weights(run, "ckpt_000", "ckpt_001", change=lambda ts: {k: v + 1e-9 * torch.sign(torch.randn_like(v))
                                                                 for k, v in ts.items()})
    found = frozen(run)
    assert [f.path for f in found] == ["checkpoints/ckpt_001"] and "under the" in found[0].message


def test_skipped_steps_are_no_update_to_expect(run):
    """A checkpoint equal to the one before it is no finding when its state says that every step
    between them was skipped (the spike guard withheld their updates)."""
    state_path = run / "checkpoints" / "ckpt_001" / "trainer_state" / "state.json"
    state = json.loads(state_path.read_text())
    state["skipped_steps"] = sorted(set(state["skipped_steps"]) | {3, 4, 5})
    state_path.write_text(json.dumps(state))
    copy_weights(run, "ckpt_000", "ckpt_001")
    assert frozen(run) == []
