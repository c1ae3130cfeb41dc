"""The real-media lab path: an Alpine ISO → the lab image's Alpine partition, with no interactive step.

Checksum (the given sha256 or the published ``.sha256`` beside the ISO; a mismatch is refused),
extraction without mounting (:func:`labkit.systems.alpine.extract.extract_iso`: ``apks/`` with
``.boot_repository``, ``boot/*-<flavor>``, no loader files), labkit's declarative apkovl
(:func:`labkit.rehearsal.build.lab_apkovl_spec`: hostname, world checked against the ISO's APKINDEX,
LBU media ``vda4``, the probe as ``etc/local.d/labkit-probe.start`` with the runlevel link,
``etc/labkit-os`` = ``alpine``), ``boot/refind_linux.conf`` with the serial console, and the rEFInd
manual stanza booting ``boot/vmlinuz-<flavor>`` + ``boot/initramfs-<flavor>`` with Alpine's own
kernel line. The same code runs on labkit's rehearsal ISO (``tests/rehearsal_alpine_iso.py``):
then the guest reports ``alpine-rehearsal`` and every record says *rehearsal*.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from labkit.core.errors import InputError
from labkit.core.runner import Mode, Runner, atomic_write_text
from labkit.rehearsal.build import LAB_MEDIA, lab_apkovl_spec
from labkit.rehearsal.payloads import BASE_PACKAGE
from labkit.rehearsal.types import BootEntry, GuestBuild, PackageInfo
from labkit.systems.alpine.apkindex import Index, predict, read_apkindex
from labkit.systems.alpine.apkovl import AlpineLogin, write_apkovl
from labkit.systems.alpine.extract import extract_iso, kernel_options, refind_linux_conf
from labkit.systems.alpine.media import check_iso, is_rehearsal_release

REAL_TITLE = "Alpine Linux"
REHEARSAL_TITLE = "Alpine-style rehearsal ISO"
DEFAULT_REAL_WORLD = ("alpine-base",)


@dataclass(frozen=True)
class AlpineMedia:
    """What the real-media path used and built (recorded in environment.json)."""

    iso: Path
    sha256: str
    sha256_source: str  # "given" or the .sha256 sidecar's path
    rehearsal: bool  # labkit's rehearsal ISO (not Alpine Linux)
    release: str
    flavor: str
    world: tuple[str, ...]
    world_source: str  # "user" | "iso repository (rehearsal)" | "default (alpine-base)"
    predicted_download_bytes: int
    predicted_installed_bytes: int
    prepare_s: float
    files: tuple[str, ...] = field(default=())

    def record(self) -> dict[str, object]:
        return {
            "iso": str(self.iso), "sha256": self.sha256, "sha256_source": self.sha256_source,
            "rehearsal_iso": self.rehearsal, "release": self.release, "flavor": self.flavor,
            "world": list(self.world), "world_source": self.world_source,
            "predicted_download_bytes": self.predicted_download_bytes,
            "predicted_installed_bytes": self.predicted_installed_bytes,
            "prepare_s": round(self.prepare_s, 3), "partition_files": list(self.files),
        }


def _index(tree: Path) -> Index:
    path = tree / "apks" / "x86_64" / "APKINDEX.tar.gz"
    if not path.is_file():
        raise InputError(f"the ISO's repository has no apks/x86_64/APKINDEX.tar.gz ({path} is missing)",
                         "use an official Alpine x86_64 ISO")
    return Index(read_apkindex(path))


def choose_world(index: Index, world: Sequence[str], rehearsal: bool) -> tuple[tuple[str, ...], str]:
    """The apkovl's world: the user's, else every package of a rehearsal ISO's repository (the set it
    was built with, as the rehearsal lab loads it), else Alpine's ``alpine-base``."""
    if world:
        return tuple(dict.fromkeys(world)), "user"
    if rehearsal:
        names = sorted(n for n in index.packages if n != BASE_PACKAGE)
        return ("alpine-base", *names), "iso repository (rehearsal)"
    return DEFAULT_REAL_WORLD, "default (alpine-base)"


def prepare_alpine_partition(
    runner: Runner,
    iso: Path,
    tree: Path,
    *,
    sha256: str | None = None,
    world: Sequence[str] = (),
    hostname: str = "alpinelab",
    flavor: str | None = None,
    root_size: str | None = None,
    media: str = LAB_MEDIA,
    login: AlpineLogin | None = None,
) -> tuple[GuestBuild, AlpineMedia]:
    """Fill ``tree`` (the Alpine partition's root) from ``iso``; return its boot entry and the record."""
    iso = Path(iso)
    started = time.monotonic()
    with runner.step(f"alpine media: checksum of {iso.name}"):
        digest, source = check_iso(iso, sha256)
        runner.note(f"sha256 {digest} matches ({source})")
    with runner.step("alpine media: extract (xorriso, no mount)"):
        info = extract_iso(runner, iso, tree, flavor=flavor)
    flavor = flavor or info.flavors[0]
    rehearsal = is_rehearsal_release(info.release)
    if runner.mode is Mode.PLAN:
        raise InputError("the real-media lab path needs the extracted repository to pick the world",
                         "run it in apply mode (labkit lab)")
    index = _index(tree)
    names, world_source = choose_world(index, world, rehearsal)
    if login is not None and login.ssh_keys and "openssh" not in names:
        if index.lookup("openssh") is None:  # the diskless boot would drop it silently (APK_FORCE_BROKEN_WORLD)
            raise InputError(f"{iso.name} does not carry openssh, needed for the SSH keys",
                             "use the extended ISO (it carries openssh), or log in with a password hash file")
        names = (*names, "openssh")
    prediction = predict(index, names)  # refuses a world naming a package the ISO lacks
    title = REHEARSAL_TITLE if rehearsal else REAL_TITLE
    with runner.step("alpine media: apkovl and boot entry"):
        spec = lab_apkovl_spec(hostname, [n for n in names if n != "alpine-base"], os_id="alpine",
                               media=media, root_size=root_size, login=login)

        ovl = write_apkovl(spec, tree / spec.filename)
        atomic_write_text(tree / "boot" / "refind_linux.conf",
                          refind_linux_conf(flavor, lab=True, extra=tuple(spec.kernel_args()), title=title))
    entry = _entry(title, flavor, tuple(spec.kernel_args()))
    packages = tuple(PackageInfo(p.name, p.version, p.installed_size, p.size, f"apks/x86_64/{p.name}-{p.version}.apk")
                     for p in prediction.packages)
    kernel_version = f"{flavor} from {'the labkit rehearsal ISO' if rehearsal else 'Alpine ' + info.release}"
    files = (("apkovl", ovl.name), ("kernel", entry.kernel), ("initrd", entry.initrd), ("repository", "apks"),
             ("iso", str(iso)))
    guest = GuestBuild("alpine-rehearsal" if rehearsal else "alpine", entry, packages, kernel_version, files)
    kept = tuple(sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*") if p.is_file()
                        and not p.relative_to(tree).as_posix().startswith("apks/x86_64/")))
    record = AlpineMedia(iso.resolve(), digest, source, rehearsal, info.release, flavor, names, world_source,
                         prediction.download_bytes, prediction.installed_bytes, time.monotonic() - started, kept)
    runner.note(f"Alpine partition from {'REHEARSAL ISO ' if rehearsal else ''}{iso.name}: world "
                f"{' '.join(names)} ({len(packages)} packages, {prediction.installed_bytes / 2**20:.1f} MiB in RAM)")
    return guest, record


def _entry(title: str, flavor: str, kernel_args: tuple[str, ...]) -> BootEntry:
    """rEFInd's stanza for Alpine from the ISO: its own kernel and initramfs, Alpine's diskless line."""
    return BootEntry(title=f"{title} ({flavor})", partition_role="alpine", kernel=f"boot/vmlinuz-{flavor}",
                     initrd=f"boot/initramfs-{flavor}", cmdline=kernel_options(lab=True, extra=kernel_args))


#: the ISO a plan names when none is chosen (the post uses the extended ISO: it carries the packages offline)
ISO_PLACEHOLDER = "<alpine_iso: alpine-extended-3.20.3-x86_64.iso>"


def plan_alpine_partition(tree: Path, *, world: Sequence[str] = (), hostname: str = "alpinelab",
                          media: str = LAB_MEDIA, login: AlpineLogin | None = None) -> BootEntry:
    """A plan without an ISO: stage the small files :func:`prepare_alpine_partition` writes beside the ISO's
    (the apkovl and boot/refind_linux.conf for the official ISO's ``lts`` kernel) and return its entry."""
    spec = lab_apkovl_spec(hostname, [n for n in world if n != "alpine-base"], os_id="alpine", media=media,
                           login=login)
    tree.mkdir(parents=True, exist_ok=True)
    write_apkovl(spec, tree / spec.filename)
    atomic_write_text(tree / "boot" / "refind_linux.conf",
                      refind_linux_conf("lts", lab=True, extra=tuple(spec.kernel_args()), title=REAL_TITLE))
    return _entry(REAL_TITLE, "lts", tuple(spec.kernel_args()))


def iso_entry(runner: Runner, iso: Path, *, hostname: str = "alpinelab", media: str = LAB_MEDIA,
              root_size: str | None = None) -> tuple[BootEntry, bool]:
    """The boot entry :func:`prepare_alpine_partition` will write, read off the ISO without extracting it
    (its release and kernel flavour, with xorriso); and whether it is labkit's rehearsal ISO."""
    from labkit.systems.alpine.extract import inspect_iso

    info = inspect_iso(runner, Path(iso))
    rehearsal = is_rehearsal_release(info.release)
    spec = lab_apkovl_spec(hostname, [], os_id="alpine", media=media, root_size=root_size)
    return _entry(REHEARSAL_TITLE if rehearsal else REAL_TITLE, info.flavors[0], tuple(spec.kernel_args())), rehearsal
