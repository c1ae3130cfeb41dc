"""Every write refuses anything but a regular file or a new name in an existing folder, and a failing
write (disk full, read-only filesystem, no permission) is one clear error that leaves no temporary file.

Real filesystems: a 64 KiB tmpfs (full), a tmpfs remounted read-only, a FIFO, a character device made
with mknod (the numbers of /dev/full), a folder only root may write while the writer is ``nobody``.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from labkit.cli.main import main
from labkit.core.files import OutputError, atomic_write_bytes, atomic_write_text, check_output_dir
from labkit.core.runner import Mode, Runner

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mount, mknod)")
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA lab@demo"


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or p.name.startswith(".labkit-write-test"))


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """``tmpfs(size="64k", ro=False)`` -> a freshly mounted tmpfs (unmounted at teardown)."""
    mounted: list[Path] = []

    def make(size: str = "64k", ro: bool = False, name: str = "fs") -> Path:
        mnt = tmp_path / name
        mnt.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=755", "labkit-test", str(mnt)], check=True)
        mounted.append(mnt)
        if ro:
            subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        return mnt

    try:
        yield make
    finally:
        for mnt in reversed(mounted):
            subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_fifo_a_device_and_a_folder_are_never_replaced(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(OutputError, match=r"FIFO .* regular file") as exc:
        atomic_write_text(fifo, "x")
    assert exc.value.fix and "regular file" in exc.value.fix
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    with pytest.raises(OutputError, match="a directory"):
        atomic_write_text(tmp_path, "x")
    assert leftovers(tmp_path) == []


@root_only
def test_a_device_node_is_never_replaced(tmp_path: Path) -> None:
    full = tmp_path / "full"
    os.mknod(full, stat.S_IFCHR | 0o666, os.makedev(1, 7))  # the numbers of /dev/full
    with pytest.raises(OutputError, match="character device"):
        atomic_write_bytes(full, b"x")
    assert stat.S_ISCHR(os.lstat(full).st_mode) and os.major(os.lstat(full).st_rdev) == 1
    # through the command line: nixos config --out onto the device, alpine answers --out onto a FIFO
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:        4000000 kB\n")
    assert main(["nixos", "config", "--out", str(full), "--ssh-key", KEY, "--meminfo", str(meminfo),
                 "--no-probe"]) == 2
    assert stat.S_ISCHR(os.lstat(full).st_mode)
    fifo = tmp_path / "answers"
    os.mkfifo(fifo)
    assert main(["alpine", "answers", "--out", str(fifo)]) == 2
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert leftovers(tmp_path) == []


def test_a_symlink_is_followed_and_kept(tmp_path: Path) -> None:
    real = tmp_path / "real.txt"
    real.write_text("old")
    link = tmp_path / "link.txt"
    link.symlink_to(real)
    atomic_write_text(link, "new")
    assert link.is_symlink() and real.read_text() == "new"


def test_missing_or_non_folder_parents(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(OutputError, match="does not exist") as exc:
        atomic_write_text(tmp_path / "no" / "such" / "f", "x", make_parents=False)
    assert "mkdir -p" in (exc.value.fix or "")
    assert not (tmp_path / "no").exists()
    (tmp_path / "file").write_text("a file, not a folder")
    with pytest.raises(OutputError, match="not a directory"):
        atomic_write_text(tmp_path / "file" / "f", "x")
    with pytest.raises(OutputError, match="not a directory"):
        atomic_write_text(tmp_path / "file" / "f", "x", make_parents=False)
    # the command line: --out in a folder that does not exist is refused, nothing is created
    assert main(["alpine", "answers", "--out", str(tmp_path / "nodir" / "answers")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "fix:" in err and "Traceback" not in err
    assert not (tmp_path / "nodir").exists()


@root_only
def test_disk_full_leaves_the_old_file_and_no_temporary(tmpfs: Callable[..., Path],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    fs = tmpfs("64k")
    target = fs / "data.bin"
    target.write_bytes(b"previous content")
    with pytest.raises(OutputError) as exc:
        atomic_write_bytes(target, b"\1" * (1024 * 1024))
    assert "ENOSPC" in exc.value.problem and str(target) in exc.value.problem
    assert "df -h" in (exc.value.fix or "")
    assert target.read_bytes() == b"previous content"  # the rename never happened
    assert leftovers(fs) == []
    # the command line: an apkovl onto a filesystem with almost no space left
    filler = fs / "filler"
    with pytest.raises(OSError) as full:
        with open(filler, "wb") as fh:
            while True:
                fh.write(b"\0" * 4096)
                fh.flush()
    assert full.value.errno == errno.ENOSPC
    assert main(["alpine", "apkovl", "--no-login", "--out", str(fs / "x.apkovl.tar.gz"), "--world", "alpine-base"]) == 2
    err = capsys.readouterr().err
    assert "ENOSPC" in err and "no space left" in err and "Traceback" not in err
    assert leftovers(fs) == [] and not (fs / "x.apkovl.tar.gz").exists()


@root_only
def test_read_only_folder(tmpfs: Callable[..., Path], capsys: pytest.CaptureFixture[str]) -> None:
    ro = tmpfs("1m", ro=True)
    with pytest.raises(OutputError) as exc:
        atomic_write_text(ro / "f.txt", "x")
    assert "EROFS" in exc.value.problem and "read-only" in exc.value.problem
    with pytest.raises(OutputError, match="EROFS"):
        check_output_dir(ro / "run")
    # --workdir, --out of a run, a transcript: one clear error each, exit status 2
    assert main(["disk", "apply", "--device", "/dev/null", "--confirm", "000000000000", "--plan",
                 "--workdir", str(ro / "work")]) == 2
    assert main(["lab", "--out", str(ro / "run"), "--boots", "1"]) == 2
    assert main(["nixos", "config", "--out", str(ro / "labkit.nix"), "--ssh-key", KEY,
                 "--machine-ram", "8G"]) == 2
    err = capsys.readouterr().err
    assert err.count("EROFS") == 3 and "Traceback" not in err
    with pytest.raises(OutputError, match="EROFS"):
        Runner(Mode.PLAN, ro / "transcript.jsonl", progress=None).note("x")


@pytest.fixture
def roots_folder() -> Iterator[Path]:
    """A folder owned by root, mode 0755, whose parents everyone may traverse (/tmp)."""
    folder = Path(tempfile.mkdtemp(prefix="labkit-roots-"))
    os.chmod(folder, 0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@root_only
def test_no_permission(roots_folder: Path) -> None:
    """The writer is `nobody` (a forked child that dropped root); the folder is root's, mode 0755."""
    folder = roots_folder
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no pytest machinery, report through the pipe
        os.close(read)
        msg = "no error"
        try:
            os.setgid(65534)
            os.setuid(65534)
            atomic_write_text(folder / "f.txt", "x")
        except OutputError as exc:
            msg = str(exc)
        except BaseException as exc:
            msg = f"unexpected {type(exc).__name__}: {exc}"
        os.write(write, msg.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as fh:
        msg = fh.read()
    os.waitpid(pid, 0)
    assert "EACCES" in msg and "permission denied" in msg and "fix:" in msg, msg
    assert list(folder.iterdir()) == []


def test_proc_path_is_a_clean_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["alpine", "apkovl", "--no-login", "--out", "/proc/labkit-no-such-file", "--world", "alpine-base"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("labkit: error: cannot write the apkovl /proc/labkit-no-such-file") and "Traceback" not in err
    assert not Path("/proc/labkit-no-such-file").exists()


def test_stdout_path_of_a_command_is_checked(tmp_path: Path) -> None:
    fifo = tmp_path / "out"
    os.mkfifo(fifo)
    with pytest.raises(OutputError, match="FIFO"):
        Runner(progress=None).run(["echo", "hi"], stdout_path=fifo)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and leftovers(tmp_path) == []
