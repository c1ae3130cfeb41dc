"""setup-alpine answer file against the real fixtures."""

from __future__ import annotations

import pytest
from paths import ALPINE_FIXTURES

from labkit.cli.main import main
from labkit.core.errors import InputError
from labkit.systems.alpine.answers import KEYS, AnswerSpec, answer_file, parse_answer_file, post_commands

FIX = ALPINE_FIXTURES
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOIiHcbg/7ytfLFHUNLRgEAubFz/13SwXBOM/05GNZe4 juser@example.com"


def test_same_answers_as_the_fixture() -> None:
    fixture = parse_answer_file((FIX / "answers-diskless.txt").read_text())
    ours = parse_answer_file(answer_file(AnswerSpec(user="juser", user_ssh_key=KEY, root_ssh_key=KEY)))
    assert ours == fixture
    assert ours["DISKOPTS"] == "none" and ours["LBUOPTS"] == "/media/sda4"
    assert ours["APKCACHEOPTS"] == "/media/sda4/cache"


def test_key_set_covers_the_setup_alpine_template() -> None:
    template = parse_answer_file((FIX / "setup-alpine-template.txt").read_text())
    ours = parse_answer_file(answer_file(AnswerSpec()))
    assert set(template) <= set(ours) <= set(KEYS)
    assert ours["USEROPTS"] == "none" and "ROOTSSHKEY" not in ours


def test_post_commands_and_bad_values(capsys: pytest.CaptureFixture[str]) -> None:
    assert post_commands(("home",), ("home/juser/.cache",)) == [
        ["lbu", "include", "home"], ["lbu", "exclude", "home/juser/.cache"], ["lbu", "commit", "-d"]]
    with pytest.raises(InputError, match="bad hostname"):
        answer_file(AnswerSpec(hostname="$(reboot)"))
    with pytest.raises(InputError, match="expand"):
        answer_file(AnswerSpec(interfaces="auto $(reboot)\n"))
    assert main(["alpine", "answers", "--user", "juser", "--include", "home"]) == 0
    out = capsys.readouterr().out
    assert "DISKOPTS=none" in out and "#   lbu commit -d" in out
