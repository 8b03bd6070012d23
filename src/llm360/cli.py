"""The `llm360` command: one subcommand per stage of the pipeline.

Each subcommand's work lives in its component; this file only parses arguments and turns a
`UserError` into one sentence on stderr and exit code 2 (never a traceback for a user mistake).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys

from llm360 import __version__
from llm360.errors import DiskFull, UserError, is_disk_full

OVERRIDES_HELP = ("config overrides as --section.key=value or --key=value (value read as YAML), "
                  "e.g. --train.lr=3e-4 --seed=5")


def _handler(path: str):
    """Import `module:function` only when the subcommand runs, so `--help` stays instant."""

    def run(args: argparse.Namespace) -> int:
        module, func = path.split(":")
        return getattr(importlib.import_module(module), func)(args)

    return run


def _writes(sp: argparse.ArgumentParser, attribute: str = "run") -> None:
    """The command writes into the run directory named by `args.<attribute>`: it holds the
    run's lock while it runs (llm360.lock)."""
    sp.set_defaults(writes=attribute)


def build_parser() -> argparse.ArgumentParser:
    from llm360.eval.harness import HARNESSES  # torch-free: the harnesses import torch when they run

    p = argparse.ArgumentParser(
        prog="llm360",
        description=(
            "Pretrain LLaMA-style models in the open: exact data order per step, a checkpoint per "
            "data chunk, evaluation and memorization of every checkpoint, and a release whose every "
            "file is hashed and verifiable. Run `llm360 run` to train the demo end to end."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Each command has its own --help. The run directory's format: docs/run-directory.md in the llm360 repository.",
    )
    p.add_argument("--version", action="version", version=f"llm360 {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def cmd(name: str, handler: str, help: str, description: str | None = None, overrides=False):
        sp = sub.add_parser(name, help=help, description=description or help)
        sp.set_defaults(func=_handler(handler), accepts_overrides=overrides)
        if overrides:
            sp.epilog = OVERRIDES_HELP
        return sp

    sp = cmd(
        "run",
        "llm360.pipeline:cli_run",
        "the whole pipeline: prepare, train (with evaluation), analyze, release",
        "Run every stage into one run directory, resuming wherever an earlier attempt stopped. "
        "With no CONFIG it trains the shipped demo (Python's own docs and code) into ./runs/demo.",
        overrides=True,
    )
    sp.add_argument("config", nargs="?", help="YAML config file or shipped config name (default: demo)")
    sp.add_argument("--out", help="run directory (default: ./runs/NAME)")

    sp = cmd(
        "prepare",
        "llm360.data.prepare:cli_prepare",
        "turn raw sources into the data/ part of a run directory",
        "Read the sources of CONFIG, clean and deduplicate them, train or load the tokenizer, cut "
        "rows, draw the stage mixtures and write chunks in exact training order into RUN/data. "
        "Large corpora: run `--shard i/N` for i = 0..N-1 (on any machines sharing RUN), then "
        "once without --shard to build stages and chunks from all shards.",
        overrides=True,
    )
    sp.add_argument("config", help="YAML config file or shipped config name")
    sp.add_argument("--out", required=True, help="run directory to create")
    sp.add_argument("--workers", type=int, help="tokenizer processes (default: data.workers)")
    sp.add_argument("--shard", help="tokenize only shard i of N (written as i/N, 0-based)")
    _writes(sp, "out")

    data = sub.add_parser("data", help="inspect the prepared data of a run", description="Inspect the prepared data of a run.")
    data_sub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    sp = data_sub.add_parser(
        "batch",
        help="the exact rows of global step T",
        description="Print the rows that global optimizer step T trains on (the step rule of docs/run-directory.md): "
        "chunk, row, source, documents and their uris, and the decoded text.",
    )
    sp.set_defaults(func=_handler("llm360.data.inspect:cli_batch"), accepts_overrides=False)
    sp.add_argument("run", help="run directory")
    sp.add_argument("--step", type=int, required=True, help="global step, 0-based")
    sp.add_argument("--json", action="store_true", help="print JSON instead of text")
    sp = data_sub.add_parser(
        "export-llm360",
        help="write train_000.jsonl ... as LLM360 released its data",
        description="Write one train_NNN.jsonl per chunk, each line {\"token_ids\": [...], \"source\": ...} "
        "in training order, as the LLM360 AmberDatasets.",
    )
    sp.set_defaults(func=_handler("llm360.data.inspect:cli_export_llm360"), accepts_overrides=False)
    sp.add_argument("run", help="run directory")
    sp.add_argument("out", help="output folder")

    sp = cmd(
        "train",
        "llm360.pipeline:cli_train",
        "train on the chunks of a prepared run (resumes when RUN has checkpoints)",
        "Train the model on RUN's chunks by the step rule, writing a checkpoint after every chunk. "
        "Continues from the newest valid checkpoint. Start with torchrun for several processes.",
        overrides=True,
    )
    sp.add_argument("run", help="run directory (prepared)")
    _writes(sp)

    sp = cmd("generate", "llm360.model.generate:cli_generate", "generate text from a checkpoint (greedy by default)")
    sp.add_argument("checkpoint", help="checkpoint folder (e.g. RUN/checkpoints/ckpt_007)")
    sp.add_argument("--prompt", required=True, help="text to continue")
    sp.add_argument("--max-new-tokens", type=int, default=64)
    sp.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    sp.add_argument("--top-k", type=int, default=None)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--json", action="store_true")

    sp = cmd(
        "eval",
        "llm360.eval.runner:cli_eval",
        "evaluate checkpoints: held-out perplexity and multiple-choice tasks",
        "Evaluate checkpoints of RUN and append results to RUN/metrics/eval.jsonl. Pairs of "
        "(checkpoint, task) already done are skipped unless --force.",
        overrides=True,
    )
    sp.add_argument("run")
    sp.add_argument("--checkpoints", default="all", help="all, last, or a list like 0,3,7 or ckpt_003,init")
    sp.add_argument("--tasks", help="task names (heldout, heldout/SOURCE, arc_easy, amber) or JSONL/YAML task files, "
                    "comma separated; NAME:K for K-shot (default: eval.heldout + eval.tasks)")
    sp.add_argument("--harness", choices=list(HARNESSES), default="llm360",
                    help="who scores the tasks: llm360's own scoring or lm-evaluation-harness")
    sp.add_argument("--force", action="store_true", help="redo results that exist")
    _writes(sp)
    sp.add_argument("--json", action="store_true")

    analyze = sub.add_parser("analyze", help="analyses of a run (Analysis360)", description="Analyses of a run.")
    analyze_sub = analyze.add_subparsers(dest="analysis", metavar="ANALYSIS")
    sp = analyze_sub.add_parser(
        "memorization",
        help="k-extractable memorization of training rows across checkpoints",
        description="Score memorization as Analysis360: prompt with the first k tokens of sampled "
        "training rows, decode greedily, compare with the true next l tokens.",
    )
    sp.set_defaults(func=_handler("llm360.analysis.memorization:cli_memorization"), accepts_overrides=False)
    sp.add_argument("run")
    sp.add_argument("--checkpoints", default=None, help="all, last, or a list (default: analysis.memorization.checkpoints)")
    sp.add_argument("--chunks", default=None, help="chunks to sample from (default: all)")
    sp.add_argument("--samples", type=int, default=None, help="rows per chunk")
    _writes(sp)

    sp = analyze_sub.add_parser(
        "contamination",
        help="which evaluation items were in the training data, and from which step",
        description="Find n-gram overlaps of every item (question and gold answer) of the tasks with the "
        "training rows through the search index: contaminated fraction per task, the first step, source and "
        "document of each overlap, and accuracy on clean vs contaminated items from the per-question eval logs.",
    )
    sp.set_defaults(func=_handler("llm360.analysis.contamination:cli_contamination"), accepts_overrides=False)
    sp.add_argument("run")
    sp.add_argument("--tasks", required=True, help="task names or JSONL/YAML task files, comma separated (as llm360 eval)")
    sp.add_argument("--ngram", type=int, default=13, help="n of the n-gram overlap (default 13, as GPT-3 and LLaMA)")
    _writes(sp)

    sp = cmd("index", "llm360.analysis.search:cli_index", "build the search index over all chunk tokens")
    sp.add_argument("run")
    sp.add_argument("--shard", help="index only shard i of N (chunk range i of N, written as i/N, 0-based; the "
                    "held-out rows go with the last); queries use all N shards")
    _writes(sp)
    sp = cmd("search", "llm360.analysis.search:cli_search", "find a text (or token ids) in the training data")
    sp.add_argument("run")
    sp.add_argument("text", nargs="?", help="text to find")
    sp.add_argument("--tokens", help="token ids instead of text, e.g. 1,2,3")
    sp.add_argument("--limit", type=int, default=20, help="occurrences to show")
    sp.add_argument("--json", action="store_true")

    sp = cmd("release", "llm360.release.release:cli_release", "write the model and data cards, the report and release.json")
    sp.add_argument("run")
    sp.add_argument("--sign-key", metavar="PATH", help="sign release.json with this ssh key (e.g. ~/.ssh/id_ed25519, "
                    "or the .pub of a key in ssh-agent) into release.json.sig, by `ssh-keygen -Y sign`")
    _writes(sp)
    sp = cmd("verify", "llm360.release.verify:cli_verify", "check every file of a release against release.json")
    sp.add_argument("run")
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--expect", metavar="ROOT", help="the release root published with the release (`llm360 "
                    "release` prints it): release.json must hash to it, which pins every file")
    sp.add_argument("--allowed-signers", metavar="FILE", help="an OpenSSH allowed_signers file: release.json.sig "
                    "must be a good signature of release.json by one of its principals (namespace llm360-release)")
    sp = cmd("replay", "llm360.train.replay:cli_replay", "retrain a checkpoint from its predecessor and compare")
    sp.add_argument("run")
    sp.add_argument("--checkpoint", required=True, help="checkpoint number or name, e.g. 3 or ckpt_003")

    export = sub.add_parser("export", help="export a checkpoint", description="Export a checkpoint.")
    export_sub = export.add_subparsers(dest="format", metavar="FORMAT")
    sp = export_sub.add_parser("hf", help="a standalone Hugging Face folder", description="Write a standalone Hugging Face folder for one checkpoint.")
    sp.set_defaults(func=_handler("llm360.release.export:cli_export_hf"), accepts_overrides=False)
    sp.add_argument("run")
    sp.add_argument("--checkpoint", required=True)
    sp.add_argument("out")

    p._subparsers_by_name = {"data": data, "analyze": analyze, "export": export}  # for bare group help
    return p


def _lock(args: argparse.Namespace):
    attribute = getattr(args, "writes", None)
    if attribute is None:
        return contextlib.nullcontext()
    from llm360.lock import run_lock

    return run_lock(getattr(args, attribute), args.command)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if not getattr(args, "func", None):
        group = parser._subparsers_by_name.get(getattr(args, "command", None) or "")
        (group or parser).print_help()
        return 0 if args.command is None else 2
    overrides = []
    for item in extra:
        # any --key=value argparse did not take is a config key (the config rejects unknown ones
        # by name): --train.lr=3e-4, and top-level keys such as --seed=5
        if args.accepts_overrides and item.startswith("--") and "=" in item:
            overrides.append(item)
        else:
            parser.error(f"unrecognized argument {item!r}" + (f" ({OVERRIDES_HELP})" if args.accepts_overrides else ""))
    args.overrides = overrides
    try:
        with _lock(args):
            return int(args.func(args) or 0)
    except UserError as e:
        print(f"llm360 {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if not is_disk_full(e):
            raise
        print(f"llm360 {args.command}: error: {DiskFull(e.filename or 'a file')}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"llm360 {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
