"""Probe bundles shaped like the ones real NixOS and real Alpine would give, for the metric tests.

Nothing here was captured from a real boot (this machine cannot download either system); every line is
built from a real sample in tests/fixtures or from the upstream code that prints it, named next to it:

- kernel: ``Run /init as init process`` — linux init/main.c run_init_process()
  (``pr_info("Run %s as init process\\n", init_filename)``).
- NixOS scripted stage 1 — nixpkgs nixos/modules/system/boot/stage-1-init.sh: the kmsg mirror writes
  ``<7>stage-1-init: [$(date)] $line`` (L142-156); ``loading module $(basename $i)...`` (L240),
  ``running udev...`` (L247), ``mounting $device on $mountPoint...`` (L391); nothing is printed before
  ``exec ... switch_root`` (L639).
- NixOS stage 2 — stage-2-init.sh: ``echo "booting system configuration $systemConfig" > /dev/kmsg``
  (L60, before its mirror), then the mirror ``<7>stage-2-init: $line`` (L116) with
  ``running activation script...`` (L136); it execs systemd (L158).
- systemd as PID 1 — src/core/main.c log_execution_mode(): ``systemd <version> running in system mode
  (<features>)``, ``Detected architecture x86-64.``, and in an initrd ``Running in initrd.``; PID 1 logs
  to kmsg as ``systemd[1]: ...``.
- ``systemd-analyze time`` — src/analyze/analyze-time-data.c L193-224 (one term per timestamp that is
  set; GRUB sets no LoaderTime* variable, so no firmware/loader term) and the real samples in
  tests/fixtures/nixos/systemd-analyze-samples.txt.
- ``nix path-info -rS`` — nix src/nix/path-info.cc (path, padding, ``\\t%11d``); the sample in
  tests/fixtures/nixos/systemd-analyze-samples.txt.
- Alpine initramfs kmsg lines — tests/fixtures/alpine-3.20.3/initramfs-kmsg-messages.txt (mkinitfs
  3.13.0), verbatim, re-timed.
- OpenRC ``/var/log/rc.log`` — OpenRC src/openrc/rc-logger.c l.104-112 (``"\\nrc %s logging %s at %s\\n"``
  with asctime()), libeinfo ebegin/eend (`` * Starting x ...`` / `` [ ok ]``, the status on its own line
  once rc_logger strips eend's cursor movement).
- ``/lib/apk/db/installed`` — tests/fixtures/alpine-3.20.3/lib-apk-db-installed, filtered as the probe
  does (P/V/S/I lines and blank lines); ``df -k`` and ``/proc/meminfo`` — busybox-free-df-meminfo.txt and
  the synth module's meminfo.

Lines that no metric reads (kernel banners, the EXT4 mount line, ``Hostname set to``, the ``uname -a``
and os-release texts) are illustrative: they give the log its shape, not a fact a test relies on.
"""

from __future__ import annotations

import synth
from paths import ALPINE_FIXTURES

from labkit.measure.bundle import Bundle, SerialLine, extract_bundles

NIXOS_TOPLEVEL = "/nix/store/zqamz3cz4dbzfihki2mk7a63mbkxz9xq-nixos-system-labkit-nixos-24.11.20241128.3090c65"
SYSTEMD_FEATURES = "(+PAM +AUDIT -SELINUX +APPARMOR +IMA +SMACK +SECCOMP +GCRYPT -GNUTLS +OPENSSL +ACL +BLKID)"
DATE = "Fri Nov 29 10:00:01 UTC 2024"


def _line(t: float, text: str) -> str:
    return f"[{t:12.6f}] {text}"


def nixos_dmesg(*, kernel: float = 1.20, stage2: float | None = 3.60, systemd: float = 5.00,
                systemd_initrd: float | None = None) -> str:
    """A NixOS boot's kernel log: scripted stage 1 (default) or, with ``systemd_initrd``, systemd stage 1
    (then ``stage2`` should be None: stage 2 runs inside the initrd and writes to its journal)."""
    lines = [
        _line(0.0, "Linux version 6.6.63 (nixbld@localhost) (gcc (GCC) 13.3.0, GNU ld (GNU Binutils) 2.43.1) "
                   "#1-NixOS SMP PREEMPT_DYNAMIC Fri Nov 22 14:38:37 UTC 2024"),
        _line(0.0, f"Command line: BOOT_IMAGE=(hd0,gpt2)//kernels/x-linux-6.6.63-bzImage init={NIXOS_TOPLEVEL}/init "
                   "console=tty0 console=ttyS0,115200n8 loglevel=4"),
        _line(kernel - 0.01, "Freeing unused kernel image (initmem) memory: 3424K"),
        _line(kernel, "Run /init as init process"),
    ]
    if systemd_initrd is None:
        lines += [
            _line(kernel + 0.10, f"stage-1-init: [{DATE}] loading module virtio_blk..."),
            _line(kernel + 0.20, f"stage-1-init: [{DATE}] running udev..."),
            _line(kernel + 0.90, f"stage-1-init: [{DATE}] mounting tmpfs on /..."),
            _line(kernel + 1.00, f"stage-1-init: [{DATE}] mounting /dev/disk/by-label/nix on /nix..."),
            _line(kernel + 1.10, "EXT4-fs (vda3): mounted filesystem 1c2d3e4f-0000-4000-8000-000000000003 r/w with "
                                 "ordered data mode. Quota mode: none."),
        ]
    else:
        lines += [
            _line(systemd_initrd, f"systemd[1]: systemd 256.8 running in system mode {SYSTEMD_FEATURES}"),
            _line(systemd_initrd, "systemd[1]: Detected virtualization kvm."),
            _line(systemd_initrd, "systemd[1]: Detected architecture x86-64."),
            _line(systemd_initrd, "systemd[1]: Running in initrd."),
            _line(systemd_initrd + 0.01, "systemd[1]: Hostname set to <labkit-nixos>."),
        ]
    if stage2 is not None:
        lines += [
            _line(stage2, f"booting system configuration {NIXOS_TOPLEVEL}"),
            _line(stage2 + 0.05, "stage-2-init: running activation script..."),
        ]
    lines += [
        _line(systemd, f"systemd[1]: systemd 256.8 running in system mode {SYSTEMD_FEATURES}"),
        _line(systemd, "systemd[1]: Detected virtualization kvm."),
        _line(systemd, "systemd[1]: Detected architecture x86-64."),
        _line(systemd + 0.3, "systemd[1]: Queued start job for default target Multi-User System."),
    ]
    return "\n".join(lines)


DF_NIXOS = """\
Filesystem     1K-blocks    Used Available Use% Mounted on
none             2097152    3180   2093972   1% /
/dev/vda3        3021608 2011820    838504  71% /nix
/dev/vda5         999320     148    930360   1% /data"""

NIX_PATH_INFO = f"""\
/nix/store/dag08kdplj57dlnmls561khjyh4j95c3-glibc-2.40-36	   31504472
/nix/store/5bb031l3sg01sgwlwq82isrs4xn7cqca-systemd-256.8	  151233264
{NIXOS_TOPLEVEL}	 1394868224"""


def nixos_sections(*, uptime: float = 14.20, systemd_time: str | None = None, **dmesg: float | None) -> dict[str, str]:
    out = {
        "uptime": f"{uptime:.2f} {uptime * 0.8:.2f}",
        "dmesg": nixos_dmesg(**dmesg),  # type: ignore[arg-type]
        "meminfo": synth.MEMINFO.format(shmem=3180),
        "df": DF_NIXOS,
        "cmdline": f"BOOT_IMAGE=(hd0,gpt2)//kernels/x-linux-6.6.63-bzImage init={NIXOS_TOPLEVEL}/init "
                   "console=tty0 console=ttyS0,115200n8 loglevel=4",
        "kernel": "Linux labkit-nixos 6.6.63 #1-NixOS SMP PREEMPT_DYNAMIC Fri Nov 22 14:38:37 UTC 2024 x86_64 "
                  "GNU/Linux",
        "uptime_mid": f"{uptime + 0.05:.2f} {uptime * 0.8:.2f}",
        "os_release": 'NAME=NixOS\nID=nixos\nVERSION_ID="24.11"\nPRETTY_NAME="NixOS 24.11 (Vicuna)"',
    }
    if systemd_time is not None:
        out["systemd_time"] = systemd_time
    out["nix_path_info"] = NIX_PATH_INFO
    out["uptime_end"] = f"{uptime + 0.90:.2f} {uptime * 0.8:.2f}"
    return out


def alpine_dmesg(*, kernel: float = 1.10, offset: float = 2.0, pkg_s: float = 1.5) -> str:
    """The fixture's initramfs kmsg lines (mkinitfs 3.13.0) after the kernel's, re-timed: each line keeps
    its order; 'Installing packages ...: ok.' comes ``pkg_s`` after its start line."""
    real = (ALPINE_FIXTURES / "initramfs-kmsg-messages.txt").read_text().splitlines()
    texts = [ln.split("] ", 1)[1] for ln in real if ln.strip()]
    lines = [
        _line(0.0, "Linux version 6.6.58-0-lts (buildozer@build-3-20-x86_64) (gcc (Alpine 13.2.1_git20240309) "
                   "13.2.1 20240309, GNU ld (GNU Binutils) 2.42) #1-Alpine SMP PREEMPT_DYNAMIC Fri, 25 Oct 2024"),
        _line(kernel, "Run /init as init process"),
    ]
    t = offset
    for text in texts:
        if text == "Installing packages to root filesystem: ok.":
            t += pkg_s - 0.01
        lines.append(_line(t, text))
        t += 0.01
    return "\n".join(lines)


RC_LOG = """
rc boot logging started at Fri Nov 29 10:00:04 2024

 * Starting hwclock ...
 [ ok ]
 * Starting modules ...
 [ ok ]
 * Setting hostname ...
 [ ok ]
 * Starting networking ...
 * eth0 ...
 [ !! ]
 * Starting syslog ...
 [ ok ]

rc boot logging stopped at Fri Nov 29 10:00:07 2024


rc default logging started at Fri Nov 29 10:00:07 2024

 * Starting local ...
"""

DF_ALPINE = """\
Filesystem           1K-blocks      Used Available Use% Mounted on
tmpfs                   246152     18234    227918   7% /
/dev/vda4              1015704     61440    884296   6% /media/vda4"""


def apk_installed() -> str:
    """/lib/apk/db/installed filtered as the probe does (``awk '/^[PVSIp]:/ || /^$/'``)."""
    text = (ALPINE_FIXTURES / "lib-apk-db-installed").read_text()
    return "\n".join(ln for ln in text.split("\n") if ln[:2] in ("P:", "V:", "S:", "I:", "p:") or not ln)


def alpine_sections(*, uptime: float = 9.40, rc_log: str | None = RC_LOG) -> dict[str, str]:
    out = {
        "uptime": f"{uptime:.2f} {uptime * 0.9:.2f}",
        "dmesg": alpine_dmesg(),
        "meminfo": synth.MEMINFO.format(shmem=18234),
        "df": DF_ALPINE,
        "cmdline": "BOOT_IMAGE=boot\\vmlinuz-lts initrd=boot\\initramfs-lts modules=loop,squashfs,sd-mod,usb-storage "
                   "quiet console=ttyS0,115200",
        "kernel": "Linux alpinelab 6.6.58-0-lts #1-Alpine SMP PREEMPT_DYNAMIC Fri, 25 Oct 2024 09:36:20 +0000 x86_64 "
                  "Linux",
        "uptime_mid": f"{uptime + 0.02:.2f} {uptime * 0.9:.2f}",
        "os_release": 'NAME="Alpine Linux"\nID=alpine\nVERSION_ID=3.20.3\nPRETTY_NAME="Alpine Linux v3.20"',
    }
    if rc_log is not None:
        out["rc_log"] = rc_log
    out["apk_installed"] = apk_installed()
    out["apk_world"] = (ALPINE_FIXTURES / "etc-apk-world").read_text()
    out["uptime_end"] = f"{uptime + 0.30:.2f} {uptime * 0.9:.2f}"
    return out


def bundle(os_id: str, sections: dict[str, str], *, t_begin: float = 25.0) -> Bundle:
    """The bundle as the lab's serial capture would deliver it (host-timed BEGIN line)."""
    guest = "rehearsal" if os_id.endswith("-rehearsal") else "real"
    lines = synth.bundle_lines(os_id, guest, sections)
    (b,) = extract_bundles([SerialLine(t_begin + i * 0.001, text) for i, text in enumerate(lines)])
    return b
