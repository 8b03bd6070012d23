"""release.json signed with an ssh key the user already has, by OpenSSH's `ssh-keygen -Y`.

    signature = sign(data, key)                      # the bytes of release.json.sig
    principal, why = check(data, signature, allowed)  # who signed, or why the signature fails

The signature covers release.json's bytes (so the root and through it every file) in the
namespace llm360-release; `allowed` is an OpenSSH allowed_signers file naming whom the reader
trusts. ssh-keygen always reads and writes files in a private temporary folder, never in the run
(whose files are a stranger's), and runs with no terminal and stdin closed: it never prompts, so
a key that needs a passphrase fails at once unless an ssh-agent holds it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from llm360.errors import UserError
from llm360.release.root import SIGNATURE_NAMESPACE
from llm360.rundir import RELEASE_FILE

SSH_KEYGEN_TIMEOUT_S = 120  # a hardware key (ed25519-sk) waits for a touch
NOISE = ("Signing ", "Write signature ", "Good ", "@")  # ssh-keygen's progress lines and banners


def ssh_keygen() -> str:
    path = shutil.which("ssh-keygen")
    if path is None:
        raise UserError("signing needs ssh-keygen (OpenSSH's, 8.2 or newer), which is not on PATH")
    return path


def _run(args: list[str], data: bytes | None = None) -> subprocess.CompletedProcess:
    """ssh-keygen with no terminal and, unless it is given data, stdin closed: it never prompts."""
    env = {**os.environ, "SSH_ASKPASS_REQUIRE": "never"}  # nor opens a passphrase dialog
    try:
        return subprocess.run([ssh_keygen(), *args], input=data, stdin=None if data is not None else subprocess.DEVNULL,
                              capture_output=True, env=env, start_new_session=True, timeout=SSH_KEYGEN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise UserError(f"ssh-keygen {args[1]} did not finish within {SSH_KEYGEN_TIMEOUT_S} s") from None


def said(stderr: bytes) -> str:
    """ssh-keygen's error in one short line: its first line that is not progress (the cause; later
    lines are consequences, such as "No principal matched."), prompts left out."""
    lines = [line.split("passphrase: ")[-1].strip() for line in stderr.decode("utf-8", "replace").splitlines()]
    lines = [line for line in lines if line and not line.startswith(NOISE)]
    text = lines[0] if lines else "no message"
    text = text if text.isprintable() else ascii(text)[1:-1]
    return text if len(text) <= 160 else text[:157] + "..."


def sign(data: bytes, key: str | Path) -> bytes:
    """The signature of `data` (release.json's bytes) by `key`: a private key file, or the .pub
    of a key an ssh-agent holds."""
    key = Path(key).expanduser()
    if not key.is_file():
        raise UserError(f"--sign-key {key}: {'not a key file' if key.exists() else 'no such key file'}")
    with tempfile.TemporaryDirectory(prefix="llm360-sign-") as tmp:
        message = Path(tmp) / RELEASE_FILE
        message.write_bytes(data)
        done = _run(["-Y", "sign", "-f", str(key), "-n", SIGNATURE_NAMESPACE, str(message)])
        signature = Path(tmp) / f"{RELEASE_FILE}.sig"
        if done.returncode == 0 and signature.is_file():
            return signature.read_bytes()
    if b"passphrase" in done.stderr:
        raise UserError(f"--sign-key {key} needs a passphrase and no ssh-agent holds it; llm360 never prompts: "
                        f"run `ssh-add {key}` first")
    if b"load" in done.stderr.lower():  # "Couldn't load public key", "Load key ...: invalid format"
        raise UserError(f"--sign-key {key} is not an ssh private key, nor the .pub of a key an ssh-agent holds "
                        f"(ssh-keygen: {said(done.stderr)})")
    raise UserError(f"--sign-key {key} could not sign (ssh-keygen: {said(done.stderr)})")


def check(data: bytes, signature: bytes, allowed: Path) -> tuple[str | None, str | None]:
    """(principal, None) when `signature` is a good signature of `data` by a key `allowed` names
    for llm360-release; else (None, why not)."""
    with tempfile.TemporaryDirectory(prefix="llm360-verify-") as tmp:
        sig = Path(tmp) / f"{RELEASE_FILE}.sig"
        sig.write_bytes(signature)
        found = _run(["-Y", "find-principals", "-s", str(sig), "-f", str(allowed)])
        principals = [line.strip() for line in found.stdout.decode("utf-8", "replace").splitlines() if line.strip()]
        if found.returncode != 0 or not principals:
            if b"parse signature" in found.stderr:
                return None, f"not an ssh signature (ssh-keygen: {said(found.stderr)})"
            return None, f"signed by a key that no principal in {allowed} is allowed to sign with"
        principal = principals[0]
        checked = _run(["-Y", "verify", "-f", str(allowed), "-I", principal, "-n", SIGNATURE_NAMESPACE,
                        "-s", str(sig)], data=data)
    if checked.returncode != 0:
        return None, (f"signed by {principal}'s key, but does not verify against release.json "
                      f"(ssh-keygen: {said(checked.stderr)})")
    return principal, None
