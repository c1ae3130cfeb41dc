"""A declarative apkovl: a dataclass in, a byte-reproducible ``<hostname>.apkovl.tar.gz`` out.

Entry names, owners and modes follow the real ``lbu commit`` archive (see
``tests/fixtures/alpine-3.20.3/alpinelab.apkovl.tar.gz``): relative ``etc/...`` paths, root:root
0644 files, ``etc/shadow`` root:shadow 0640, ``etc/lbu/`` as a 0755 directory entry, the apk cache
as a 0777 symlink to ``/media/<media>/cache``. Entries are sorted and every mtime is fixed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from labkit.core.errors import InputError
from labkit.core.runner import atomic_write_bytes
from labkit.systems.alpine import baselayout as bl
from labkit.systems.alpine.rules import (
    check_device_name,
    check_domain,
    check_fs_uuid,
    check_hostname,
    check_lbu_path,
    check_repository,
    check_word,
    check_world_entry,
)
from labkit.systems.alpine.targz import EPOCH, Entry, targz_bytes

DEFAULT_WORLD = ("alpine-base",)
DEFAULT_INTERFACES = "auto lo\niface lo inet loopback\n\nauto eth0\niface eth0 inet dhcp\n"
PROBE_NAME = "labkit-probe.start"
_HASH_RES = {
    "sha512crypt": re.compile(r"^\$6\$(rounds=\d+\$)?[./A-Za-z0-9]{1,16}\$[./A-Za-z0-9]{86}$"),
    "sha256crypt": re.compile(r"^\$5\$(rounds=\d+\$)?[./A-Za-z0-9]{1,16}\$[./A-Za-z0-9]{43}$"),
    "bcrypt": re.compile(r"^\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}$"),
}
_LOCKED = {"*", "!", "!!"}
_NAME_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_SIZE_RE = re.compile(r"\d{1,15}[kmgKMG%]?")


def check_password_hash(value: str, who: str) -> str:
    """Accept a crypt(3) hash musl can verify (sha512/sha256/bcrypt) or a locked marker; never plaintext."""
    if value in _LOCKED or any(r.fullmatch(value) for r in _HASH_RES.values()):
        return value
    if value.startswith("$y$") or value.startswith("$7$"):
        problem = f"the password hash of {who} is yescrypt/scrypt, which musl's crypt() on Alpine cannot verify"
    elif value.startswith("$"):
        problem = f"the password hash of {who} is not a well-formed sha512/sha256/bcrypt crypt(3) hash"
    else:
        problem = f"the password of {who} looks like plaintext; an apkovl must carry only a hash"
    raise InputError(problem, "make one with: openssl passwd -6  (or mkpasswd -m sha-512), or use '!' to lock")


@dataclass(frozen=True)
class User:
    name: str
    uid: int = 1000
    password_hash: str = field(default="!", repr=False)  # never shown (notebooks display specs)
    gecos: str = ""
    shell: str = "/bin/sh"
    groups: tuple[str, ...] = ()
    ssh_keys: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not _NAME_RE.fullmatch(self.name) or self.name == "root":
            raise InputError(f"bad user name {self.name!r}", "use lower-case letters, digits, '_' or '-'")
        if not 1000 <= self.uid < 60000:
            raise InputError(f"user {self.name}: uid {self.uid} is outside 1000..59999")
        check_password_hash(self.password_hash, f"user {self.name}")
        # /etc/passwd fields: no ':' and one line (busybox reads it with getpwent)
        if any(c in self.gecos for c in ":\n\r\0") or not self.gecos.isprintable():
            raise InputError(f"user {self.name}: the comment {self.gecos!r} holds ':' or a control character",
                             "use plain text without ':'")
        check_word(self.shell, f"user {self.name}'s shell", r"/[A-Za-z0-9._/+-]+")
        for g in self.groups:
            if not _NAME_RE.fullmatch(g):
                raise InputError(f"user {self.name}: bad group name {g!r}", "use groups of alpine-baselayout")


@dataclass(frozen=True)
class ApkovlSpec:
    hostname: str = "alpinelab"
    domain: str = "my.domain"
    interfaces: str = DEFAULT_INTERFACES
    world: tuple[str, ...] = DEFAULT_WORLD
    media: str = "sda4"  # LBU_MEDIA: the partition holding apks/ and the apkovl
    media_uuid: str | None = None  # fstab line for the media by UUID
    media_fs: str = "ext4"
    mirror: str | None = None  # e.g. https://dl-cdn.alpinelinux.org/alpine/v3.20 (main + community)
    lbu_include: tuple[str, ...] = ()
    lbu_exclude: tuple[str, ...] = ()
    apk_cache: bool = True
    backup_limit: int | None = 3
    root_password_hash: str = field(default="*", repr=False)  # never shown
    root_ssh_keys: tuple[str, ...] = ()
    users: tuple[User, ...] = ()
    probe: str | None = None  # a POSIX sh script, installed as etc/local.d/labkit-probe.start
    rc_logger: bool = True
    root_size: str | None = None  # tmpfs root size: goes on the kernel line as rootflags=size=
    extra_files: tuple[tuple[str, bytes, int], ...] = field(default=())

    def __post_init__(self) -> None:
        # every value is checked by the rules of the file it lands in (see labkit.systems.alpine.rules)
        check_hostname(self.hostname)
        check_domain(self.domain)
        check_device_name(self.media)
        if self.media_uuid is not None:
            check_fs_uuid(self.media_uuid)
        check_word(self.media_fs, "media filesystem type", r"[a-z0-9]{1,16}")
        if self.mirror is not None:
            check_repository(self.mirror)
        if self.root_size is not None and not _SIZE_RE.fullmatch(self.root_size):
            raise InputError(f"bad root tmpfs size {self.root_size!r}", "use e.g. 512m, 1g or 75%")
        if self.backup_limit is not None and not 0 <= self.backup_limit <= 1000:
            raise InputError(f"BACKUP_LIMIT {self.backup_limit} is outside 0..1000", "use e.g. 3")
        if not self.world:
            raise InputError("the apk world is empty", "list at least alpine-base")
        for w in self.world:
            check_world_entry(w)
        check_password_hash(self.root_password_hash, "root")
        names = [u.name for u in self.users]
        if len(set(names)) != len(names) or len({u.uid for u in self.users}) != len(names):
            raise InputError(f"duplicate user names or uids in {names}")
        for p in (*self.lbu_include, *self.lbu_exclude):
            check_lbu_path(p)
        if "\0" in self.interfaces:
            raise InputError("the network interfaces text holds a NUL byte")

    @property
    def filename(self) -> str:
        return f"{self.hostname}.apkovl.tar.gz"

    def kernel_args(self) -> list[str]:
        return [f"rootflags=size={self.root_size}"] if self.root_size else []


def _f(path: str, text: str | bytes, mode: int = 0o644, **owner: object) -> Entry:
    data = text.encode() if isinstance(text, str) else text
    return Entry(path, "file", mode, data, **owner)  # type: ignore[arg-type]


def _accounts(spec: ApkovlSpec) -> list[Entry]:
    passwd, group, shadow = bl.PASSWD, bl.GROUP, bl.SHADOW.replace("root:*:", f"root:{spec.root_password_hash}:", 1)
    extra_groups: dict[str, list[str]] = {}
    for u in spec.users:
        passwd += f"{u.name}:x:{u.uid}:{u.uid}:{u.gecos}:/home/{u.name}:{u.shell}\n"
        shadow += f"{u.name}:{u.password_hash}:{EPOCH // 86400}:0:99999:7:::\n"
        for g in u.groups:
            extra_groups.setdefault(g, []).append(u.name)
    known = {ln.split(":")[0] for ln in group.splitlines()}
    unknown = sorted(set(extra_groups) - known)
    if unknown:
        raise InputError(f"unknown groups {unknown}", f"use groups of alpine-baselayout: {sorted(known)}")
    lines = []
    for ln in group.splitlines():
        name, x, gid, members = ln.split(":")
        add = [m for m in extra_groups.get(name, []) if m not in members.split(",")]
        lines.append(f"{name}:{x}:{gid}:{','.join([m for m in members.split(',') if m] + add)}")
    group = "\n".join(lines) + "\n" + "".join(f"{u.name}:x:{u.uid}:\n" for u in spec.users)
    sh = {"gid": bl.SHADOW_GID, "gname": "shadow"}
    return [_f("etc/passwd", passwd), _f("etc/group", group), _f("etc/shadow", shadow, 0o640, **sh)]


def _ssh(home: str, keys: tuple[str, ...], uid: int, name: str) -> list[Entry]:
    for k in keys:
        if "PRIVATE KEY" in k or not re.fullmatch(r"(ssh-|ecdsa-|sk-)\S+ \S+( [^\x00-\x1f\x7f]*)?", k.strip()):
            raise InputError(f"{k[:30]!r}... is not an SSH public key (one line of a .pub file)",
                             "give the line of a .pub file")
    own = {"uid": uid, "gid": uid, "uname": name, "gname": name}
    text = "".join(k.strip() + "\n" for k in keys)
    return [Entry(f"{home}/.ssh", "dir", 0o700, **own), _f(f"{home}/.ssh/authorized_keys", text, 0o600, **own)]  # type: ignore[arg-type]


def lbu_list(spec: ApkovlSpec) -> str:
    inc = list(spec.lbu_include)
    if spec.root_ssh_keys:
        inc.append("root/.ssh")
    inc += [f"home/{u.name}" for u in spec.users]
    inc = list(dict.fromkeys(inc))
    return "".join(f"+{p}\n" for p in inc) + "".join(f"-{p}\n" for p in dict.fromkeys(spec.lbu_exclude))


def entries(spec: ApkovlSpec) -> list[Entry]:
    """Every entry of the apkovl (unsorted; the writer sorts)."""
    repos = [f"/media/{spec.media}/apks"]
    if spec.mirror:
        repos += [f"{spec.mirror.rstrip('/')}/main", f"{spec.mirror.rstrip('/')}/community"]
    fstab = bl.FSTAB_BASE
    if spec.media_uuid:
        fstab += f"UUID={spec.media_uuid}\t/media/{spec.media}\t{spec.media_fs}\tnoauto,ro 0 0\n"
    hosts = (f"127.0.0.1\t{spec.hostname}.{spec.domain} {spec.hostname} localhost.localdomain localhost\n"
             "::1\t\tlocalhost localhost.localdomain\n")
    backup = f"BACKUP_LIMIT={spec.backup_limit}" if spec.backup_limit else "# BACKUP_LIMIT=3"
    out = [
        _f("etc/hostname", spec.hostname + "\n"),
        _f("etc/hosts", hosts),
        _f("etc/network/interfaces", spec.interfaces if spec.interfaces.endswith("\n") else spec.interfaces + "\n"),
        _f("etc/apk/world", "".join(f"{p}\n" for p in sorted(set(spec.world)))),
        _f("etc/apk/repositories", "".join(f"{r}\n" for r in repos)),
        _f("etc/fstab", fstab),
        Entry("etc/lbu", "dir", 0o755),
        _f("etc/lbu/lbu.conf", bl.LBU_CONF.format(media=spec.media, backup=backup)),
        *_accounts(spec),
    ]
    listing = lbu_list(spec)
    if listing:
        out.append(_f("etc/apk/protected_paths.d/lbu.list", listing))
    if spec.apk_cache:
        out.append(Entry("etc/apk/cache", "symlink", 0o777, target=f"/media/{spec.media}/cache"))
    if spec.rc_logger:
        out.append(_f("etc/rc.conf", '# written by labkit: OpenRC defaults, plus the boot log\nrc_logger="YES"\n'))
    if spec.probe is not None:
        out.append(_f(f"etc/local.d/{PROBE_NAME}", spec.probe, 0o755))
        out.append(Entry("etc/runlevels/default/local", "symlink", 0o777, target="/etc/init.d/local"))
    if spec.root_ssh_keys:
        out += _ssh("root", spec.root_ssh_keys, 0, "root")
    for u in spec.users:
        out.append(Entry(f"home/{u.name}", "dir", 0o755, uid=u.uid, gid=u.uid, uname=u.name, gname=u.name))
        if u.ssh_keys:
            out += _ssh(f"home/{u.name}", u.ssh_keys, u.uid, u.name)
    out += [_f(p, data, mode) for p, data, mode in spec.extra_files]
    return out


def build_apkovl(spec: ApkovlSpec) -> bytes:
    return targz_bytes(entries(spec))


def write_apkovl(spec: ApkovlSpec, out: Path, *, make_parents: bool = True) -> Path:
    """Write the apkovl to ``out`` (a file, or a directory that gets ``<hostname>.apkovl.tar.gz``).

    An apkovl that carries a password hash (its ``etc/shadow``) is written readable by root only.
    ``make_parents=False`` (a path the user named): a missing folder is refused, not created."""
    target = out / spec.filename if out.is_dir() else out
    hashes = [spec.root_password_hash, *(u.password_hash for u in spec.users)]
    secret = any(h not in _LOCKED for h in hashes)
    atomic_write_bytes(target, build_apkovl(spec), mode=0o600 if secret else 0o644, make_parents=make_parents,
                       what="the apkovl")
    return target
