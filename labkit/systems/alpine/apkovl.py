"""A declarative apkovl: a dataclass in, a byte-reproducible ``<hostname>.apkovl.tar.gz`` out.

Entry names, owners and modes follow the real ``lbu commit`` archive (see
``tests/fixtures/alpine-3.20.3/alpinelab.apkovl.tar.gz``): relative ``etc/...`` paths, root:root
0644 files, ``etc/shadow`` root:shadow 0640, ``etc/lbu/`` as a 0755 directory entry, the apk cache
as a 0777 symlink to ``/media/<media>/cache``. Entries are sorted and every mtime is fixed.

It carries the OpenRC runlevel links a diskless ``setup-alpine`` system commits (see
:func:`runlevel_links`): with an apkovl present, mkinitfs's initramfs adds no service by itself, so an
apkovl without them boots without modloop, hostname or networking. And it refuses an apkovl nobody can
log in to (root locked, no key, no user that can log in) unless ``no_login`` says it is a
measurement-only overlay — the Alpine twin of the NixOS lock-out (``labkit.systems.nixos.config``).
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
from labkit.systems.nixos.hashes import SHA512_RE

DEFAULT_WORLD = ("alpine-base",)
DEFAULT_INTERFACES = "auto lo\niface lo inet loopback\n\nauto eth0\niface eth0 inet dhcp\n"
PROBE_NAME = "labkit-probe.start"
_HASH_RES = {
    "sha512crypt": SHA512_RE,  # the NixOS rules (labkit.systems.nixos.hashes), rounds range checked below
    "sha256crypt": re.compile(r"^\$5\$(rounds=\d+\$)?[./A-Za-z0-9]{1,16}\$[./A-Za-z0-9]{43}$"),
    "bcrypt": re.compile(r"^\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}$"),
}
_LOCKED = {"*", "!", "!!"}
_NAME_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_SIZE_RE = re.compile(r"\d{1,15}[kmgKMG%]?")
_DATA_SPEC_RE = re.compile(r"LABEL=[A-Za-z0-9_.-]{1,16}|UUID=[0-9a-fA-F-]{8,36}|/dev/[a-z0-9]{1,32}")
_SERVICE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
RUNLEVELS = ("sysinit", "boot", "default", "shutdown")

# -- OpenRC runlevels ---------------------------------------------------------------------------------
# Sources: MK310 = alpinelinux/mkinitfs@5628e3d (3.10.1), MK313 = @5e9c5e6 (3.13.0),
# AC = alpinelinux/alpine-conf@4d39126 (3.18.1), the versions of Alpine 3.20.
#: What the initramfs adds with ``rc_add`` (``ln -sf /etc/init.d/$1 $sysroot/etc/runlevels/$2/$1``, MK310
#: initramfs-init.in l.89-93) when there is no apkovl or the apkovl carries ``etc/.default_boot_services``
#: (MK310 l.781-815: the list is l.783-797; the same in MK313 l.916-950). Its ``firstboot`` (default) is
#: left out: it deletes its own links the first time it runs (aports main/openrc/firstboot.initd), so no
#: committed apkovl has it.
INITRAMFS_DEFAULT_SERVICES: tuple[tuple[str, str], ...] = (
    ("sysinit", "devfs"), ("sysinit", "dmesg"), ("sysinit", "mdev"), ("sysinit", "hwdrivers"), ("sysinit", "modloop"),
    ("boot", "modules"), ("boot", "sysctl"), ("boot", "hostname"), ("boot", "bootmisc"), ("boot", "syslog"),
    ("shutdown", "mount-ro"), ("shutdown", "killprocs"), ("shutdown", "savecache"),
)
#: Added by the initramfs on every diskless boot, outside that condition (MK310 l.895-899, MK313 l.1030-1034):
#: ``hwclock`` (``swclock`` on a machine without an RTC). A running system has the link, so lbu commits it.
INITRAMFS_CLOCK_SERVICE = ("boot", "hwclock")
#: ``setup-alpine`` (AC setup-alpine.in l.229-241): ``rc-update add networking boot``, ``seedrng boot``, and
#: ``crond`` in the current runlevel (``default`` from a login shell; ``acpid`` only with /dev/input/event0).
SETUP_ALPINE_SERVICES: tuple[tuple[str, str], ...] = (("boot", "networking"), ("boot", "seedrng"), ("default", "crond"))
#: ``setup-sshd`` (AC setup-sshd.in l.161): ``rc-update add sshd default`` for openssh (dropbear: dropbear).
SSH_SERVERS = {"openssh": "sshd", "openssh-server": "sshd", "dropbear": "dropbear"}
#: The services whose absence the audit reports (labkit.systems.alpine.audit): the initramfs defaults plus
#: networking, i.e. what a real Alpine boots without when an apkovl lacks the links.
EXPECTED_SERVICES: tuple[tuple[str, str], ...] = (*INITRAMFS_DEFAULT_SERVICES, ("boot", "networking"))
#: Why labkit does not write ``etc/.default_boot_services`` (the marker that makes the initramfs add the
#: defaults itself, MK310 l.781): nothing in alpine-conf or lbu ever writes it (``git log -S`` is empty
#: there), so a ``setup-alpine`` system's apkovl carries the explicit links instead; with the marker the set
#: depends on the mkinitfs version of the boot media (3.11 changed the tiny-cloud rules) and includes
#: ``firstboot``; the marker is re-applied on every boot until an ``lbu commit`` drops it (the initramfs
#: removes it from the running system only, MK310 l.815), so the first commit changes the apkovl; and the
#: links are visible in ``lbu status``/``labkit alpine audit``. The links are what lbu would save.
DEFAULT_BOOT_SERVICES_MARKER = "etc/.default_boot_services"


HASH_FIX = ("make one with: openssl passwd -6 > FILE  (or mkpasswd -m sha-512), pass the file "
            "(--root-password-hash-file / --user-password-hash-file); '!' in the file locks the account")


def check_password_hash(value: str, who: str) -> str:
    """Accept a crypt(3) hash musl can verify (sha512/sha256/bcrypt) or a locked marker; never plaintext.

    musl's ``crypt()`` (Alpine) knows ``$6$``, ``$5$``, ``$2b$`` and MD5, but not yescrypt (``$y$``), the
    default of ``mkpasswd`` on Debian and of NixOS: such a hash would lock the account. The message never
    echoes the value (a malformed "hash" may be a password).
    """
    if value in _LOCKED or any(r.fullmatch(value) for r in _HASH_RES.values()):
        m = SHA512_RE.match(value)
        rounds = m.group("rounds") if m else None
        if rounds is not None and not 1000 <= int(rounds) <= 999_999_999:
            raise InputError(f"the SHA-512 password hash of {who} has rounds={rounds}, outside 1000..999999999",
                             HASH_FIX)
        return value
    if value.startswith("$y$") or value.startswith("$7$"):
        problem = f"the password hash of {who} is yescrypt/scrypt, which musl's crypt() on Alpine cannot verify"
    elif value.startswith("$"):
        problem = f"the password hash of {who} is not a well-formed sha512/sha256/bcrypt crypt(3) hash"
    else:
        problem = f"the password of {who} looks like plaintext; an apkovl must carry only a hash"
    raise InputError(problem, HASH_FIX)


def read_password_hash_file(path: Path, who: str) -> str:
    """A hash written alone in a file (one trailing newline allowed), checked for musl: hashes never
    come from the command line (shell history, ``ps``). Same file rules as the NixOS side
    (:func:`labkit.systems.nixos.hashes.read_hash_file`)."""
    from labkit.core.files import read_user_text

    text = read_user_text(path, what=f"the password hash file for {who}", limit=4096, fix=HASH_FIX)
    if text.endswith("\n"):
        text = text[:-1]
    if text != text.strip() or "\n" in text:
        raise InputError(f"the password hash file {path} for {who} has surrounding blanks or several lines",
                         HASH_FIX)
    if not text:
        raise InputError(f"the password hash file {path} for {who} is empty", HASH_FIX)
    return check_password_hash(text, who)


@dataclass(frozen=True)
class AlpineLogin:
    """How the owner of a real disk logs in to the Alpine labkit installs there: root's crypt(3) hash (from
    a file: :func:`read_password_hash_file`) and/or OpenSSH public keys for root."""

    root_password_hash: str = field(default="*", repr=False)  # never shown
    ssh_keys: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_password_hash(self.root_password_hash, "root")
        if self.root_password_hash in _LOCKED and not self.ssh_keys:
            raise InputError("nobody could log in to the Alpine installed on this disk: root has no password hash "
                             "and no SSH key",
                             "set alpine_root_password_hash_file (openssl passwd -6 > FILE) or alpine_ssh_keys "
                             "(--alpine-root-password-hash-file / --alpine-ssh-key)")


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
    #: the fstab spec of the persistent /data partition (e.g. ``LABEL=data``), mounted read-write by OpenRC's
    #: ``localmount`` (``mount -a``; ``bootmisc`` needs it) so the probe can save its bundle there; None: no /data
    data: str | None = None
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
    #: write the runlevel links a diskless setup-alpine system commits (:func:`runlevel_links`); False
    #: leaves only ``local`` (and the SSH server): a real Alpine then boots without modloop, hostname, ...
    runlevels: bool = True
    extra_services: tuple[tuple[str, str], ...] = ()  # (runlevel, service), e.g. ("default", "chronyd")
    #: a measurement-only apkovl that nobody can log in to (the lab's): lifts the lock-out refusal
    no_login: bool = False

    def __post_init__(self) -> None:
        # every value is checked by the rules of the file it lands in (see labkit.systems.alpine.rules)
        check_hostname(self.hostname)
        check_domain(self.domain)
        check_device_name(self.media)
        if self.media_uuid is not None:
            check_fs_uuid(self.media_uuid)
        if self.data is not None and not _DATA_SPEC_RE.fullmatch(self.data):
            raise InputError(f"bad /data fstab spec {self.data!r}", "use LABEL=data, UUID=<fs uuid> or /dev/<node>")
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
        for level, svc in self.extra_services:
            if level not in RUNLEVELS or not _SERVICE_RE.fullmatch(svc):
                raise InputError(f"bad service {svc!r} in runlevel {level!r}",
                                 f"use a service name (letters, digits, . _ -) and one of {', '.join(RUNLEVELS)}")
        if not self.no_login:
            self._check_login()

    def ssh_server(self) -> str | None:
        """The OpenRC service of the SSH server the world installs (sshd, dropbear), if any."""
        names = {w.split("=")[0].split("<")[0].split(">")[0].split("~")[0] for w in self.world}
        return next((svc for pkg, svc in SSH_SERVERS.items() if pkg in names), None)

    def _check_login(self) -> None:
        """Refuse an apkovl nobody can log in to (see the module docstring)."""
        passwords = [n for n, h in (("root", self.root_password_hash),
                                    *((u.name, u.password_hash) for u in self.users)) if h not in _LOCKED]
        keys = [n for n, k in (("root", self.root_ssh_keys), *((u.name, u.ssh_keys) for u in self.users)) if k]
        if passwords:
            return
        if keys and self.ssh_server() is None:
            raise InputError(
                f"only SSH keys ({', '.join(keys)}) could log in, but the world installs no SSH server "
                "(openssh or dropbear): nobody could log in",
                "add openssh to --world, or give a password hash file (--root-password-hash-file)")
        if not keys:
            raise InputError(
                "nobody could log in: root is locked and has no SSH key, and no user has a password or a key "
                "(the Alpine twin of the NixOS lock-out)",
                "give --root-password-hash-file FILE (openssl passwd -6 > FILE), --root-ssh-key KEY.pub with "
                "openssh in --world, or --user NAME with --user-password-hash-file; for a measurement-only "
                "apkovl pass --no-login")

    @property
    def filename(self) -> str:
        return f"{self.hostname}.apkovl.tar.gz"

    def kernel_args(self) -> list[str]:
        return [f"rootflags=size={self.root_size}"] if self.root_size else []


def runlevel_links(spec: ApkovlSpec) -> list[tuple[str, str]]:
    """``(runlevel, service)`` of every ``etc/runlevels/<lvl>/<svc> -> /etc/init.d/<svc>`` link: what an
    ``lbu commit`` saves after a diskless ``setup-alpine``: the initramfs defaults, the
    clock, networking/seedrng/crond, the SSH server when keys are given, ``local`` when the overlay carries
    ``etc/local.d`` scripts (labkit's probe; nothing enables it on Alpine), plus ``extra_services``.
    lbu saves these links: they are symlinks under ``etc`` (apk's default protected path ``+etc``,
    apk-tools v2.14.4 src/database.c l.1608-1616) that no package owns (aports main/openrc/APKBUILD
    removes ``etc/runlevels/*/*`` from the package)."""
    links: list[tuple[str, str]] = []
    if spec.runlevels:
        links += [*INITRAMFS_DEFAULT_SERVICES, INITRAMFS_CLOCK_SERVICE, *SETUP_ALPINE_SERVICES]
    keys = spec.root_ssh_keys or any(u.ssh_keys for u in spec.users)
    server = spec.ssh_server()
    if keys and server:
        links.append(("default", server))
    if spec.probe is not None or any(p.startswith("etc/local.d/") for p, _d, _m in spec.extra_files):
        links.append(("default", "local"))
    links += list(spec.extra_services)
    return list(dict.fromkeys(links))


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
    if spec.data:
        # busybox mount (Alpine 3.20: BusyBox 1.36.1) resolves LABEL=/UUID= and, with nofail, lets `mount -a`
        # go on when the partition is absent (checked in the 3.20.3 minirootfs's busybox: the applet has both)
        fstab += f"{spec.data}\t/data\text4\trw,noatime,nofail 0 0\n"
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
        *([Entry("data", "dir", 0o755)] if spec.data else []),
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
    # absolute links, as rc-update (OpenRC librc.c rc_service_add) and the initramfs's rc_add make them
    out += [Entry(f"etc/runlevels/{level}/{svc}", "symlink", 0o777, target=f"/etc/init.d/{svc}")
            for level, svc in runlevel_links(spec)]
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
