"""`llm360 release` (release.json and the cards) and `llm360 export hf`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from helpers_release import copy_run, released_template
from llm360.cli import main
from llm360.errors import UserError
from llm360.release import files as release_files
from llm360.release import release as release_mod
from llm360.release.release import make_release
from llm360.release.root import normal_form
from llm360.release.verify import verify
from llm360.utils import sha256_bytes, sha256_file


@pytest.fixture
def run(prepared_template, tmp_path_factory, tmp_path) -> Path:
    return copy_run(released_template(prepared_template, tmp_path_factory), tmp_path / "run")


def test_release_json_lists_every_file_and_the_facts(run):
    record = json.loads((run / "release.json").read_text())
    assert record["format"] == "llm360-release/1"
    assert record["run"] == "tiny"
    assert record["created"].endswith("Z")
    assert {"llm360", "python", "torch", "numpy", "safetensors"} <= set(record["software"])
    assert record["config_sha256"] == sha256_file(run / "run.yaml")
    manifest = json.loads((run / "data" / "manifest.json").read_text())
    assert record["data_fingerprint"] == manifest["fingerprint"]

    on_disk = sorted(p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file())
    assert [f["path"] for f in record["files"]] == [p for p in on_disk if p != "release.json"]
    for entry in record["files"]:
        assert entry["bytes"] == (run / entry["path"]).stat().st_size
    for rel in ("data/chunks/chunk_000.npy", "checkpoints/ckpt_002/model.safetensors", "DATA_CARD.md"):
        entry = next(f for f in record["files"] if f["path"] == rel)
        assert entry["sha256"] == sha256_file(run / rel)
    root = sha256_file(run / "release.json")
    for rel in ("MODEL_CARD.md", "report/index.html"):  # listed in their normal form; they show the root
        entry = next(f for f in record["files"] if f["path"] == rel)
        data = (run / rel).read_bytes()
        assert f"llm360-root:{root}".encode() in data and b"llm360-root:" + b"0" * 64 not in data
        assert entry["sha256"] == sha256_bytes(data.replace(root.encode(), b"0" * 64))

    table = [{k: c[k] for k in ("name", "step", "tokens", "chunks_seen")} for c in record["checkpoints"]]
    assert table == [{"name": "init", "step": 0, "tokens": 0, "chunks_seen": 0},
                     {"name": "ckpt_000", "step": 3, "tokens": 384, "chunks_seen": 1},
                     {"name": "ckpt_001", "step": 6, "tokens": 768, "chunks_seen": 2},
                     {"name": "ckpt_002", "step": 9, "tokens": 1152, "chunks_seen": 3}]
    assert {c["weights_dtype"] for c in record["checkpoints"]} == {"float32"}  # train.checkpoint_dtype: auto


def test_release_again_is_idempotent_and_reuses_hashes(run, monkeypatch):
    monkeypatch.setattr(release_mod, "CACHE_MARGIN_NS", 0)
    documents = ("MODEL_CARD.md", "DATA_CARD.md", "report/index.html")
    before = {rel: normal_form((run / rel).read_bytes()) for rel in documents}
    old = json.loads((run / "release.json").read_text())
    assert main(["release", str(run)]) == 0  # the copy's files are newer than the template's release: hashed again

    hashed = []
    real = release_files.sha256_regular
    monkeypatch.setattr(release_files, "sha256_regular", lambda p, progress=None: hashed.append(Path(p)) or real(p, progress))
    make_release(run)
    new = json.loads((run / "release.json").read_text())
    assert {rel: normal_form((run / rel).read_bytes()) for rel in before} == before  # all but the root
    assert f"llm360-root:{sha256_file(run / 'release.json')}" in (run / "MODEL_CARD.md").read_text()
    assert {k: v for k, v in new.items() if k != "created"} == {k: v for k, v in old.items() if k != "created"}
    assert hashed == []  # nothing changed since the previous release began
    assert verify(run) == []

    # a file changed after that is hashed again, whatever its size and mtime say
    path = run / "metrics" / "train.jsonl"
    stat = path.stat()
    data = bytearray(path.read_bytes())
    i = data.index(b'"loss": ') + len(b'"loss": ') + 2
    data[i] ^= 1  # a digit of a loss: another number, still a JSON record
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    hashed.clear()  # verify hashed everything (it never trusts a cache)
    make_release(run)
    again = {p.relative_to(run).as_posix() for p in hashed}
    assert "metrics/train.jsonl" in again  # and the documents drawn from it, nothing else
    assert again <= {"metrics/train.jsonl", "MODEL_CARD.md", "DATA_CARD.md", "report/index.html"}
    assert verify(run) == []


def test_release_refuses_what_would_not_verify(run, tmp_path):
    (tmp_path / "elsewhere").write_text("x")
    os.symlink(tmp_path / "elsewhere", run / "metrics" / "link")
    with pytest.raises(UserError, match="symbolic link pointing outside the run"):
        make_release(run)
    (run / "metrics" / "link").unlink()

    path = run / "checkpoints" / "ckpt_001" / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="would not verify: checkpoints/ckpt_001/model.safetensors"):
        make_release(run)
    assert main(["release", str(run)]) == 2


def test_cards_hold_the_facts(run):
    from llm360.model.hf import load_args
    from llm360.model.llama import num_params

    model = (run / "MODEL_CARD.md").read_text()
    data = (run / "DATA_CARD.md").read_text()
    params = num_params(load_args(run / "checkpoints" / "ckpt_002"))
    assert f"{params:,}" in model
    assert "1,152" in model  # tokens
    assert "| Published weights | float32 |" in model
    for name in ("init", "ckpt_000", "ckpt_001", "ckpt_002"):
        assert f"`{name}`" in model
    weights = sha256_file(run / "checkpoints" / "ckpt_002" / "model.safetensors")
    assert weights in model
    manifest = json.loads((run / "data" / "manifest.json").read_text())
    assert manifest["fingerprint"] in model and manifest["fingerprint"] in data
    assert "arc\\_easy acc" in model and "0.3108" in model  # the evaluation table (records made up)
    assert "seen chunks" in model and "16.7%" in model  # memorization
    assert "nonfinite" in model and "skipped step 4 (chunk 1, rows \\[4, 8))" in model  # events
    assert "| prose | text | CC0 | 60 | 60 | 0 |" in data  # source, license, documents
    for chunk in manifest["chunks"]:
        assert chunk["sha256"] in data
    assert "| one | 0..1 | prose 100% | prose 24 |" in data  # stages and mixtures
    assert "| 4 | 1 | \\[4, 8) | nonfinite |" in data  # the batch the model did not see
    # and the prepared rows in no chunk (counted from the chunks), the tail tokens and held-out rows
    source = manifest["sources"][0]
    in_chunks = sum(c["rows_per_source"]["prose"] for c in manifest["chunks"])
    assert in_chunks < source["train_rows"] and source["tail_tokens_dropped"] > 0
    assert (f"| prose | {source['train_rows'] - in_chunks:,} | {source['tail_tokens_dropped']:,} | "
            f"{source['heldout_rows']:,} |") in data
    assert "None: every" not in data


# -- export hf -----------------------------------------------------------------------------


def test_export_hf_loads_in_transformers_with_equal_logits(run, tmp_path):
    transformers = pytest.importorskip("transformers")
    import torch

    from llm360.model.hf import load_hf

    out = tmp_path / "hf"
    assert main(["export", "hf", str(run), "--checkpoint", "2", str(out)]) == 0
    assert not (out / "trainer_state").exists() and not (out / "CHECKSUMS.sha256").exists()
    readme = (out / "README.md").read_text()
    manifest = json.loads((run / "data" / "manifest.json").read_text())
    for fact in ("tiny", "ckpt_002", manifest["fingerprint"], "1,152", "chunks 0..2", "steps 4", "CC0"):
        assert fact in readme, fact

    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    ours, _ = load_hf(run / "checkpoints" / "ckpt_002")
    ids = torch.tensor([[1, 5, 9, 30, 2, 7, 100, 3]])
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, ours(ids), rtol=1e-5, atol=1e-5)
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert tok.decode(tok("the model data")["input_ids"]) == "the model data"


def test_export_names_and_refusals(run, tmp_path):
    from llm360.release.export import export_hf

    init = export_hf(run, "init", tmp_path / "a")
    assert "no data (the initial weights)" in (init / "README.md").read_text()
    export_hf(run, "ckpt_001", tmp_path / "b")
    with pytest.raises(UserError, match="not empty"):
        export_hf(run, "1", tmp_path / "b")
    with pytest.raises(UserError, match="no checkpoint '7'.*ckpt_002"):
        export_hf(run, "7", tmp_path / "c")

    path = run / "checkpoints" / "ckpt_001" / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="fails its checksums.*model.safetensors"):
        export_hf(run, "1", tmp_path / "d")
    assert not (tmp_path / "d").exists()


def test_export_readme_names_the_checkpoint_format(run):
    from llm360.release.export import readme
    from llm360.release.facts import gather

    facts = gather(run)
    crystal = readme(facts, "ckpt_002", None, "crystalcoder")
    assert "CrystalCoder-style" in crystal and 'from_pretrained("PATH", trust_remote_code=True)' in crystal
    llama = readme(facts, "ckpt_002", None)
    assert "LLaMA-style" in llama and "trust_remote_code" not in llama
