"""Errors that carry a hint the user can act on."""

from __future__ import annotations


class LabkitError(Exception):
    """Base error: ``str()`` gives the problem and, when known, the fix."""

    def __init__(self, problem: str, fix: str | None = None) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(problem if fix is None else f"{problem}\n  fix: {fix}")


class ToolMissing(LabkitError):
    def __init__(self, tool: str, package: str | None) -> None:
        self.tool = tool
        self.package = package
        fix = (
            f"install it as root: apt-get install -y {package}"
            if package
            else "install the program that provides it and make sure it is on PATH"
        )
        super().__init__(f"required tool '{tool}' is not on PATH", fix)


class CommandFailed(LabkitError):
    def __init__(self, argv: list[str], rc: int, stderr_tail: str) -> None:
        self.argv = argv
        self.rc = rc
        self.stderr_tail = stderr_tail
        tail = stderr_tail.strip().splitlines()[-5:]
        detail = ("\n    " + "\n    ".join(tail)) if tail else ""
        super().__init__(
            f"command failed with exit status {rc}: {' '.join(argv)}{detail}",
            "read the output above and the transcript; fix the cause and run the step again "
            "(steps are resumable)",
        )


class CommandTimeout(LabkitError):
    def __init__(self, argv: list[str], timeout_s: float) -> None:
        self.argv = argv
        self.timeout_s = timeout_s
        super().__init__(
            f"command did not finish within {timeout_s:g} s: {' '.join(argv)}",
            "check that the machine is not overloaded, or raise the timeout",
        )


class InputError(LabkitError):
    """Bad user input (parameters, paths, sizes)."""


class VerifyFailed(LabkitError):
    """A post-condition check failed after a step ran."""
