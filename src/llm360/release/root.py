"""The release root: the sha256 of release.json's bytes, the one value that anchors a release.

release.json lists every file of the run with its size and sha256, so whoever holds the root
(printed by `llm360 release`, published next to the model, or signed) can check every byte with
`llm360 verify RUN --expect ROOT`. Without the root, a forger who changes a chunk and writes its new
hash into release.json has a release that is consistent with itself; with it, they do not.

Two files listed in release.json also show the root, MODEL_CARD.md and report/index.html, and a
hash cannot be written into the bytes it covers. So those two are listed in a normal form: every
`llm360-root:` followed by 64 hex digits has the digits replaced by PLACEHOLDER (64 zeros, so the
size is the same). `llm360 release` renders them with the placeholder, lists their normal form,
writes release.json, then writes them with the root in place of the placeholder. `llm360 verify`
hashes them in the same normal form and requires every root they show to equal sha256(release.json).
That is sound: the only bytes the normal form leaves out are those the second check pins, so each
byte of the two documents is fixed by release.json just as every other file's is.

The root says what was released, not who released it: whoever can publish a root next to a forged
run has a release that verifies. A signature adds who vouches for the root. `llm360 release RUN
--sign-key KEY` writes release.json.sig, an OpenSSH signature of release.json's bytes in the
namespace llm360-release, and `llm360 verify RUN --allowed-signers FILE` names the principal of FILE
whose key made it (llm360.release.signature); a reader then trusts a key, not a channel the root came by.
"""

from __future__ import annotations

import re

from llm360.rundir import MODEL_CARD, RELEASE_FILE, REPORT_FILE

ROOT_MARK = "llm360-root:"
PLACEHOLDER = "0" * 64
ROOTED_DOCUMENTS = (MODEL_CARD, REPORT_FILE)  # the files that show the root
SIGNATURE_FILE = f"{RELEASE_FILE}.sig"  # ssh-keygen's signature of release.json; not listed in it
SIGNATURE_NAMESPACE = "llm360-release"
_SHOWN = re.compile(re.escape(ROOT_MARK).encode() + rb"([0-9a-f]{64})")


def placeholder_mark() -> str:
    """What a document writes where the root goes; the release fills it in."""
    return ROOT_MARK + PLACEHOLDER


def normal_form(data: bytes) -> bytes:
    """The document with every root it shows replaced by the placeholder: what release.json hashes."""
    return _SHOWN.sub(placeholder_mark().encode(), data)


def with_root(normal: bytes, root: str) -> bytes:
    return normal.replace(placeholder_mark().encode(), (ROOT_MARK + root).encode())


def shown_roots(data: bytes) -> list[str]:
    return [m.group(1).decode() for m in _SHOWN.finditer(data)]


def is_root(text: object) -> bool:
    return isinstance(text, str) and re.fullmatch(r"[0-9a-f]{64}", text) is not None
