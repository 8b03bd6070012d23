"""The shape of the code: dependencies point down the pipeline (data -> model -> train -> eval
-> analysis -> release), the orchestrator alone imports every stage, and no module imports
itself back through another. Every import counts, at the top of a module or inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "llm360"
STAGES = ("data", "model", "train", "eval", "analysis", "release")
TORCH_FREE = ("llm360.rundir", "llm360.config", "llm360.lock", "llm360.errors", "llm360.utils", "llm360.cli",
              "llm360.model.args")


def module_name(path: Path) -> str:
    parts = ["llm360", *path.relative_to(SRC).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            found |= {t for t in targets if t in modules and t != name}
        graph[name] = found
    return graph


def stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in STAGES else None


def test_no_import_cycles():
    graph = import_graph()
    # a package's __init__ re-exporting its own modules is not a cycle between modules
    edges = {m: {t for t in ts if not (m.endswith(t.rsplit(".", 1)[0]) and t.startswith(m + "."))}
             for m, ts in graph.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(edges[m]):
            if state.get(t) == 1:
                cycles.append(path[path.index(t):] + [t] if t in path else [m, t])
            elif t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles


def test_stages_never_import_a_later_stage():
    order = {s: i for i, s in enumerate(STAGES)}
    wrong = []
    for m, targets in import_graph().items():
        here = stage(m)
        for t in targets:
            there = stage(t)
            if here and there and order[there] > order[here]:
                wrong.append(f"{m} imports {t}")
    assert not wrong, wrong


def test_eval_analysis_release_do_not_import_the_trainer():
    offenders = [f"{m} -> {t}" for m, ts in import_graph().items() for t in ts
                 if stage(m) in ("eval", "analysis", "release") and stage(t) == "train"]
    assert not offenders, offenders


def test_only_the_orchestrator_imports_every_stage():
    graph = import_graph()
    for m, targets in graph.items():
        reached = {stage(t) for t in targets} - {None, stage(m)}
        if m != "llm360.pipeline":
            assert len(reached) < 4, f"{m} imports stages {sorted(reached)}"
    assert {stage(t) for t in graph["llm360.pipeline"]} >= {"data", "train", "eval", "analysis", "release"}


def test_light_modules_import_no_torch():
    heavy = {"torch", "numpy", "transformers"}
    for name in TORCH_FREE:
        path = SRC / Path(*name.split(".")[1:]).with_suffix(".py")
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            roots = []
            if isinstance(node, ast.Import):
                roots = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                roots = [node.module.split(".")[0]]
            assert not heavy & set(roots), f"{name} imports {heavy & set(roots)}"
