"""`llm360 export hf RUN --checkpoint c OUT`: one checkpoint as a standalone Hugging Face folder.

OUT gets the weights, config.json, generation_config.json, the tokenizer files and a README.md
model card that names the run, the checkpoint and the data it has seen (fingerprint, chunks,
tokens); `transformers.AutoModelForCausalLM.from_pretrained(OUT)` loads it (a CrystalCoder
checkpoint, which carries its modeling code, with `trust_remote_code=True`). The format is the
one the checkpoint was written in (`llm360.model.hf`), named in its config.json. The trainer state
(optimizer, RNG) stays behind. A checkpoint whose files do not match its CHECKSUMS.sha256 is
refused, and every copied file is checked against it again after the copy.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from llm360.errors import UserError
from llm360.release.facts import Facts, gather
from llm360.rundir import CHECKSUMS_FILE, STATE_DIR, CheckpointName, RunDir, checksum_problems, read_checksums
from llm360.release.files import scan_tree, unsafe_path
from llm360.release.text import human, md, md_code, md_table, thousands
from llm360.utils import fsync_tree, sha256_file

LEFT_BEHIND = (f"{STATE_DIR}/", CHECKSUMS_FILE)


def export_hf(run_dir: str | Path, checkpoint: str, out: str | Path) -> Path:
    run_dir, out = Path(run_dir), Path(out)
    facts = gather(run_dir)
    folder = RunDir(run_dir).resolve(checkpoint, facts.rule).path
    name = folder.name
    if folder.is_symlink():
        raise UserError(f"{folder} is a symbolic link; refusing to export it")
    scan = scan_tree(folder)
    if scan.links or scan.odd:
        bad = sorted(scan.links) + sorted(scan.odd)
        raise UserError(f"checkpoint {name} holds links or special files ({', '.join(bad[:3])}); refusing to export it")
    found = checksum_problems(folder)
    if found:
        raise UserError(f"checkpoint {name} fails its checksums, refusing to export it: " + "; ".join(found[:5]))
    sums = read_checksums(folder)
    unsafe = [rel for rel in sums if unsafe_path(rel) is not None]
    if unsafe:
        raise UserError(f"checkpoint {name}: CHECKSUMS.sha256 names paths outside it ({unsafe[0]!r}); refusing")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} exists and is not empty; choose a new folder")

    row = next((c for c in facts.checkpoints if c["name"] == name), None)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        for rel, digest in sorted(sums.items()):
            if rel.startswith(LEFT_BEHIND) or rel == "README.md":
                continue
            src, dst = folder / rel, tmp / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            if sha256_file(dst) != digest:
                raise UserError(f"{name}/{rel} changed while it was copied; try again")
        model_type = json.loads((tmp / "config.json").read_text()).get("model_type", "llama")
        (tmp / "README.md").write_text(readme(facts, name, row, model_type), encoding="utf-8")
        fsync_tree(tmp)
        if out.exists():
            out.rmdir()
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# how the model card names each checkpoint format, and the arguments from_pretrained needs
FORMAT_WORDS = {"llama": ("a LLaMA-style base model", ""),
                "crystalcoder": ("a CrystalCoder-style base model (LLM360's format, with its modeling code)",
                                 ", trust_remote_code=True")}


def readme(facts: Facts, name: str, row: dict | None, model_type: str = "llama") -> str:
    m = facts.model
    rule = facts.rule
    steps = row["step"] if row else CheckpointName.parse(name).steps_done(rule)
    chunks_seen = rule.chunks_seen(steps)
    tokens = row["tokens"] if row else steps * facts.tokens_per_step
    skipped = [s for s in facts.skipped_batches() if s["step"] < steps]
    seen = (f"chunks 0..{chunks_seen - 1}" if chunks_seen else "no data (the initial weights)")
    if steps and not rule.is_chunk_end(steps):
        seen += f" and steps {rule.first_step(chunks_seen)}..{steps - 1} of chunk {chunks_seen}"
    params = m.get("parameters")
    licenses = sorted({str(s.get("license")) for s in facts.sources if s.get("license")})
    kind, remote = FORMAT_WORDS.get(model_type, FORMAT_WORDS["llama"])
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "tags: [llm360, pretraining, checkpoint]",
        "---",
        "",
        f"# {md(facts.name)} / {md(name)}",
        "",
        f"Checkpoint `{md(name)}` of the llm360 run `{md(facts.name)}`, exported with `llm360 export hf`: "
        f"{kind} in the Hugging Face format.",
        "",
        md_table(["", ""], [
            ["Run", md(facts.name)],
            ["Checkpoint", md_code(name)],
            ["Optimizer steps", thousands(steps)],
            ["Tokens seen", f"{thousands(tokens)} ({human(tokens)})"],
            ["Data seen", seen + (f", less {len(skipped)} skipped batch(es) (steps "
                                  + ", ".join(str(s["step"]) for s in skipped[:20]) + ")" if skipped else "")],
            ["Data fingerprint", md_code(facts.fingerprint or "-")],
            ["Sources", ", ".join(md(s.get("name")) for s in facts.sources) or "-"],
            ["Licenses of the sources", ", ".join(md(x) for x in licenses) or "not given"],
            ["Parameters", f"{thousands(params)} ({human(params)})" if params else "-"],
            ["Architecture", f"{m.get('n_layers')} layers, hidden {m.get('dim')}, {m.get('n_heads')} heads "
                             f"({m.get('n_kv_heads')} KV), FFN {m.get('ffn_dim')}, vocabulary {m.get('vocab_size')}, "
                             f"context {m.get('max_seq_len')}" if m.get("n_layers") else "-"],
            ["Weights sha256", md_code(row.get("weights_sha256") or "-") if row else "-"],
        ]),
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        f"model = AutoModelForCausalLM.from_pretrained(\"PATH\"{remote})",
        "tokenizer = AutoTokenizer.from_pretrained(\"PATH\")",
        "```",
        "",
        "The run directory this comes from holds the exact training data in order, every checkpoint and "
        "`release.json`; `llm360 verify RUN` checks it and `llm360 replay RUN --checkpoint c` retrains a "
        "checkpoint from its predecessor.",
        "",
    ]
    return "\n".join(lines)


def cli_export_hf(args) -> int:
    out = export_hf(Path(args.run), args.checkpoint, Path(args.out))
    print(f"exported {Path(args.run).name} checkpoint {args.checkpoint} -> {out}")
    return 0
