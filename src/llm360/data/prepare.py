"""`llm360 prepare`: raw sources in, the data/ part of a run directory out (docs/run-directory.md §1-4).

    prepare(cfg, "runs/demo")                    # whole thing, in this process + data.workers

The steps: resolve the sources into units (sources.py); train the tokenizer on a seeded sample or
load the configured one (tokenizer.py); tokenize every unit in worker processes, writing tokens to
disk as they come (encode.py); then, without tokenizing again, dedup, cut rows, draw held-out rows
and stage mixtures and write the chunks (assemble.py). All of it is built in a temporary folder
next to RUN (or in RUN/.prepare when RUN exists) and moved into place at the end, so a failure
leaves no half-written data behind. When RUN/data is already complete, prepare does nothing (and
refuses when the config's data settings changed). A prepare that was killed (kill -9, power loss)
leaves its staging folder, named `...-HOST-PID`; the next prepare removes those of this host whose
process is gone, and says so.

Sharded (large corpora, several machines sharing RUN):

    llm360 prepare CONFIG --out RUN --shard 0/4      # ... and 1/4, 2/4, 3/4, anywhere, any order
    llm360 prepare CONFIG --out RUN                  # dedup, rows, stages, chunks: no tokenizing

Shard i tokenizes a contiguous i-th part of the units (balanced by bytes) into
RUN/.prepare/shard-00i-of-004/ (shard.json is written last: it marks the shard complete). Every
shard needs the same tokenizer: the first to start trains it from the seeded sample and leaves it
in RUN/.prepare/tokenizer/, later ones load it, and shards that start at the same time train the
same one (training is deterministic), so the order does not matter. The final run checks that all
N shards are there, come from the same config and inputs, and used the same tokenizer, builds
RUN/data and removes RUN/.prepare. The chunks are byte-identical to an unsharded prepare's, and
to any --workers count's.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import time
from pathlib import Path

from llm360.config import differences, load_config, load_run_config, save_config
from llm360.data import sources as S
from llm360.data.assemble import assemble, seeded_rng
from llm360.data.encode import (
    SHARD_FORMAT,
    Task,
    group_tasks,
    make_pool,
    ordered_map,
    run_task,
    sample_unit,
    shard_range,
)
from llm360.data.tokenizer import add_fim_tokens, load_existing, train_bpe, write_tokenizer_dir
from llm360.errors import UserError
from llm360.rundir import MANIFEST_NAME, RunDir, compute_fingerprint, pad_width
from llm360.utils import atomic_write_json, fsync_dir, fsync_tree, replace_dir, sha256_file

PREPARE_DIR = ".prepare"


# ---------------------------------------------------------------------------------------------
# identities


def _canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def data_identity(cfg) -> dict:
    """The config settings that decide RUN/data (data.workers does not: it changes no byte)."""
    data = cfg.data.model_dump(mode="json")
    data.pop("workers", None)
    return {
        "seed": cfg.seed,
        "data": data,
        "train": {"global_batch_rows": cfg.train.global_batch_rows, "steps_per_chunk": cfg.train.steps_per_chunk},
    }


def config_sha256(cfg) -> str:
    return hashlib.sha256(_canonical(data_identity(cfg)).encode()).hexdigest()


def compute_plan_id(cfg, plan: S.Plan) -> str:
    """What the shards' tokens depend on: sources, filters, tokenizer settings, seed, the units."""
    d = cfg.data
    ident = {
        "format": SHARD_FORMAT,
        "seed": cfg.seed,
        "sources": [s.model_dump(mode="json") for s in d.sources],
        "filters": {"min_chars": d.filters.min_chars, "max_chars": d.filters.max_chars},
        "strict": d.strict,
        "tokenizer": d.tokenizer.model_dump(mode="json"),
        "units": plan.identity(),
    }
    if d.uses_fim():  # the tokenizer then holds the FIM tokens
        ident["fim_tokens"] = True
    return hashlib.sha256(_canonical(ident).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# progress


class Reporter:
    """Progress bars on stderr (rich), one per long step; silent when disabled."""

    def __init__(self, enabled: bool = True):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            Progress,
            SpinnerColumn,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self.console = Console(stderr=True)
        self.progress = Progress(
            SpinnerColumn(), TextColumn("{task.description:<18}"), BarColumn(), TaskProgressColumn(),
            TextColumn("{task.fields[unit]}"), TimeElapsedColumn(),
            console=self.console, disable=not enabled,
        )
        self.enabled = enabled
        self.task = None

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self._finish()
        self.progress.stop()

    def _finish(self):
        if self.task is not None:
            t = self.progress.tasks[-1]
            if t.total is not None:
                self.progress.update(self.task, completed=t.total)
            else:
                self.progress.update(self.task, total=1, completed=1)
        self.task = None

    def start(self, description: str, total: float | None, unit: str = "") -> None:
        self._finish()
        self.task = self.progress.add_task(description, total=total, unit=unit)

    def advance(self, amount: float = 1) -> None:
        if self.task is not None:
            self.progress.advance(self.task, amount)

    def log(self, message: str) -> None:
        if self.enabled:
            self.progress.console.print(message)


@contextlib.contextmanager
def _serial_tokenizers():
    """Parallelism comes from our worker processes; keep HF tokenizers' own threads off."""
    old = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = old


# ---------------------------------------------------------------------------------------------
# tokenizer


def draw_sample(cfg, plan: S.Plan, pool, workers: int, report: Reporter):
    """The tokenizer's training text (see tokenizer.py), units read whole for reuse, strict problems."""
    d = cfg.data
    left = d.tokenizer.sample_chars
    texts, cache, problems, dropped = [], {}, [], []
    report.start("sample text", left, unit="chars")
    n = len(plan.sources)
    for si, sp in enumerate(plan.sources):
        share = left // (n - si)
        units = plan.units_of(si)
        order = seeded_rng(cfg.seed, "tokenizer-sample", sp.name).permutation(len(units)) if units else []
        items = [(units[k], d.filters.min_chars, d.filters.max_chars, max(share, 1)) for k in order]
        got = 0
        gen = ordered_map(pool, sample_unit, items, 2 * workers)
        for index, records, complete in gen:
            if complete:
                cache[index] = records
            for pos, rec in enumerate(records):
                if rec.reason:
                    if rec.reason in S.BROKEN_REASONS:  # strict stops on these, not on filtered ones
                        problems.append((index, pos, rec))
                    elif len(dropped) < 3:  # named if nothing passes the filters
                        dropped.append(S.message(plan.units[index], rec))
                elif got < share:
                    piece = rec.text[: share - got]
                    texts.append(piece)
                    got += len(piece)
                    report.advance(len(piece))
            if got >= share:
                break
        gen.close()
        left -= got
    if not texts and not (problems and d.strict):  # strict names its problem first
        why = f": {'; '.join(dropped)}" if dropped else " (the sources have no text)"
        raise UserError(f"no document passed the filters, so there is no text to train the tokenizer on{why}; "
                        "check data.sources and data.filters")
    return texts, cache, problems


def obtain_tokenizer(cfg, plan: S.Plan, pool, workers: int, work: Path, report: Reporter,
                     shared: Path | None = None, plan_id: str = "") -> tuple[dict, dict]:
    """(tokenizer info, records of units read while sampling) — trained, loaded or reused."""
    tcfg = cfg.data.tokenizer
    if tcfg.path:
        p = Path(tcfg.path).expanduser()
        if not p.is_absolute():
            p = Path(cfg.base_dir or ".") / p
        tok, file, eos, eos_id = load_existing(p)
        extra = {}
        if cfg.data.uses_fim():
            extra["fim_tokens"] = add_fim_tokens(tok)
            work.mkdir(parents=True, exist_ok=True)
            file = work / "tokenizer.json"
            tok.save(str(file))
        # the manifest records the path as the config wrote it, not where it is on this machine
        return _info(file, tok.get_vocab_size(), eos, eos_id, trained=False, source=tcfg.path, **extra), {}
    if shared is not None and (shared / "info.json").exists():
        info = json.loads((shared / "info.json").read_text(encoding="utf-8"))
        if info.get("plan_id") == plan_id and sha256_file(shared / "tokenizer.json") == info["sha256"]:
            info["path"] = str(shared / "tokenizer.json")
            report.log(f"tokenizer: reusing {shared / 'tokenizer.json'} (trained by an earlier shard)")
            return info, {}

    texts, cache, problems = draw_sample(cfg, plan, pool, workers, report)
    if problems and cfg.data.strict:
        index, _, rec = min(problems, key=lambda p: p[:2])
        raise UserError(S.message(plan.units[index], rec))
    report.start(f"train tokenizer ({tcfg.vocab_size})", None)
    tok = train_bpe(texts, tcfg.vocab_size, fim=cfg.data.uses_fim())
    work.mkdir(parents=True, exist_ok=True)
    path = work / "tokenizer.json"
    tok.save(str(path))
    extra = {"fim_tokens": add_fim_tokens(tok)} if cfg.data.uses_fim() else {}
    info = _info(path, tok.get_vocab_size(), "<|endoftext|>", tok.token_to_id("<|endoftext|>"),
                 trained=True, source="trained", sample_chars=sum(map(len, texts)), **extra)
    if shared is not None:
        _publish_tokenizer(shared, path, {**info, "plan_id": plan_id})
    return info, cache


def _info(path: Path, vocab_size: int, eos: str, eos_id: int, trained: bool, source: str, **extra) -> dict:
    return {
        "path": str(path),
        "file": "tokenizer/tokenizer.json",
        "sha256": sha256_file(path),
        "vocab_size": int(vocab_size),
        "eos_id": int(eos_id),
        "eos_token": eos,
        "trained": trained,
        "source": source,
        "dtype": "uint16" if vocab_size <= 65536 else "uint32",
        **extra,
    }


def _publish_tokenizer(shared: Path, path: Path, info: dict) -> None:
    """Leave the trained tokenizer for later shards (atomic; a racing shard wrote the same bytes)."""
    tmp = shared.with_name(f".{shared.name}.tmp-{owner_tag()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copyfile(path, tmp / "tokenizer.json")
    atomic_write_json(tmp / "info.json", {k: v for k, v in info.items() if k != "path"})
    fsync_tree(tmp)
    try:
        if shared.exists():
            shutil.rmtree(shared)
        os.replace(tmp, shared)
        fsync_dir(shared.parent)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# tokenizing a shard


def encode_shard(cfg, plan: S.Plan, units: tuple[int, int], tok: dict, cache: dict, shard_dir: Path,
                 pool, workers: int, report: Reporter, plan_id: str, shard: int, shards: int) -> dict:
    d = cfg.data
    (shard_dir / "tasks").mkdir(parents=True, exist_ok=True)
    mine = plan.units[units[0] : units[1]]
    tasks = []
    for k, group in enumerate(group_tasks(mine, workers)):
        cached = {u.index: cache.pop(u.index) for u in group if u.index in cache}
        tasks.append(Task(
            index=k, source=group[0].source, units=group, out=str(shard_dir / "tasks" / f"{k:06d}"),
            tokenizer=tok["path"], eos_id=tok["eos_id"], dtype=tok["dtype"], min_chars=d.filters.min_chars,
            max_chars=d.filters.max_chars, strict=d.strict, cached=cached,
        ))
    cache.clear()
    report.start("tokenize", sum(u.size for u in mine) or 1, unit="bytes")
    done = []
    for result in ordered_map(pool, run_task, tasks, 2 * workers):
        if result["error"]:
            raise UserError(result["error"])
        done.append(result)
        report.advance(result["bytes"])
    shutil.copyfile(tok["path"], shard_dir / "tokenizer.json")
    meta = {
        "format": SHARD_FORMAT, "plan_id": plan_id, "shard": shard, "shards": shards, "units": list(units),
        "tokenizer": {k: v for k, v in tok.items() if k != "path"}, "tasks": done,
    }
    atomic_write_json(shard_dir / "shard.json", meta)
    return meta


def _shard_name(i: int, n: int) -> str:
    w = pad_width(n)
    return f"shard-{i:0{w}d}-of-{n:0{w}d}"


def find_shards(prep: Path, plan_id: str) -> list[tuple[Path, dict]] | None:
    """The complete set of shards in RUN/.prepare, in order; None when there are none."""
    sets: dict[int, dict[int, tuple[Path, dict]]] = {}
    for f in sorted(prep.glob("shard-*-of-*/shard.json")):
        meta = json.loads(f.read_text(encoding="utf-8"))
        sets.setdefault(int(meta["shards"]), {})[int(meta["shard"])] = (f.parent, meta)
    if not sets:
        return None
    matching = {n: s for n, s in sets.items() if all(m["plan_id"] == plan_id for _, m in s.values())}
    if not matching:
        raise UserError(
            f"{prep} holds shards made from another config or other input files; delete {prep} and "
            f"run the shards again"
        )
    if len(matching) > 1:
        raise UserError(f"{prep} holds shards of several splittings ({', '.join(f'N={n}' for n in sorted(matching))}); "
                        f"delete the ones you do not want")
    (n, found), = matching.items()
    missing = [i for i in range(n) if i not in found]
    if missing:
        raise UserError(
            f"shard(s) {', '.join(f'{i}/{n}' for i in missing)} not done yet: run `llm360 prepare CONFIG "
            f"--out RUN --shard i/{n}` for each, then this again"
        )
    shas = {m["tokenizer"]["sha256"] for _, m in found.values()}
    if len(shas) > 1:
        raise UserError(f"the shards in {prep} used different tokenizers; delete {prep} and run them again")
    return [found[i] for i in range(n)]


# ---------------------------------------------------------------------------------------------
# the command


def parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise UserError(f"--shard {text!r} must look like i/N, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise UserError(f"--shard {text!r}: need 0 <= i < N")
    return i, n


def prepare(cfg, run_dir: str | Path, workers: int | None = None, shard: tuple[int, int] | None = None,
            progress: bool = True, summary: bool = True) -> dict:
    """Build RUN/data from `cfg` (a RunConfig) and write RUN/run.yaml. Returns a short summary.

    `shard=(i, N)` only tokenizes shard i of N (see the module docstring).
    """
    started = time.time()
    run_dir = Path(run_dir).expanduser().absolute()
    workers = max(1, int(workers or cfg.data.workers))
    manifest_path = RunDir(run_dir).manifest_path
    removed = remove_dead_leftovers(run_dir)
    if removed:
        print(f"removed {len(removed)} staging folder(s) left by killed prepare runs: "
              f"{', '.join(p.name for p in removed)}", file=sys.stderr)
    if manifest_path.exists():
        return _already_prepared(cfg, run_dir, manifest_path, summary)
    plan = S.plan_sources(cfg.data, cfg.base_dir)
    plan_id = compute_plan_id(cfg, plan)
    prep = run_dir / PREPARE_DIR

    with _serial_tokenizers(), Reporter(progress) as report, contextlib.ExitStack() as stack:
        pool = make_pool(workers)
        if pool is not None:
            stack.callback(pool.terminate)
        if shard is not None:
            result = _prepare_shard(cfg, plan, plan_id, run_dir, shard, pool, workers, report)
            result["seconds"] = round(time.time() - started, 2)
            if summary:
                _print_shard_summary(result)
            return result

        shard_set = find_shards(prep, plan_id) if prep.exists() else None
        fresh = not run_dir.exists()
        staging = run_dir.parent / f".{run_dir.name}.prepare-{owner_tag()}" if fresh else prep / f"build-{owner_tag()}"
        try:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            work = staging / ".work"
            if shard_set:
                first_dir, first = shard_set[0]
                tok = dict(first["tokenizer"], path=str(first_dir / "tokenizer.json"))
                if sha256_file(tok["path"]) != tok["sha256"]:
                    raise UserError(f"{tok['path']}: sha256 differs from its shard.json; run the shards again")
                report.log(f"assembling {len(shard_set)} shards from {prep}")
            else:
                tok, cache = obtain_tokenizer(cfg, plan, pool, workers, work, report)
                shard_dir = work / _shard_name(0, 1)
                meta = encode_shard(cfg, plan, (0, len(plan.units)), tok, cache, shard_dir, pool, workers, report, plan_id, 0, 1)
                shard_set = [(shard_dir, meta)]
            data_dir = staging / "data"
            manifest = assemble(cfg, plan, shard_set, tok, data_dir, work / "streams", report)
            write_tokenizer_dir(tok["path"], data_dir / "tokenizer", tok["eos_token"], cfg.data.seq_len)
            manifest["config_sha256"] = config_sha256(cfg)
            manifest["fingerprint"] = compute_fingerprint(manifest)
            atomic_write_json(data_dir / MANIFEST_NAME, manifest)
            shutil.rmtree(work, ignore_errors=True)
            fsync_tree(data_dir)
            if fresh:
                _save_run_config(cfg, staging / "run.yaml")
                os.replace(staging, run_dir)
                fsync_dir(run_dir.parent)
            else:
                replace_dir(data_dir, run_dir / "data")
                _save_run_config(cfg, run_dir / "run.yaml")
                shutil.rmtree(prep, ignore_errors=True)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            if not fresh and prep.exists() and not any(prep.iterdir()):
                prep.rmdir()
            raise

    result = _summary(manifest, run_dir, time.time() - started)
    if summary:
        _print_summary(manifest, result)
    return result


# ---------------------------------------------------------------------------------------------
# staging folders of killed runs


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "localhost"


def owner_tag() -> str:
    """`HOST-PID`, ending the name of every staging folder, so a later prepare knows whose it is."""
    return f"{_host()}-{os.getpid()}"


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host (os.kill with signal 0 only asks)."""
    if os.name == "nt":  # os.kill would end it there: never call one dead
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # it exists (another user's) / not a pid we can judge: keep its folder
    return True


def remove_dead_leftovers(run_dir: Path) -> list[Path]:
    """Remove the staging folders of prepare runs of this host whose process is gone (kill -9,
    a crash): `.RUN.prepare-HOST-PID` beside RUN, and `build-HOST-PID`, `.NAME.tmp-HOST-PID` in
    RUN/.prepare. Folders of live processes, or of other hosts sharing RUN, are left alone."""
    host = re.escape(_host())
    places = [(run_dir.parent, re.compile(rf"\.{re.escape(run_dir.name)}\.prepare-{host}-(\d+)")),
              (run_dir / PREPARE_DIR, re.compile(rf"(?:build|\..+\.tmp)-{host}-(\d+)"))]
    removed = []
    for folder, pattern in places:
        for path in sorted(folder.iterdir()) if folder.is_dir() else []:
            m = pattern.fullmatch(path.name)
            if m and path.is_dir() and not pid_alive(int(m.group(1))):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed


def _save_run_config(cfg, path: Path) -> None:

    save_config(cfg, path)


def _prepare_shard(cfg, plan, plan_id, run_dir: Path, shard: tuple[int, int], pool, workers, report) -> dict:
    i, n = shard
    prep = run_dir / PREPARE_DIR
    final = prep / _shard_name(i, n)
    if (final / "shard.json").exists():
        meta = json.loads((final / "shard.json").read_text(encoding="utf-8"))
        if meta.get("plan_id") == plan_id:
            return {"status": "shard-exists", "run_dir": str(run_dir), "shard": f"{i}/{n}", "dir": str(final),
                    "documents": sum(t["docs"] for t in meta["tasks"]), "tokens": sum(t["tokens"] for t in meta["tasks"])}
    fresh = not run_dir.exists()
    tmp = prep / f".{final.name}.tmp-{owner_tag()}"
    units = shard_range(plan.units, i, n)
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        tok, cache = obtain_tokenizer(cfg, plan, pool, workers, tmp / "work", report, shared=prep / "tokenizer", plan_id=plan_id)
        cache = {k: v for k, v in cache.items() if units[0] <= k < units[1]}
        meta = encode_shard(cfg, plan, units, tok, cache, tmp, pool, workers, report, plan_id, i, n)
        shutil.rmtree(tmp / "work", ignore_errors=True)
        fsync_tree(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(prep)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        # a run directory this call created goes too, unless another shard is at work in it
        if fresh and prep.exists() and {p.name for p in prep.iterdir()} <= {"tokenizer"}:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    return {"status": "shard", "run_dir": str(run_dir), "shard": f"{i}/{n}", "dir": str(final),
            "units": units, "documents": sum(t["docs"] for t in meta["tasks"]),
            "tokens": sum(t["tokens"] for t in meta["tasks"])}


def _already_prepared(cfg, run_dir: Path, manifest_path: Path, summary: bool) -> dict:
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    if manifest.get("config_sha256") != config_sha256(cfg):
        diffs: list[str] = []
        if (run_dir / "run.yaml").exists():
            with contextlib.suppress(UserError):
                diffs = differences(data_identity(load_run_config(run_dir)), data_identity(cfg))
        what = f" (differs in {', '.join(diffs[:6])})" if diffs else ""
        raise UserError(
            f"{run_dir / 'data'} was prepared from another config{what}; use another --out, or delete "
            f"{run_dir / 'data'} to prepare it again"
        )
    result = {"status": "exists", "run_dir": str(run_dir), "fingerprint": manifest["fingerprint"],
              "chunks": len(manifest["chunks"])}
    if summary:
        print(f"{run_dir / 'data'} is already prepared (fingerprint {manifest['fingerprint'][:16]}, "
              f"{len(manifest['chunks'])} chunks); nothing to do")
    return result


def _summary(manifest: dict, run_dir: Path, seconds: float) -> dict:
    return {
        "status": "prepared",
        "run_dir": str(run_dir),
        "seconds": round(seconds, 2),
        "fingerprint": manifest["fingerprint"],
        "chunks": len(manifest["chunks"]),
        "train_tokens": sum(c["tokens"] for c in manifest["chunks"]),
        "documents": manifest["documents"]["count"],
        "tokens": sum(s["tokens"] for s in manifest["sources"]),
    }


def _print_summary(manifest: dict, result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"prepared {result['run_dir']}/data in {result['seconds']:.1f} s", title_justify="left")
    for col in ("source", "docs read", "kept", "tokens", "rows", "held out"):
        table.add_column(col, justify="left" if col == "source" else "right")
    for s in manifest["sources"]:
        table.add_row(s["name"], f"{s['documents_read']:,}", f"{s['documents_kept']:,}",
                      f"{s['tokens']:,}", f"{s['rows']:,}", f"{s['heldout_rows']:,}")
    console.print(table)
    for s in manifest["sources"]:
        if s["dropped"]:
            console.print(f"dropped from {s['name']}: " + ", ".join(f"{k} {v:,}" for k, v in s["dropped"].items()))
    for st in manifest["stages"]:
        mix = ", ".join(f"{k} {v} ({st['epochs'].get(k, 0):g} ep)" for k, v in st["rows_per_source"].items())
        console.print(f"stage {st['index']} {st['name']}: chunks {st['first_chunk']}..{st['first_chunk'] + st['chunks'] - 1}, rows {mix}")
    tok = manifest["tokenizer"]
    console.print(
        f"{len(manifest['chunks'])} chunks x {manifest['rows_per_chunk']} rows x {manifest['row_tokens']} tokens = "
        f"{result['train_tokens']:,} training tokens; tokenizer {'trained' if tok['trained'] else tok['source']} "
        f"(vocab {tok['vocab_size']}, eos {tok['eos_token']!r} = {tok['eos_id']}); fingerprint {manifest['fingerprint']}"
    )


def _print_shard_summary(result: dict) -> None:
    if result["status"] == "shard-exists":
        print(f"shard {result['shard']} is already done in {result['dir']}; nothing to do")
    else:
        print(f"shard {result['shard']}: {result['documents']:,} documents, {result['tokens']:,} tokens in "
              f"{result['seconds']:.1f} s -> {result['dir']}")


def cli_prepare(args) -> int:
    cfg = load_config(args.config, args.overrides)
    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    shard = parse_shard(args.shard) if args.shard else None
    prepare(cfg, args.out, workers=args.workers, shard=shard, progress=True)
    return 0
