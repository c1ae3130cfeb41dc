"""The probe's ``firmware`` section: the ACPI FPDT boot record and the Boot Loader Interface variables.

Raw lines (``labkit/data/guest/probe.sh``)::

    fpdt <name>_ns <decimal ns>        one per file of /sys/firmware/acpi/fpdt/boot/ (kernel >= 5.12, x86_64:
                                       drivers/acpi/acpi_fpdt.c FPDT_ATTR), or ``fpdt absent``
    fpdt_table present|absent          /sys/firmware/acpi/tables/FPDT: the firmware published the table
    efi present|absent                 /sys/firmware/efi: booted through UEFI
    efivars present|absent             efivarfs mounted with variables in it
    efivar <Name> <value>|absent       LoaderTimeInitUSec, LoaderTimeExecUSec (decimal µs), LoaderInfo (text)

The figures follow ``systemd-analyze`` (systemd src/shared/boot-timestamps.c, acpi-fpdt.c @ v256 L70-90):
firmware = ``bootloader_launch_ns``; loader = ``exitbootservice_end_ns - bootloader_launch_ns``; FPDT first,
the LoaderTime variables only when the FPDT is not there (efi-loader.c L36-62: firmware = LoaderTimeInitUSec,
loader = Exec - Init). Both are rejected as systemd rejects them (start 0, end before start, over an hour).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from labkit.measure.bundle import SectionError

FPDT_FIELDS = ("firmware_start_ns", "bootloader_load_ns", "bootloader_launch_ns", "exitbootservice_start_ns",
               "exitbootservice_end_ns")
LOADER_VARS = ("LoaderTimeInitUSec", "LoaderTimeExecUSec", "LoaderInfo")
_FLAGS = ("fpdt_table", "efi", "efivars")
HOUR_NS = 3600 * 10**9


@dataclass(frozen=True)
class FirmwareRecord:
    fpdt: dict[str, int] = field(default_factory=dict)  # <name>_ns -> ns; empty: no FPDT in sysfs
    fpdt_dir: bool = False
    flags: dict[str, bool] = field(default_factory=dict)  # fpdt_table, efi, efivars -> present
    loader_vars: dict[str, str] = field(default_factory=dict)  # only the variables that exist


@dataclass(frozen=True)
class FirmwareTimes:
    firmware_s: float | None
    loader_s: float | None
    source: str  # where the figures come from
    why: str  # why they are missing ("" when present)


def parse_firmware(text: str) -> FirmwareRecord:
    fpdt: dict[str, int] = {}
    fpdt_dir = False
    flags: dict[str, bool] = {}
    loader: dict[str, str] = {}
    for no, raw in enumerate(text.split("\n"), start=1):
        line = raw.rstrip("\r")
        if not line.strip():
            continue
        words = line.split(None, 2)
        key = words[0]
        if key == "fpdt" and len(words) == 2 and words[1] == "absent":
            continue
        if key == "fpdt" and len(words) == 3:
            if words[1] not in FPDT_FIELDS:
                raise SectionError("firmware", no, line,
                                   f"unknown FPDT field {words[1]!r} (known: {', '.join(FPDT_FIELDS)})")
            if not re.fullmatch(r"[0-9]{1,20}", words[2]):  # a u64 printed with %llu
                raise SectionError("firmware", no, line, f"{words[1]} is not a whole number of nanoseconds")
            fpdt[words[1]] = int(words[2])
            fpdt_dir = True
        elif key in _FLAGS and len(words) == 2 and words[1] in ("present", "absent"):
            flags[key] = words[1] == "present"
        elif key == "efivar" and len(words) == 3 and words[1] in LOADER_VARS:
            if words[2] != "absent":
                loader[words[1]] = words[2].strip()
        else:
            raise SectionError("firmware", no, line, "expected 'fpdt NAME NS', 'fpdt absent', "
                               "'<fpdt_table|efi|efivars> present|absent' or 'efivar NAME VALUE|absent'")
    return FirmwareRecord(fpdt, fpdt_dir, flags, loader)


def firmware_times(rec: FirmwareRecord) -> FirmwareTimes:
    """firmware_s and loader_s by systemd-analyze's rules, with their source or the reason they are missing."""
    launch, end = rec.fpdt.get("bootloader_launch_ns"), rec.fpdt.get("exitbootservice_end_ns")
    fpdt_why = ""
    if launch is not None and end is not None:
        if launch == 0 or end < launch or end > HOUR_NS:
            fpdt_why = (f"the FPDT boot record is not usable (bootloader_launch_ns={launch}, "
                        f"exitbootservice_end_ns={end}: systemd rejects a zero start, an end before it "
                        "or over an hour)")
        else:
            return FirmwareTimes(launch / 1e9, (end - launch) / 1e9, "ACPI FPDT (/sys/firmware/acpi/fpdt/boot)", "")
    elif rec.fpdt_dir:
        fpdt_why = "the FPDT boot record in sysfs lacks bootloader_launch_ns or exitbootservice_end_ns"
    elif rec.flags.get("fpdt_table"):
        fpdt_why = ("the firmware has an FPDT table but the kernel does not expose it (kernel < 5.12 or no "
                    "CONFIG_ACPI_FPDT)")
    else:
        fpdt_why = "no FPDT in sysfs (the firmware publishes no FPDT table)"
    init, exe = rec.loader_vars.get("LoaderTimeInitUSec"), rec.loader_vars.get("LoaderTimeExecUSec")
    if init is not None and exe is not None and init.isdigit() and exe.isdigit():
        x, y = int(init), int(exe)
        if y != 0 and y >= x and y - x <= HOUR_NS // 1000:
            return FirmwareTimes(x / 1e6, (y - x) / 1e6,
                                 "EFI variables LoaderTimeInitUSec/LoaderTimeExecUSec (the boot loader's)", "")
    if not rec.flags.get("efi", True):
        var_why = "not booted through UEFI"
    elif not rec.flags.get("efivars", True):
        var_why = "efivarfs not mounted"
    else:
        var_why = "no LoaderTimeInitUSec/LoaderTimeExecUSec variables (rEFInd and GRUB set none)"
    return FirmwareTimes(None, None, "", f"{fpdt_why}; {var_why}")
