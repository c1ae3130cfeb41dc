"""The NixOS phase: a declared tmpfs-root configuration, its install steps, and a serial driver.

- :mod:`labkit.nixos.config` — typed settings rendered to a NixOS module (``labkit.nix``).
- :mod:`labkit.nixos.hashes` — password hashes (SHA-512 crypt / yescrypt), checked strictly.
- :mod:`labkit.nixos.generate` — the structured edit of ``nixos-generate-config`` output.
- :mod:`labkit.nixos.install` — the install steps (check / apply / verify), previewed in plan mode.
- :mod:`labkit.nixos.serial` — a shell driver over a serial console (prompt, exit status, timeouts).
- :mod:`labkit.nixos.media` — the NixOS minimal ISO: catalog entry, resumable checked download.
"""
