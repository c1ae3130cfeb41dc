"""The runner: plan vs apply, transcript contents, missing tools, timeouts, atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from labkit.core.errors import CommandFailed, CommandTimeout, ToolMissing
from labkit.core.runner import Mode, Runner, atomic_write_text, read_transcript


def test_apply_runs_and_records(tmp_path: Path) -> None:
    tr = tmp_path / "t.jsonl"
    r = Runner(Mode.APPLY, tr, progress=None)
    with r.step("outer"), r.step("inner"):
        res = r.run(["sh", "-c", "echo hello; echo oops >&2"], cwd=tmp_path)
    assert res.rc == 0 and res.stdout == "hello\n" and res.executed
    rows = read_transcript(tr)
    cmd = next(x for x in rows if x["event"] == "command")
    assert cmd["argv"] == ["sh", "-c", "echo hello; echo oops >&2"]
    assert cmd["cwd"] == str(tmp_path)
    assert cmd["rc"] == 0 and cmd["executed"] is True
    assert cmd["step"] == "outer / inner"
    assert cmd["stdout_tail"] == "hello\n" and cmd["stderr_tail"] == "oops\n"
    assert isinstance(cmd["duration_s"], float)
    steps = [x["step"] for x in rows if x["event"] == "step"]
    assert steps == ["outer / inner", "outer"]


def test_plan_mode_executes_nothing_but_queries(tmp_path: Path) -> None:
    target = tmp_path / "created"
    r = Runner(Mode.PLAN, tmp_path / "t.jsonl", progress=None)
    res = r.run(["touch", str(target)])
    assert not target.exists()
    assert res.executed is False and res.rc is None
    q = r.run(["echo", "state"], query=True)
    assert q.executed and q.stdout == "state\n"
    rows = [x for x in read_transcript(tmp_path / "t.jsonl") if x["event"] == "command"]
    assert [x["executed"] for x in rows] == [False, True]
    assert [p.argv[0] for p in r.planned] == ["touch", "echo"]
    assert r.planned[0].shell() == f"touch {target}"


def test_missing_tool_names_debian_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH
    import labkit.core.runner as runner_mod

    monkeypatch.setattr(runner_mod, "which", lambda tool: None)
    r = Runner(Mode.APPLY, tmp_path / "t.jsonl", progress=None)
    with pytest.raises(ToolMissing) as exc:
        r.run(["sgdisk", "--print", "x.img"])
    msg = str(exc.value)
    assert "sgdisk" in msg and "apt-get install -y gdisk" in msg
    row = read_transcript(tmp_path / "t.jsonl")[-1]
    assert row["error"] == "tool-missing" and row["package"] == "gdisk"


def test_failure_raises_with_stderr_tail(tmp_path: Path) -> None:
    r = Runner(Mode.APPLY, tmp_path / "t.jsonl", progress=None)
    with pytest.raises(CommandFailed) as exc:
        r.run(["sh", "-c", "echo 'disk is busy' >&2; exit 3"])
    assert exc.value.rc == 3 and "disk is busy" in str(exc.value)
    res = r.run(["sh", "-c", "exit 4"], check=False)
    assert res.rc == 4


def test_timeout_is_recorded(tmp_path: Path) -> None:
    r = Runner(Mode.APPLY, tmp_path / "t.jsonl", progress=None)
    with pytest.raises(CommandTimeout):
        r.run(["sleep", "5"], timeout=0.3)
    row = read_transcript(tmp_path / "t.jsonl")[-1]
    assert row["timed_out"] is True and row["rc"] is None


def test_secrets_never_reach_the_transcript(tmp_path: Path) -> None:
    r = Runner(Mode.APPLY, tmp_path / "t.jsonl", progress=None, secrets=("hunter2",))
    r.run(["echo", "password=hunter2"])
    text = (tmp_path / "t.jsonl").read_text()
    assert "hunter2" not in text and "***" in text


def test_stdout_to_file_is_atomic(tmp_path: Path) -> None:
    r = Runner(Mode.APPLY, None, progress=None)
    out = tmp_path / "out.txt"
    r.run(["echo", "data"], stdout_path=out)
    assert out.read_text() == "data\n"
    with pytest.raises(CommandFailed):
        r.run(["sh", "-c", "echo partial; exit 1"], stdout_path=tmp_path / "bad.txt")
    assert not (tmp_path / "bad.txt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_atomic_write_text(tmp_path: Path) -> None:
    p = tmp_path / "sub" / "f.json"
    atomic_write_text(p, json.dumps({"a": 1}), mode=0o600)
    assert json.loads(p.read_text()) == {"a": 1}
    assert (p.stat().st_mode & 0o777) == 0o600


def test_secrets_are_redacted_everywhere_they_could_show(tmp_path: Path) -> None:
    """Review finding: env values, the plan's shell rendering and externally recorded extras too."""
    r = Runner(Mode.APPLY, tmp_path / "t.jsonl", progress=None, secrets=("hunter2",))
    r.run(["sh", "-c", "true"], env={"PGPASSWORD": "hunter2"}, cwd=tmp_path)
    r.record_external(["qemu", "-append", "pw=hunter2"], rc=0, duration_s=1.0,
                      stderr_tail="echoed hunter2", nested={"a": ["hunter2"]})
    p = Runner(Mode.PLAN, None, progress=None, secrets=("hunter2",))
    p.run(["useradd", "-p", "hunter2", "x"], env={"SECRET": "hunter2"})
    assert "hunter2" not in (tmp_path / "t.jsonl").read_text()
    assert all("hunter2" not in c.shell() for c in r.planned + p.planned)


def test_a_malformed_hash_is_never_echoed() -> None:
    from labkit.core.errors import InputError
    from labkit.systems.nixos.hashes import check_hash

    for plaintext in ("$ecretPass", "$6$notreally", "hunter2"):
        with pytest.raises(InputError) as exc:
            check_hash(plaintext)
        assert plaintext.strip("$") not in str(exc.value)
