"""No notebook, module or default carries a credential: no SSH key, password hash or private key shaped text
anywhere in labkit's shipped sources, data and notebooks, and no such default in any settings dataclass. A user's
way in comes from a file the user names (ssh_key_file, hashed_password_file, --ssh-key FILE)."""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import re
from pathlib import Path

import nbformat
import pytest

import labkit

REPO = Path(__file__).resolve().parents[1]
#: an OpenSSH public key body (base64 of the key type: 'AAAA' + at least a few dozen characters), a crypt(3)
#: password hash ($y$ yescrypt, $6$/$5$ SHA-crypt, $2b$ bcrypt, $1$ MD5, $gy$, $7$), a private key block
CREDENTIAL = re.compile(
    r"(?:ssh-(?:ed25519|rsa|dss)|ecdsa-sha2-nistp\d+|sk-(?:ssh-ed25519|ecdsa-sha2-nistp256)@openssh\.com)"
    r"\s+AAAA[0-9A-Za-z+/]{20,}"
    r"|\$(?:y|gy|7|6|5|2[abxy]|1)\$[./0-9A-Za-z$=,]*[./0-9A-Za-z]{20,}"
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----"
)


def credentials_in(text: str) -> list[str]:
    return [m.group(0)[:40] for m in CREDENTIAL.finditer(text)]


def test_the_scanner_finds_what_it_must() -> None:
    old_placeholder = ('ssh_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA '
                       'demo-key-replace-me"]')  # what notebooks/03_nixos.ipynb shipped: it passed validation
    assert credentials_in(old_placeholder)
    assert credentials_in("hashed = '$6$rounds=5000$saltsalt$" + "a" * 86 + "'")
    assert credentials_in("$y$j9T$F5Jx5fExrKuPp53xLKQ..1$" + "X" * 43)
    assert credentials_in("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert not credentials_in('_KEY_TYPES = ("ssh-ed25519", "ssh-rsa")  # names, no key')
    assert not credentials_in("a yescrypt ($y$) or SHA-512 ($6$) hash (mkpasswd)")
    assert not credentials_in("#: yescrypt (libxcrypt): $y$params$salt$hash(43)")  # a format, not a hash


def _shipped_files() -> list[Path]:
    files = [p for p in (REPO / "labkit").rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    return files + sorted((REPO / "notebooks").glob("*.ipynb")) + [REPO / "README.md", *(REPO / "docs").glob("*.md")]


@pytest.mark.parametrize("path", _shipped_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_credential_in_shipped_files(path: Path) -> None:
    if path.suffix == ".ipynb":
        nb = nbformat.read(path, as_version=4)
        text = "\n".join(c.source for c in nb.cells)
    else:
        text = path.read_bytes().decode("utf-8", errors="replace")
    assert not credentials_in(text), f"{path.relative_to(REPO)} carries a credential-shaped string"


def _dataclasses() -> list[type]:
    out = []
    for mod in pkgutil.walk_packages(labkit.__path__, "labkit."):
        if mod.name.endswith("__main__"):
            continue  # runs the CLI when imported
        module = importlib.import_module(mod.name)
        out += [obj for obj in vars(module).values()
                if isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj.__module__ == module.__name__]
    return out


def test_no_credential_in_any_default() -> None:
    classes = _dataclasses()
    assert len(classes) > 20  # the walk found labkit's settings (NixosSettings, User, LabParams, ...)
    checked = 0
    for cls in classes:
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                value = f.default
            elif f.default_factory is not dataclasses.MISSING:
                value = f.default_factory()
            else:
                continue
            checked += 1
            where = f"{cls.__module__}.{cls.__name__}.{f.name}"
            assert not credentials_in(repr(value)), f"{where} defaults to a credential"
            empty = (None, (), [], "", "!", "*")  # '!' and '*' lock an account
            if re.search(r"ssh_key|password|hash(?!_kind)|credential|secret", f.name) and value not in empty:
                raise AssertionError(f"{cls.__name__}.{f.name} has a non-empty default {value!r}: credentials come "
                                     "from a file the user names")
    assert checked > 50
