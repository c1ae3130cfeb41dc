"""Password hashes for ``users.users.<name>.hashedPassword``.

NixOS only *warns* at evaluation time when a hash is malformed, and with
``users.mutableUsers = false`` a bad hash locks the user out (the seed's lock-out). So labkit
accepts only the two formats ``mkpasswd`` writes — yescrypt (``$y$``) and SHA-512 crypt
(``$6$``) — checked strictly, and never a plaintext password.
"""

from __future__ import annotations

import re
from pathlib import Path

from labkit.core.errors import InputError

_B64 = r"[./0-9A-Za-z]"
#: SHA-512 crypt: $6$[rounds=N$]salt(1-16)$hash(86)
SHA512_RE = re.compile(
    rf"^\$6\$(?:rounds=(?P<rounds>[0-9]{{1,9}})\$)?(?P<salt>{_B64}{{1,16}})\$(?P<hash>{_B64}{{86}})$"
)
#: yescrypt (libxcrypt): $y$params$salt$hash(43)
YESCRYPT_RE = re.compile(rf"^\$y\$(?P<params>{_B64}{{3,}})\$(?P<salt>{_B64}{{1,86}})\$(?P<hash>{_B64}{{43}})$")

_FIX = (
    "write a hash made with `mkpasswd -m yescrypt` or `mkpasswd -m sha-512` (Debian package whois), "
    "or with `labkit.systems.nixos.hashes.hash_password()`; put it alone in a file and pass the file"
)


def hash_kind(value: str) -> str:
    """``"yescrypt"`` or ``"sha512"``; raises :class:`InputError` for anything else (problem + fix)."""
    v = value.strip()
    if v != value or "\n" in value:
        raise InputError("the password hash has surrounding whitespace or several lines", _FIX)
    if YESCRYPT_RE.match(v):
        return "yescrypt"
    m = SHA512_RE.match(v)
    if m:
        rounds = m.group("rounds")
        if rounds is not None and not 1000 <= int(rounds) <= 999_999_999:
            raise InputError(f"SHA-512 hash has rounds={rounds}, outside 1000..999999999", _FIX)
        return "sha512"
    if not v:
        raise InputError("the password hash is empty", _FIX)
    if not v.startswith("$"):
        raise InputError(
            "the password hash looks like a plaintext password (a crypt hash starts with $y$ or $6$); "
            "NixOS would take it as a hash and nobody could log in", _FIX)
    prefix = v.split("$")[1] if v.count("$") >= 2 else v
    if prefix in {"1", "5", "2a", "2b", "2y", "7", "gy"}:
        raise InputError(f"the password hash uses scheme ${prefix}$; labkit accepts only yescrypt ($y$) "
                         "or SHA-512 ($6$)", _FIX)
    # never echo the input: a malformed "hash" may be a plaintext password that starts with "$"
    raise InputError(f"malformed password hash ({len(v)} characters): it is not a "
                     "yescrypt ($y$…$…$<43 chars>) or SHA-512 ($6$<salt>$<86 chars>) hash", _FIX)


def looks_like_hash(value: str) -> bool:
    """True for text shaped like a crypt(3) hash (``$6$...``, ``$y$...``): a secret, never a path."""
    from labkit.core.runner import CRYPT_HASH_RE

    return CRYPT_HASH_RE.search(value) is not None


def check_hash(value: str) -> str:
    """Return ``value`` if it is a well-formed yescrypt or SHA-512 crypt hash, else raise."""
    hash_kind(value)
    return value


def read_hash_file(path: Path) -> str:
    """Read a hash written alone in a file (one trailing newline allowed) and check it."""
    from labkit.core.files import read_user_text

    if looks_like_hash(str(path)):
        # never echo it: the value given as a file name is the secret itself
        raise InputError("the password hash file parameter holds a password hash, not a file name",
                         "write the hash alone into a file (mkpasswd -m sha-512 > FILE; chmod 600 FILE) and "
                         "pass that file's path")
    text = read_user_text(path, what="the password hash file", limit=4096, fix=_FIX)
    if text.endswith("\n"):
        text = text[:-1]
    return check_hash(text)


def hash_password(password: str, *, rounds: int = 656_000) -> str:
    """A SHA-512 crypt hash of ``password`` (libpass, the maintained fork of passlib)."""
    if not password:
        raise InputError("empty password", "choose a password, or use an SSH key only")
    from passlib.hash import sha512_crypt

    return check_hash(sha512_crypt.using(rounds=rounds).hash(password))


def verify_password(password: str, hashed: str) -> bool:
    """True when ``password`` matches a SHA-512 ``hashed`` (yescrypt needs libxcrypt: not checked here)."""
    if hash_kind(hashed) != "sha512":
        raise InputError("only SHA-512 hashes can be verified here", "use `mkpasswd` on the target to check")
    from passlib.hash import sha512_crypt

    return bool(sha512_crypt.verify(password, hashed))
