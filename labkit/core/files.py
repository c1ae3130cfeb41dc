"""Safe file output and input: the one place labkit checks a path before it writes or reads it.

Every file labkit writes goes through :func:`atomic_write_bytes` (re-exported by
:mod:`labkit.core.runner`): a temporary file beside the target, ``fsync``, then ``rename``. Before
that, :func:`check_output_path` refuses a target that exists and is not a regular file (a device
node such as ``/dev/full``, a FIFO, a socket, a directory): ``rename`` would replace it with a
regular file. A target whose folder is missing is refused too when the caller asks for it (files the
user names: ``--out``). Any ``OSError`` on the way (disk full, read-only filesystem, no permission)
removes the temporary file and becomes an :class:`OutputError` naming the path, the cause and a fix.

Reading user-named files goes through :func:`read_user_bytes` / :func:`read_user_text`: a missing
path, a directory, a device, a file over a size limit, or (text) a binary file each end in one
:class:`~labkit.core.errors.InputError` with the fix.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from pathlib import Path

from labkit.core.errors import InputError, LabkitError

#: Default ceiling for a user-named input file read whole into memory.
MAX_INPUT_BYTES = 256 * 1024 * 1024


class OutputError(LabkitError):
    """A file cannot be written where the user (or labkit) asked."""


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    return "not a regular file"


def check_output_path(path: Path, *, what: str = "the output", make_parents: bool = True) -> Path:
    """The path to write: refuse anything but a regular file or a new name in an existing folder.

    A symbolic link is followed (the file it points to is replaced, the link stays). With
    ``make_parents`` (labkit's own trees) missing folders are created; without it (a file the user
    named) a missing folder is refused. Returns the path to replace (the link's target, if any).
    """
    path = Path(path)
    try:
        target = Path(os.path.realpath(path)) if path.is_symlink() else path
        st = os.stat(target)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise os_error(exc, path, f"write {what}") from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise OutputError(
            f"{what} {path} exists and is {_kind(st.st_mode)}; labkit writes only regular files "
            "(writing there would replace it)",
            "give the path of a regular file, or a new name in an existing folder",
        )
    parent = target.parent
    if make_parents:
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise OutputError(f"cannot write {what} {path}: {parent} (or a folder above it) is not a directory",
                              "choose a path whose folders are directories") from None
        except OSError as exc:
            raise os_error(exc, parent, f"create the folder for {what}") from None
    elif not parent.exists():
        raise OutputError(f"cannot write {what} {path}: the folder {parent} does not exist",
                          f"create it first (mkdir -p {parent}) or choose an existing folder")
    if not parent.is_dir():
        raise OutputError(f"cannot write {what} {path}: {parent} is not a directory",
                          "choose a path inside an existing folder")
    return target


_FIXES = {
    errno.ENOSPC: ("no space left on the device", "free space on that filesystem (df -h {dir}) or write elsewhere"),
    errno.EDQUOT: ("disk quota exceeded", "free space in your quota or write elsewhere"),
    errno.EROFS: ("the filesystem is read-only", "choose a folder on a writable filesystem"),
    errno.EACCES: ("permission denied", "choose a folder you can write to, or fix its owner/permissions"),
    errno.EPERM: ("operation not permitted", "choose a folder you can write to, or fix its owner/permissions"),
    errno.ENOENT: ("no such file or directory", "check the path; its folder must exist"),
    errno.ENOTDIR: ("a component of the path is not a directory", "check the path"),
    errno.EISDIR: ("it is a directory", "give a file name, not a folder"),
    errno.ENAMETOOLONG: ("the name is too long", "use a shorter path"),
    errno.EFBIG: ("the file is too large for that filesystem", "write it to another filesystem"),
    errno.EIO: ("input/output error", "check the device (dmesg) and write elsewhere"),
    errno.EXDEV: ("the temporary file and the target are on different filesystems", "write elsewhere"),
}


def os_error(exc: OSError, path: Path | str, doing: str = "write") -> OutputError:
    """An ``OSError`` as one clear error: the path, the cause (errno name) and a fix."""
    code = exc.errno or 0
    name = errno.errorcode.get(code, "error")
    cause, fix = _FIXES.get(code, (exc.strerror or str(exc), "check the path and try again"))
    try:
        folder = Path(path) if Path(path).is_dir() else Path(path).parent
    except OSError:
        folder = Path(path).parent
    return OutputError(f"cannot {doing} {path}: {cause} ({name})", fix.format(dir=folder))


def _tmp_name(target: Path) -> Path:
    return target.with_name(f".{target.name}.tmp-{os.getpid()}-{threading.get_ident()}")


def atomic_write_bytes(path: Path, data: bytes, mode: int | None = None, *, make_parents: bool = True,
                       what: str = "the file") -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename (never half-written).

    Refuses a target that is not a regular file (see :func:`check_output_path`); on any error the
    temporary file is removed and an :class:`OutputError` names the path and the cause.
    """
    target = check_output_path(Path(path), what=what, make_parents=make_parents)
    tmp = _tmp_name(target)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if mode is not None else 0o666)
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, target)
    except OSError as exc:
        _unlink_quietly(tmp)
        raise os_error(exc, path, f"write {what}") from None
    except BaseException:
        _unlink_quietly(tmp)
        raise


def atomic_write_text(path: Path, text: str, mode: int | None = None, *, make_parents: bool = True,
                      what: str = "the file") -> None:
    atomic_write_bytes(path, text.encode("utf-8"), mode, make_parents=make_parents, what=what)


def _unlink_quietly(p: Path) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass


def check_output_dir(path: Path, *, what: str = "the output folder") -> Path:
    """A folder labkit will fill: an existing directory, or a new one whose parent exists or can be made."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what} {path} exists and is not a directory", "give a folder (new or existing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputError(f"cannot create {what} {path}: a file is in the way", "choose another folder") from None
    except OSError as exc:
        raise os_error(exc, path, f"create {what}") from None
    probe = path / f".labkit-write-test-{os.getpid()}-{threading.get_ident()}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(probe)
    except OSError as exc:
        _unlink_quietly(probe)
        raise os_error(exc, path, f"write in {what}") from None
    return path


# -- reading --------------------------------------------------------------------------------------

def read_user_bytes(path: Path | str, *, what: str = "the file", limit: int = MAX_INPUT_BYTES,
                    fix: str | None = None) -> bytes:
    """The bytes of a regular file the user named; one clear error for anything else."""
    p = Path(path)
    hint = fix or f"give the path of {what}"
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise InputError(f"{what} {p} does not exist", hint) from None
    except OSError as exc:
        raise InputError(f"cannot read {what} {p}: {exc.strerror} ({errno.errorcode.get(exc.errno or 0, '?')})",
                         hint) from None
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{what} {p} is {_kind(st.st_mode)}, not a regular file", hint)
    if st.st_size > limit:
        raise InputError(f"{what} {p} is {st.st_size} bytes, over labkit's limit of {limit} bytes for it",
                         "check that it is the right file")
    try:
        with open(p, "rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise InputError(f"cannot read {what} {p}: {exc.strerror} ({errno.errorcode.get(exc.errno or 0, '?')})",
                         hint) from None
    if len(data) > limit:
        raise InputError(f"{what} {p} is over labkit's limit of {limit} bytes for it",
                         "check that it is the right file")
    return data


def read_user_text(path: Path | str, *, what: str = "the file", limit: int = MAX_INPUT_BYTES,
                   fix: str | None = None) -> str:
    """A UTF-8 text file the user named; a binary file (NUL bytes, invalid UTF-8) is refused."""
    data = read_user_bytes(path, what=what, limit=limit, fix=fix)
    if b"\0" in data:
        raise InputError(f"{what} {path} is a binary file (it contains NUL bytes), not text",
                         fix or f"give the path of {what}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{what} {path} is not UTF-8 text (byte {exc.start} cannot be decoded)",
                         fix or f"give the path of {what}") from None
