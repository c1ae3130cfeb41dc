"""The NixOS phase: a declared tmpfs-root configuration, its install steps, and a serial driver.

- :mod:`labkit.systems.nixos.config` — typed settings rendered to a NixOS module (``labkit.nix``).
- :mod:`labkit.systems.nixos.hashes` — password hashes (SHA-512 crypt / yescrypt), checked strictly.
- :mod:`labkit.systems.nixos.generate` — the structured edit of ``nixos-generate-config`` output.
- :mod:`labkit.phases.nixos` — the install steps (check / apply / verify), previewed in plan mode.
- :mod:`labkit.lab.serialshell` — a shell driver over a serial console (prompt, exit status, timeouts).
- :mod:`labkit.systems.nixos.media` — the NixOS minimal ISO: catalog entry, resumable checked download.
"""
