"""The command line: help for every command, user mistakes as one sentence and exit code 2."""

import subprocess
import sys

import pytest

from llm360.cli import build_parser, main

COMMANDS = [["run"], ["prepare"], ["data", "batch"], ["data", "export-llm360"], ["train"], ["generate"],
            ["eval"], ["analyze", "memorization"], ["index"], ["search"], ["release"], ["verify"],
            ["replay"], ["export", "hf"]]


@pytest.mark.parametrize("cmd", COMMANDS, ids=" ".join)
def test_every_command_has_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([*cmd, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: llm360 " + " ".join(cmd) in out
    assert len(out.splitlines()) >= 4


def test_top_level_help_lists_spec_commands():
    text = build_parser().format_help()
    for name in ["run", "prepare", "data", "train", "generate", "eval", "analyze", "index", "search",
                 "release", "verify", "replay", "export"]:
        assert name in text


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "llm360.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and "llm360" in out.stdout


def test_user_error_is_one_line_and_exit_2(tmp_path, capsys):
    code = main(["prepare", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2
    assert "does not exist" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_bad_override_is_rejected(tmp_path, capsys):
    code = main(["prepare", "demo", "--out", str(tmp_path / "run"), "--train.nope=1"])
    assert code == 2
    assert "unknown config key 'train.nope'" in capsys.readouterr().err


def test_unknown_argument(capsys):
    with pytest.raises(SystemExit) as e:
        main(["verify", "x", "--what"])
    assert e.value.code == 2
