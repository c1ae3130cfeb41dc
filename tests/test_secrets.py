"""No password hash reaches a notebook, its HTML, a plan, a transcript or a report.

``labkit run`` used to write ``NixosSettings(... hashed_password='$6$...')`` into the executed 03_nixos
notebook and its HTML. Here the chain runs for real with a hash file made by ``openssl passwd -6``, and every
file of the run directory is searched for the hash.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from labkit.cli.main import main
from labkit.core.errors import CommandFailed, InputError
from labkit.core.runner import Mode, Runner, read_transcript
from labkit.guide.chain import refuse_secrets
from labkit.phases.nixos import InstallParams, build_plan, plan_text, run_plan
from labkit.systems.nixos.config import REDACTED, NixosSettings, User, render_module

SHA512 = "$6$rounds=5000$saltsaltsaltsalt$" + "a" * 86


@pytest.fixture
def hash_file(tmp_path: Path) -> tuple[Path, str]:
    """A real SHA-512 crypt hash (openssl passwd -6, else libpass), alone in a 0600 file."""
    if shutil.which("openssl"):
        h = subprocess.run(["openssl", "passwd", "-6", "-salt", "Qx7bZ9kLmNpR", "correct horse"], check=True,
                           capture_output=True, text=True).stdout.strip()
    else:
        from labkit.systems.nixos.hashes import hash_password

        h = hash_password("correct horse", rounds=5000)
    f = tmp_path / "lab.hash"
    f.write_text(h + "\n")
    f.chmod(0o600)
    return f, h


def test_settings_repr_and_shown_module_are_redacted(tmp_path: Path) -> None:
    from labkit.systems.alpine.apkovl import ApkovlSpec
    from labkit.systems.alpine.apkovl import User as AlpineUser

    alpine = ApkovlSpec(root_password_hash=SHA512, users=(AlpineUser("juser", password_hash=SHA512),))
    assert "saltsalt" not in repr(alpine)
    s = NixosSettings(user=User(hashed_password=SHA512))
    assert SHA512 not in repr(s) and REDACTED in repr(s.user) and "saltsalt" not in str(s)
    assert SHA512 in render_module(s) and SHA512 not in render_module(s, redact=True)
    assert f'hashedPassword = "{REDACTED}";' in render_module(s, redact=True)
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:        4000000 kB\n")
    plan = build_plan(InstallParams(s, root=tmp_path / "mnt", meminfo=meminfo, mountinfo=meminfo))
    assert SHA512 not in plan.module_text and SHA512 in plan.module_file and SHA512 not in repr(plan)
    runner = Runner(Mode.PLAN, tmp_path / "t.jsonl", progress=None)
    run_plan(runner, plan)
    assert SHA512 not in plan_text(read_transcript(tmp_path / "t.jsonl"))
    assert SHA512 not in (tmp_path / "t.jsonl").read_text()


def test_runner_never_records_a_hash(tmp_path: Path) -> None:
    tr = tmp_path / "t.jsonl"
    r = Runner(Mode.APPLY, tr, progress=None)
    r.note(f"hash is {SHA512}")
    r.run(["sh", "-c", 'echo "$H"; echo "$H" >&2'], env={"H": SHA512})
    with pytest.raises(CommandFailed) as exc:
        r.run(["sh", "-c", f"echo {SHA512} >&2; exit 3"])
    assert SHA512 not in str(exc.value) and "<redacted password hash>" in str(exc.value)
    r.add_secret("hunter2-plain")
    r.note("the password hunter2-plain")
    text = tr.read_text()
    assert SHA512 not in text and "saltsalt" not in text and "hunter2-plain" not in text
    assert "<redacted password hash>" in text and "***" in text


def test_a_hash_is_never_a_notebook_parameter(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(InputError, match="password hash"):
        refuse_secrets({"03_nixos.hashed_password_file": SHA512})
    with pytest.raises(InputError, match="password hash"):
        refuse_secrets({"ssh_keys": ["ssh-ed25519 AAAA x", SHA512]})
    refuse_secrets({"03_nixos.hashed_password_file": "/tmp/lab.hash", "boots": 2})
    assert main(["run", "--out", str(tmp_path / "run"), "-p", f"03_nixos.hashed_password_file={SHA512}"]) == 2
    err = capsys.readouterr().err
    assert "never passes a secret" in err and SHA512 not in err and "saltsalt" not in err
    assert not (tmp_path / "run").exists()


def test_labkit_run_with_a_real_hash_file(tmp_path: Path, hash_file: tuple[Path, str],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    f, h = hash_file
    run = tmp_path / "run"
    assert main(["run", "--out", str(run), "-p", f"03_nixos.hashed_password_file={f}"]) == 0
    out = capsys.readouterr()
    assert h not in out.out + out.err
    salt_and_hash = h.split("$")[-1]
    leaks = []
    for p in sorted(run.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            if h.encode() in data or salt_and_hash[:40].encode() in data:
                leaks.append(str(p.relative_to(run)))
    assert leaks == []
    nb = (run / "notebooks" / "03_nixos.ipynb").read_text()
    html = (run / "html" / "03_nixos.html").read_text()
    assert REDACTED in nb and "hashedPassword" in nb  # shown, redacted
    assert "redacted password hash" in html
    assert str(f) in nb  # the notebook took the file's path
