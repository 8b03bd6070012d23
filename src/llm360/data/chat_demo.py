"""A demo instruction set and preference set made from the standard library's own source.

No download: the running Python's standard library is read with `ast` (never imported), module by
module in `DEMO_MODULES` order, function by function in source order. A function with a
docstring becomes one conversation:

    user:       "Write the Python function `NAME` (from MODULE): DOCSTRING"
    assistant:  the function's source, as the file has it

and one preference pair with the same prompt, the function's source as `chosen` and, as
`rejected`, the source of another function of the set drawn with `seeded_rng(seed, "chat-demo")`.
Functions longer than MAX_SOURCE_CHARS are left out so that a conversation fits a small context.

The files are JSONL in the `messages` and `prompt`/`chosen`/`rejected` forms that
`llm360.data.chat` reads, and are the same bytes for the same seed and Python version.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

from llm360.data.assemble import seeded_rng
from llm360.data.sources import stdlib_dir
from llm360.utils import atomic_write_text

DEMO_MODULES = ("textwrap", "shlex", "fnmatch", "posixpath", "genericpath", "string", "base64", "colorsys",
                "heapq", "bisect", "calendar", "difflib", "statistics", "glob", "shutil", "random", "html",
                "gettext", "copy", "functools", "operator", "tokenize", "urllib/parse", "json/decoder",
                "json/encoder", "email/utils", "quopri", "uu", "ntpath", "locale", "ipaddress", "fractions")
MAX_SOURCE_CHARS = 1500
SFT_FILE = "sft.jsonl"
PREFERENCE_FILE = "preferences.jsonl"


def demo_functions() -> list[tuple[str, str, str, str]]:
    """(module, name, docstring, source) of every documented top-level function or method of
    DEMO_MODULES no longer than MAX_SOURCE_CHARS, in module then source order."""
    out = []
    root = stdlib_dir()
    for module in DEMO_MODULES:
        path = next((p for p in (root / f"{module}.py", root / module / "__init__.py") if p.is_file()), None)
        if path is None:  # a module this Python no longer ships (uu went in 3.13)
            continue
        text = path.read_text(encoding="utf-8")
        for node in _functions(ast.parse(text)):
            doc = ast.get_docstring(node, clean=True)
            source = ast.get_source_segment(text, node)
            if doc and source and len(source) <= MAX_SOURCE_CHARS:
                out.append((module.replace("/", "."), node.name, doc, source))
    return out


def _functions(tree: ast.Module):
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node
        elif isinstance(node, ast.ClassDef):
            yield from (n for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))


def demo_records(seed: int) -> tuple[list[dict], list[dict]]:
    """(conversations, preference pairs) as JSON records, one of each per demo function."""
    functions = demo_functions()
    rng = seeded_rng(seed, "chat-demo")
    chats, pairs = [], []
    for i, (module, name, doc, source) in enumerate(functions):
        prompt = f"Write the Python function `{name}` (from {module}): {doc}"
        chats.append({"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": source}]})
        other = (i + 1 + int(rng.integers(len(functions) - 1))) % len(functions)  # any function but this one
        while functions[other][3] == source:  # a copy (ntpath and posixpath share some): the next one
            other = (other + 1) % len(functions)
        pairs.append({"prompt": prompt, "chosen": source, "rejected": functions[other][3]})
    return chats, pairs


def write_chat_demo(folder: str | Path, seed: int) -> dict[str, Path]:
    """Write SFT_FILE and PREFERENCE_FILE into `folder`; return their paths by name ("sft", "preferences")."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chats, pairs = demo_records(seed)
    paths = {"sft": folder / SFT_FILE, "preferences": folder / PREFERENCE_FILE}
    for key, records in (("sft", chats), ("preferences", pairs)):
        atomic_write_text(paths[key], "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return paths
