"""The structured edit of ``nixos-generate-config`` output.

On a UEFI-booted installer ``nixos-generate-config`` writes a ``configuration.nix`` that enables
systemd-boot and lets it touch the EFI variables. labkit boots NixOS through rEFInd -> GRUB, so
the edit removes those two settings (and their comment) and adds ``./labkit.nix`` to the
``imports`` list. Anything it cannot place with certainty is an error, never a guess.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from labkit.core.errors import InputError

#: Top-level settings the edit removes (one statement per line, as the generator writes them).
REMOVED = (
    re.compile(r"^\s*boot\.loader\.systemd-boot\.enable\s*=\s*(true|false)\s*;\s*(#.*)?$"),
    re.compile(r"^\s*boot\.loader\.efi\.canTouchEfiVariables\s*=\s*(true|false)\s*;\s*(#.*)?$"),
)
REMOVED_COMMENT = re.compile(r"^\s*#\s*Use the systemd-boot EFI boot loader\.?\s*$")
HW = "./hardware-configuration.nix"
_LEFTOVER = re.compile(r"systemd-boot|canTouchEfiVariables")


@dataclass(frozen=True)
class Edit:
    text: str
    removed: tuple[str, ...]
    import_added: bool


def edit_generated(text: str, module: str = "./labkit.nix") -> Edit:
    """Remove the systemd-boot lines and import ``module``; idempotent."""
    lines = text.splitlines()
    out: list[str] = []
    removed: list[str] = []
    just_removed = False
    for line in lines:
        if any(r.match(line) for r in REMOVED) or REMOVED_COMMENT.match(line):
            removed.append(line.strip())
            just_removed = True
            continue
        if just_removed and not line.strip() and out and not out[-1].strip():
            continue  # do not leave a double blank line where the block was
        just_removed = False
        out.append(line)
    for i, line in enumerate(out):
        code = line.split("#", 1)[0]
        if _LEFTOVER.search(code):
            raise InputError(
                f"configuration.nix line {i + 1} sets systemd-boot or the EFI variables in a form labkit does not "
                f"edit: {line.strip()!r}",
                "remove that setting by hand (labkit.nix configures GRUB), then run the step again",
            )
    already = any(re.search(rf"(^|\s|\[){re.escape(module)}(\s|\]|$)", ln.split("#", 1)[0]) for ln in out)
    added = False
    if not already:
        idx = next((i for i, ln in enumerate(out) if HW in ln.split("#", 1)[0]), None)
        if idx is None:
            raise InputError(
                "configuration.nix has no `./hardware-configuration.nix` import to add labkit's module next to",
                f"add {module} to its imports list by hand, or regenerate it with nixos-generate-config",
            )
        line = out[idx]
        col = line.index(HW)
        if line[:col].strip() in ("", "[") and line[col + len(HW):].split("#", 1)[0].strip() == "":
            out.insert(idx + 1, " " * col + f"{module}  # added by labkit: tmpfs root, GRUB behind rEFInd")
        else:  # one-line list: imports = [ ./hardware-configuration.nix ];
            out[idx] = line[: col + len(HW)] + f" {module}" + line[col + len(HW):]
        added = True
    return Edit("\n".join(out) + "\n", tuple(removed), added)
