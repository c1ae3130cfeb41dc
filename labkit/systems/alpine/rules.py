"""What a value may hold, by the rules of the Alpine file it is written into.

Every value a user gives (``--world``, ``--include``/``--exclude``, ``--mirror``, ``--media``,
``--media-uuid``, ...) lands in a line-oriented file that Alpine reads: ``etc/apk/world``,
``etc/apk/protected_paths.d/lbu.list``, ``etc/apk/repositories``, ``etc/fstab``, ``etc/lbu/lbu.conf``
or the ``setup-alpine`` answer file (sourced by ``sh``). A newline or a blank in such a value would add
lines or fields the user never wrote, so each checker accepts only what the reader parses as one
value, and every check is a full match (``re.fullmatch``: ``$`` would let a trailing newline through).

Sources (the research notes on apk-tools, section 3, and on the Alpine boot, cited by file and line):

- world: apk-tools 2.14 ``apk_blob_pull_dep`` (``src/package.c:190-273``) splits tokens at a space or
  newline and silently truncates the world at the first invalid token (``:275-286``). labkit writes the
  strict intersection accepted by apk 2.14, apk 3 and abuild: the name rule of abuild ``verify_pkgname``
  (``abuild.in:182-187``) = apk 3 ``APK_CTYPE_PACKAGE_NAME`` (``src/apk_adb.c:177-186``), an optional
  ``@tag`` and an optional constraint ``OP VERSION`` with apk 3's strict version grammar
  (``src/version.c:25``, less the ``~hash`` that 2.14 rejects) and 2.14's 18-digit limit per number
  (``src/version.c:100``).
- lbu.list / protected_paths.d: one ``<prefix><path>`` per line, prefix ``+`` or ``-`` (apk-tools 2.14
  ``src/database.c:1223-1240``, segments split at ``\\n``: ``:1608-1616``); lbu itself writes
  ``+path``/``-path`` lines (alpine-conf ``lbu.in`` l.146-161, l.231-245).
- repositories: one repository per line, optionally ``@tag URL`` (apk-tools 2.14 ``src/database.c:2264-2268``).
"""

from __future__ import annotations

import re

from labkit.core.errors import InputError
from labkit.core.text import excerpt

#: abuild verify_pkgname / apk 3 APK_CTYPE_PACKAGE_NAME
PACKAGE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
#: apk 3 strict version grammar (apk.md §3.3: digit{.digit}{letter}{_suf{#}}{~hash}{-r#}) without the
#: ``~hash`` part, which apk 2.14 rejects (``x=1.0~abc``, apk.md §3.1): accepted by both
VERSION_RE = re.compile(r"[0-9]+(?:\.[0-9]+)*[a-z]?(?:_(?:alpha|beta|pre|rc|cvs|svn|git|hg|p)[0-9]*)*"
                        r"(?:-r[0-9]+)?")
#: the operators labkit writes (apk.md §3.2; never the checksum form ``><``)
OPERATORS = ("<=", ">=", "<~", ">~", "<", ">", "=", "~")
WORLD_RE = re.compile(r"(?P<name>[A-Za-z0-9][A-Za-z0-9._+-]*)(?P<tag>@[A-Za-z0-9._+-]+)?"
                      r"(?:(?P<op><=|>=|<~|>~|<|>|=|~)(?P<version>[^\s]+))?")
_WORLD_FIX = ("write package names as apk knows them (letters, digits, '.', '_', '+', '-'; starting with a letter "
              "or digit), one per argument, optionally with a version: name=1.2-r0, name>=1.2, name~1.2")


def check_world_entry(token: str) -> str:
    """One ``etc/apk/world`` entry: ``name[@tag][OP version]``; anything else is refused."""
    if len(token) > 255:
        raise InputError(f"package name {excerpt(token, 40)} is longer than 255 characters", _WORLD_FIX)
    m = WORLD_RE.fullmatch(token)
    if m is None:
        raise InputError(f"{excerpt(token)} is not a package name apk accepts in etc/apk/world "
                         "(an invalid entry makes apk drop it and every entry after it)", _WORLD_FIX)
    version = m.group("version")
    if version is not None:
        if not VERSION_RE.fullmatch(version):
            raise InputError(f"{excerpt(token)}: {excerpt(version)} is not an apk version "
                             "(digits and dots, then optionally a letter, _suffix, -rN)", _WORLD_FIX)
        if any(len(run) >= 18 for run in re.findall(r"[0-9]+", version)):
            raise InputError(f"{excerpt(token)}: a number in the version has 18 digits or more (apk 2.14 refuses it)",
                             _WORLD_FIX)
    return token


def world_name(token: str) -> str:
    """The package name of a world entry (without ``@tag`` and constraint)."""
    m = WORLD_RE.fullmatch(token)
    return m.group("name") if m else token


#: lbu.list entries: relative paths of printable, blank-free characters (globs allowed)
_LBU_PATH_RE = re.compile(r"[A-Za-z0-9._+@%,:=~*?\[\]-]+(?:/[A-Za-z0-9._+@%,:=~*?\[\]-]+)*/?")


def check_lbu_path(path: str, *, absolute_ok: bool = False) -> str:
    """An ``lbu include``/``exclude`` path for ``lbu.list``: relative to ``/``, no ``..``, one line, no blanks.

    ``absolute_ok`` (the ``lbu include`` command line, which strips the leading ``/`` itself): ``/etc``
    is accepted too. Returns the path as written into ``lbu.list`` (relative).
    """
    fix = ("give a path relative to / (e.g. home/lab or etc/ssh), without '..', blanks or control characters; "
           "for a name with blanks include its folder")
    p = path
    if p.startswith("/"):
        if not absolute_ok:
            raise InputError(f"lbu include/exclude path {excerpt(path)} must be relative to / "
                             f"(write {excerpt(path.lstrip('/'))})", fix)
        p = p.lstrip("/")
    if not p or not _LBU_PATH_RE.fullmatch(p):
        raise InputError(f"lbu include/exclude path {excerpt(path)} cannot be written as one lbu.list line", fix)
    if ".." in p.split("/") or p in (".", "./"):
        raise InputError(f"lbu include/exclude path {excerpt(path)} must be relative to / without '..'", fix)
    return p


_URL_RE = re.compile(r"(?:https?|ftp)://[A-Za-z0-9.-]+(?::[0-9]{1,5})?(?:/[A-Za-z0-9._~%+,=@:-]*)*/?")
_LOCAL_REPO_RE = re.compile(r"/[A-Za-z0-9._+@%,=:-]+(?:/[A-Za-z0-9._+@%,=:-]+)*/?")


def check_repository(url: str) -> str:
    """A repository base for ``etc/apk/repositories``: an http(s)/ftp URL or an absolute path, one line."""
    if len(url) > 1024 or not (_URL_RE.fullmatch(url) or _LOCAL_REPO_RE.fullmatch(url)):
        raise InputError(f"repository {excerpt(url)} is not one URL (http://, https://, ftp://) or absolute path "
                         "without blanks or control characters", "e.g. https://dl-cdn.alpinelinux.org/alpine/v3.20")
    return url


_DEVICE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_device_name(name: str, what: str = "LBU media") -> str:
    """A device name as in ``/dev/<name>`` and ``/media/<name>`` (``sda4``, ``vda4``, ``nvme0n1p4``)."""
    if not _DEVICE_RE.fullmatch(name) or ".." in name:
        raise InputError(f"bad {what} {excerpt(name)}", "give a device name such as sda4, vda4 or nvme0n1p4")
    return name


_UUID_RE = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"
                      r"|[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}")


def check_fs_uuid(uuid: str) -> str:
    """A filesystem UUID for an fstab ``UUID=`` field (ext4: 8-4-4-4-12 hex; FAT: XXXX-XXXX)."""
    if not _UUID_RE.fullmatch(uuid):
        raise InputError(f"media UUID {excerpt(uuid)} is not a filesystem UUID",
                         "copy it from `blkid -s UUID -o value /dev/<media>` (ext4: 8-4-4-4-12 hex digits)")
    return uuid


_HOST_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def check_hostname(name: str) -> str:
    if not _HOST_RE.fullmatch(name):
        raise InputError(f"bad hostname {excerpt(name)}", "use letters, digits and '-' (max 63)")
    return name


def check_domain(name: str) -> str:
    labels = name.split(".")
    if len(name) > 253 or not all(_HOST_RE.fullmatch(x) for x in labels):
        raise InputError(f"bad domain {excerpt(name)}", "use dot-separated labels of letters, digits and '-'")
    return name


def check_word(value: str, what: str, pattern: str = r"[A-Za-z0-9._/+-]+") -> str:
    """A single word for a configuration value (no blanks, quotes or control characters)."""
    if not re.fullmatch(pattern, value):
        raise InputError(f"{what} {excerpt(value)} is not a single word of letters, digits and . _ / + -",
                         f"give a valid {what}")
    return value
