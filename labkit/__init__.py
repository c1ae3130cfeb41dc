"""labkit: declared-only OS installs (NixOS tmpfs root + Alpine diskless behind rEFInd), guided and measured."""

__version__ = "0.1.0"
