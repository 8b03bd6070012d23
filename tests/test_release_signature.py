"""release.json signed with an ssh key (`llm360 release --sign-key`) and checked against an
allowed_signers file (`llm360 verify --allowed-signers`): a good signature names its signer; a
changed release.json, a stranger's key or no signature is a finding; a key that cannot sign is one
sentence and leaves nothing half-written."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers_release import copy_run, released_template
from llm360.cli import main
from llm360.release.root import SIGNATURE_FILE
from llm360.release.verify import check

pytestmark = pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="signing needs OpenSSH's ssh-keygen")


def _keygen(path: Path, comment: str, passphrase: str = "") -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-f", str(path), "-C", comment],
                   check=True, stdin=subprocess.DEVNULL)
    return path


@pytest.fixture
def run(prepared_template, tmp_path_factory, tmp_path) -> Path:
    return copy_run(released_template(prepared_template, tmp_path_factory), tmp_path / "run")


@pytest.fixture
def key(tmp_path) -> Path:
    return _keygen(tmp_path / "id_ed25519", "tester@example")


@pytest.fixture
def signers(tmp_path, key) -> Path:
    public = " ".join(key.with_suffix(".pub").read_text().split()[:2])
    path = tmp_path / "allowed_signers"
    path.write_text(f'tester@example namespaces="llm360-release" {public}\n')
    return path


def _signature_findings(run: Path, signers: Path) -> list[str]:
    return [str(f) for f in check(run, allowed_signers=signers).findings if f.path == SIGNATURE_FILE]


def test_a_signed_release_verifies_and_names_its_signer(run, key, signers, capsys):
    assert main(["release", str(run), "--sign-key", str(key)]) == 0
    assert f"{run / SIGNATURE_FILE} (release.json signed with {key}" in capsys.readouterr().err
    assert (run / SIGNATURE_FILE).read_bytes().startswith(b"-----BEGIN SSH SIGNATURE-----")

    assert main(["verify", str(run), "--allowed-signers", str(signers)]) == 0
    out = capsys.readouterr().out
    assert "signature    signed by tester@example" in out and "verified" in out
    assert main(["verify", str(run), "--allowed-signers", str(signers), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["signed_by"] == "tester@example" and report["signature"] == "verified"

    assert main(["verify", str(run)]) == 0  # present, not checked: never a finding
    assert "signed, not checked (give --allowed-signers)" in capsys.readouterr().out

    assert main(["release", str(run)]) == 0  # a release without a key drops the stale signature
    assert not (run / SIGNATURE_FILE).exists()


def test_a_changed_byte_in_release_json_breaks_the_signature(run, key, signers):
    assert main(["release", str(run), "--sign-key", str(key)]) == 0
    release = run / "release.json"
    data = bytearray(release.read_bytes())
    at = data.index(b'"created": "') + len(b'"created": "')
    data[at] = ord("1") if data[at] != ord("1") else ord("2")  # the year's first digit
    release.write_bytes(bytes(data))
    findings = _signature_findings(run, signers)
    assert len(findings) == 1 and findings[0].startswith(
        "release.json.sig: signed by tester@example's key, but does not verify against release.json"), findings
    assert main(["verify", str(run), "--allowed-signers", str(signers)]) == 1


def test_a_signature_by_another_key_is_a_finding(run, tmp_path, signers):
    stranger = _keygen(tmp_path / "stranger", "mallory@example")
    assert main(["release", str(run), "--sign-key", str(stranger)]) == 0
    assert _signature_findings(run, signers) == [
        f"release.json.sig: signed by a key that no principal in {signers} is allowed to sign with"]
    (run / SIGNATURE_FILE).write_text("not a signature\n")
    assert _signature_findings(run, signers)[0].startswith("release.json.sig: not an ssh signature (ssh-keygen: ")


def test_a_missing_signature_is_a_finding_only_when_asked_for(run, signers, capsys):
    assert not (run / SIGNATURE_FILE).exists()
    assert _signature_findings(run, signers) == [
        "release.json.sig: no signature of release.json (`llm360 release RUN --sign-key KEY` writes it)"]
    assert main(["verify", str(run)]) == 0
    assert "signature    none" in capsys.readouterr().out


def _refused_in_one_sentence(argv: list[str], named: str, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and named in lines[0] and "Traceback" not in err, err
    return lines[0]


def test_a_key_that_cannot_sign_is_one_sentence_and_leaves_the_release_whole(run, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)  # no agent to hold the protected key
    before = (run / "release.json").read_bytes()
    absent = tmp_path / "absent_key"
    assert "no such key file" in _refused_in_one_sentence(["release", str(run), "--sign-key", str(absent)],
                                                          str(absent), capsys)
    not_a_key = tmp_path / "notes.txt"
    not_a_key.write_text("just text\n")
    said = _refused_in_one_sentence(["release", str(run), "--sign-key", str(not_a_key)], str(not_a_key), capsys)
    assert "is not an ssh private key" in said and "(ssh-keygen: " in said
    protected = _keygen(tmp_path / "protected", "tester@example", passphrase="secret words")
    said = _refused_in_one_sentence(["release", str(run), "--sign-key", str(protected)], str(protected), capsys)
    assert "needs a passphrase and no ssh-agent holds it" in said
    assert (run / "release.json").read_bytes() == before and not (run / SIGNATURE_FILE).exists()
    assert not list(run.glob(".release.json*.tmp"))


def test_no_ssh_keygen_or_no_allowed_signers_is_one_sentence(run, key, tmp_path, monkeypatch, capsys):
    absent = tmp_path / "absent_signers"
    _refused_in_one_sentence(["verify", str(run), "--allowed-signers", str(absent)], str(absent), capsys)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    _refused_in_one_sentence(["release", str(run), "--sign-key", str(key)], "ssh-keygen", capsys)
    _refused_in_one_sentence(["verify", str(run), "--allowed-signers", str(key)], "ssh-keygen", capsys)
