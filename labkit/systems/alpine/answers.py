"""The interactive route: a setup-alpine answer file for a diskless install, and what to run after.

``setup-alpine -e -f answers`` never runs ``lbu commit``; :func:`post_commands` lists the
``lbu include``/``exclude`` calls and the final ``lbu commit -d``.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from labkit.core.errors import InputError
from labkit.core.text import excerpt
from labkit.systems.alpine.apkovl import DEFAULT_INTERFACES
from labkit.systems.alpine.rules import check_device_name, check_hostname, check_lbu_path, check_word

#: The keys setup-alpine (alpine-conf 3.16 .. 3.22) reads, in the order of ``setup-alpine -c``.
KEYS = ("KEYMAPOPTS", "HOSTNAMEOPTS", "DEVDOPTS", "INTERFACESOPTS", "WIFIOPTS", "DNSOPTS", "TIMEZONEOPTS",
        "PROXYOPTS", "APKREPOSOPTS", "USEROPTS", "USERSSHKEY", "SSHDOPTS", "ROOTSSHKEY", "NTPOPTS", "DISKOPTS",
        "LBUOPTS", "APKCACHEOPTS")


@dataclass(frozen=True)
class AnswerSpec:
    hostname: str = "alpinelab"
    media: str = "sda4"
    keymap: str = "us us"
    timezone: str = "UTC"
    interfaces: str = DEFAULT_INTERFACES
    apkrepos: str = "-1 -c"
    user: str | None = None
    user_groups: tuple[str, ...] = ("audio", "input", "video", "netdev")
    user_ssh_key: str | None = None
    root_ssh_key: str | None = None
    sshd: str = "openssh"
    ntp: str = "chrony"
    proxy: str = "none"
    devd: str = "mdev"
    apk_cache: bool = True

    def __post_init__(self) -> None:
        # `setup-alpine -f FILE` sources the file with sh (alpine-conf setup-alpine.in): every value, and the
        # device name the header comment repeats, is checked before it is written
        check_hostname(self.hostname)
        check_device_name(self.media)
        for what, value, pattern in (
            ("keymap", self.keymap, r"[A-Za-z0-9_-]+ [A-Za-z0-9_.-]+|none"),
            ("timezone", self.timezone, r"[A-Za-z0-9_+-]+(?:/[A-Za-z0-9_+-]+)*"),
            ("apk repositories option", self.apkrepos, r"-?[A-Za-z0-9]+(?: -?[A-Za-z0-9]+)*"),
            ("sshd", self.sshd, r"[a-z0-9-]+"),
            ("ntp", self.ntp, r"[a-z0-9-]+"),
            ("device manager", self.devd, r"[a-z0-9-]+"),
            ("proxy", self.proxy, r"none|(?:https?|ftp)://[A-Za-z0-9.:@%_+-]+(?:/[A-Za-z0-9._~%+-]*)*/?"),
        ):
            check_word(value, what, pattern)
        if self.user is not None and not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", self.user):
            raise InputError(f"bad user name {excerpt(self.user)}", "use lower-case letters, digits, '_' or '-'")
        for g in self.user_groups:
            check_word(g, "group", r"[a-z_][a-z0-9_-]{0,31}")
        for key in (self.user_ssh_key, self.root_ssh_key):
            if key is not None and not re.fullmatch(r"(ssh-|ecdsa-|sk-)\S+ [A-Za-z0-9+/=]+( [^\x00-\x1f\x7f]*)?", key):
                raise InputError(f"{excerpt(key, 30)} is not one OpenSSH public key line",
                                 "give the line of a .pub file")
        if any(c in self.interfaces for c in "\0\r"):
            raise InputError("the interfaces text holds a NUL or carriage return")


def _q(value: str) -> str:
    """Quote as the fixture does: bare when safe, else in double quotes (newlines kept).

    Inside POSIX double quotes only ``$``, backquote, backslash and ``"`` are special (POSIX 2.2.3);
    they are refused, so sh reads the value back byte for byte.
    """
    if re.fullmatch(r"[A-Za-z0-9_./:@,+-]+", value):
        return value
    if '"' in value or "$" in value or "`" in value or "\\" in value or "\0" in value:
        raise InputError(f"answer value {excerpt(value)} contains a character setup-alpine's sh would expand",
                         "leave out $, `, \\ and \"")
    return f'"{value}"'


def answers(spec: AnswerSpec) -> dict[str, str]:
    media = f"/media/{spec.media}"
    out = {
        "KEYMAPOPTS": spec.keymap, "HOSTNAMEOPTS": spec.hostname, "DEVDOPTS": spec.devd,
        "INTERFACESOPTS": spec.interfaces, "TIMEZONEOPTS": spec.timezone, "PROXYOPTS": spec.proxy,
        "APKREPOSOPTS": spec.apkrepos,
        "USEROPTS": f"-a -u -g {','.join(spec.user_groups)} {spec.user}" if spec.user else "none",
        "SSHDOPTS": spec.sshd, "NTPOPTS": spec.ntp, "DISKOPTS": "none", "LBUOPTS": media,
        "APKCACHEOPTS": f"{media}/cache" if spec.apk_cache else "none",
    }
    if spec.user and spec.user_ssh_key:
        out["USERSSHKEY"] = spec.user_ssh_key
    if spec.root_ssh_key:
        out["ROOTSSHKEY"] = spec.root_ssh_key
    return {k: out[k] for k in KEYS if k in out}


def answer_file(spec: AnswerSpec) -> str:
    head = (f"# setup-alpine answer file: diskless install, LBU + apk cache on /dev/{spec.media}\n"
            f"# use:  setup-alpine -e -f <this file> && lbu commit -d\n")
    return head + "".join(f"{k}={_q(v)}\n" for k, v in answers(spec).items())


def parse_answer_file(text: str) -> dict[str, str]:
    """KEY=value assignments of an answer file (sh quoting; comments and blank lines skipped)."""
    lex = shlex.shlex(text, posix=True, punctuation_chars=False)
    lex.whitespace_split = True
    lex.commenters = "#"
    out: dict[str, str] = {}
    for tok in lex:
        key, sep, value = tok.partition("=")
        if sep and re.fullmatch(r"[A-Z_]+", key):
            out[key] = value
    return out


def post_commands(include: tuple[str, ...] = (), exclude: tuple[str, ...] = ()) -> list[list[str]]:
    """Run on the installed system after setup-alpine (diskless): save the lists, then commit.

    Each path must fit one ``lbu.list`` line (``lbu include`` writes it there)."""
    for p in (*include, *exclude):
        check_lbu_path(p, absolute_ok=True)
    cmds = [["lbu", "include", p] for p in include] + [["lbu", "exclude", p] for p in exclude]
    return [*cmds, ["lbu", "commit", "-d"]]
