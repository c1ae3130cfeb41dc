"""The hardware reboot loop, host side: ``labkit measure arm | disarm | collect``.

On a real PC there is no host stamping a serial console: the probe saves each bundle on the persistent
``/data`` partition (``/data/labkit/bundles/<os>-<boot id>.txt``) and, while ``/data/labkit/loop.json`` says the
loop is armed, steps it (``labkit/data/guest/loop.sh``): records this boot, sets rEFInd's ``default_selection``
for the next system in ``EFI/BOOT/refind.conf`` on the ESP (the original kept as ``refind.conf.labkit-orig``),
syncs and reboots; when the plan is done, a boot is missing or a step fails it disarms, restores the original
refind.conf and stays up.

This module writes the state the shell reads (:func:`state_json`: one key per line, a fixed layout), arms and
disarms (on the installed system: a mounted ``/data`` directory and ESP; or against a disk image / block device,
read and written without mounting: debugfs for the ext4 ``/data``, mtools for the ESP), and collects the bundles
into the usual run folder (results.csv, boots.csv, environment.json, report.html).
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labkit.core.errors import InputError, LabkitError
from labkit.core.files import atomic_write_text
from labkit.core.runner import Runner
from labkit.lab.boot import BootRecord, write_boots_csv
from labkit.measure.bundle import Bundle, BundleError, parse_bundle_text
from labkit.measure.environment import capture_environment, guest_kernels, write_environment
from labkit.measure.metrics import measure_bundle, missing_json, os_family
from labkit.measure.results import ResultRow, write_results_csv
from labkit.systems import bootchain
from labkit.systems.alpine.diskaudit import blkid_fields, list_ext_dir, read_ext_file
from labkit.targets.base import MTOOLS_ENV
from labkit.targets.gpt import TYPE_GUIDS, read_gpt

SYSTEMS = ("nixos", "alpine")
ORDERS = ("interleaved", "blocked")
STATE_REL = "labkit/loop.json"
BUNDLES_REL = "labkit/bundles"
ORIG_SUFFIX = ".labkit-orig"
DATA_LABEL = "data"
ESP_LABEL = "ESP"
#: a boot that comes back later than this after the loop rebooted is recorded as failed (a hang, then a reset)
MAX_GAP_S = 900
MAX_ROUNDS = 200


class LoopError(LabkitError):
    """The loop state or the disk it lives on is not usable."""


# -- the state ----------------------------------------------------------------------------------------
def plan(systems: Sequence[str], rounds: int, order: str) -> list[str]:
    """The systems in boot order: interleaved ``a b a b`` or blocked ``a a b b``."""
    if not 1 <= rounds <= MAX_ROUNDS:
        raise InputError(f"--rounds {rounds} is outside 1..{MAX_ROUNDS}", "use e.g. --rounds 5")
    bad = [s for s in systems if s not in SYSTEMS]
    if bad or not systems or len(set(systems)) != len(systems):
        raise InputError(f"--systems {' '.join(systems)}: each of {', '.join(SYSTEMS)} at most once",
                         "e.g. --systems nixos alpine")
    if order not in ORDERS:
        raise InputError(f"--order {order!r}", f"choose {' or '.join(ORDERS)}")
    if order == "interleaved":
        return [s for _ in range(rounds) for s in systems]
    return [s for s in systems for _ in range(rounds)]


def _q(text: str) -> str:
    if any(c in text for c in '"\\\n'):
        raise InputError(f"{text!r} holds a quote, backslash or newline", "the loop state takes plain text only")
    return json.dumps(text)


def state_json(*, armed: bool, plan_: Sequence[str], titles: dict[str, str], next_: int = 0,
               expected: str = "", rebooted_at: int = 0, max_gap_s: int = MAX_GAP_S, reason: str = "",
               boots: Sequence[dict[str, Any]] = (), esp_label: str = ESP_LABEL,
               conf: str = bootchain.ESP_REFIND_CONF, armed_at: int = 0) -> str:
    """loop.json in the fixed layout ``loop.sh`` reads (one ``"key": value`` per line, one boot per line)."""
    lines = [
        '  "version": 1',
        f'  "armed": {"true" if armed else "false"}',
        f'  "plan": [{", ".join(_q(s) for s in plan_)}]',
        f'  "next": {int(next_)}',
        f'  "expected": {_q(expected)}',
        f'  "rebooted_at": {int(rebooted_at)}',
        f'  "max_gap_s": {int(max_gap_s)}',
        f'  "armed_at": {int(armed_at)}',
        f'  "esp_label": {_q(esp_label)}',
        f'  "conf": {_q(conf)}',
        *(f'  "title_{s}": {_q(t)}' for s, t in sorted(titles.items())),
        f'  "reason": {_q(reason)}',
    ]
    boot_lines = ["    " + json.dumps(b, separators=(", ", ": ")) for b in boots]
    body = ",\n".join(lines) + ',\n  "boots": [\n' + ",\n".join(boot_lines) + ("\n" if boot_lines else "") + "  ]\n"
    return "{\n" + body + "}\n"


def read_state(text: str, where: str) -> dict[str, Any]:
    try:
        state = json.loads(text)
    except ValueError as exc:
        raise LoopError(f"{where} is not valid JSON ({exc})",
                        "run `labkit measure disarm` to restore refind.conf, then arm again") from None
    if not isinstance(state, dict) or not isinstance(state.get("plan"), list):
        raise LoopError(f"{where} is not a labkit loop state", "run `labkit measure arm` to write one")
    return state


def _state_from(state: dict[str, Any], **change: Any) -> str:
    titles = {k[len("title_"):]: v for k, v in state.items() if k.startswith("title_")}
    keep = {"armed": bool(state.get("armed")), "plan_": state["plan"], "titles": titles,
            "next_": int(state.get("next", 0)), "expected": str(state.get("expected", "")),
            "rebooted_at": int(state.get("rebooted_at", 0)), "max_gap_s": int(state.get("max_gap_s", MAX_GAP_S)),
            "reason": str(state.get("reason", "")), "boots": list(state.get("boots", [])),
            "esp_label": str(state.get("esp_label", ESP_LABEL)),
            "conf": str(state.get("conf", bootchain.ESP_REFIND_CONF)),
            "armed_at": int(state.get("armed_at", 0))}
    keep.update(change)
    return state_json(**keep)


# -- where /data and the ESP are ------------------------------------------------------------------------
@dataclass(frozen=True)
class Place:
    """``/data`` and the ESP: mounted directories, or partitions of a disk image / block device."""

    data_dir: Path | None = None  # a mounted /data
    esp_dir: Path | None = None  # a mounted ESP
    disk: Path | None = None  # an image or block device holding both
    data_offset: int = 0
    esp_offset: int = 0

    @property
    def data_spec(self) -> str:
        return f"{self.disk}?offset={self.data_offset}"

    @property
    def esp_spec(self) -> str:
        return f"{self.disk}@@{self.esp_offset}"


def locate(runner: Runner, data: Path, esp: Path | None = None) -> Place:
    """``data``: a directory (the mounted /data; the ESP then at ``esp``, default /boot/efi) or a disk image /
    block device with a GPT whose ext4 partition labelled ``data`` and whose EFI system partition are used."""
    if not data.exists():
        raise InputError(f"{data} does not exist", "give the mounted /data directory, a disk image or a block device")
    if data.is_dir():
        return Place(data_dir=data, esp_dir=esp)
    mode = os.stat(data).st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
        raise InputError(f"{data} is neither a directory, a disk image nor a block device", "give one of these")
    try:
        table = read_gpt(data)
    except LabkitError as exc:
        raise InputError(f"{data} has no readable GPT: {exc.problem}",
                         "give the whole disk labkit installed (e.g. /dev/sdb or the lab image), "
                         "not a partition") from None
    data_off = esp_off = None
    labels = []
    for e in table.entries:
        fields = blkid_fields(runner, str(data), e.start)
        labels.append(f"{e.number}:{fields.get('TYPE', '?')}:{fields.get('LABEL', '')}")
        if fields.get("LABEL") == DATA_LABEL and fields.get("TYPE", "").startswith("ext"):
            data_off = e.start
        if e.type_guid == TYPE_GUIDS["ef00"]:
            esp_off = e.start
    if data_off is None:
        raise InputError(f"{data} has no ext4 partition labelled '{DATA_LABEL}' (partitions: {', '.join(labels)})",
                         "install with `labkit install` (its layout has /data), or give the mounted /data directory")
    return Place(disk=data, data_offset=data_off, esp_offset=esp_off or 0)


def _debugfs(runner: Runner, place: Place, script: str, *, write: bool = False) -> str:
    with tempfile.TemporaryDirectory(prefix="labkit-debugfs-") as tmp:
        cmds = Path(tmp) / "cmds"
        cmds.write_text(script)
        argv: list[str | Path] = ["debugfs", *(["-w"] if write else []), "-f", cmds, place.data_spec]
        return runner.run(argv, query=not write, check=False).stdout


def read_data(runner: Runner, place: Place, rel: str) -> bytes | None:
    """A file of /data (``rel`` under it), or None when it is not there."""
    if place.data_dir is not None:
        p = place.data_dir / rel
        return p.read_bytes() if p.is_file() else None
    with tempfile.TemporaryDirectory(prefix="labkit-read-") as tmp:
        return read_ext_file(runner, place.data_spec, rel, Path(tmp) / "f")


def list_bundles(runner: Runner, place: Place) -> list[str]:
    """The names of the bundle files in /data/labkit/bundles (no temporary ``.*.tmp``), sorted."""
    if place.data_dir is not None:
        d = place.data_dir / BUNDLES_REL
        names = [p.name for p in d.iterdir() if p.is_file()] if d.is_dir() else []
    else:
        names = [n for n, kind in list_ext_dir(runner, place.data_spec, "/" + BUNDLES_REL) if kind == "file"]
    return sorted(n for n in names if n.endswith(".txt") and not n.startswith("."))


def write_data(runner: Runner, place: Place, rel: str, text: str) -> None:
    """Write a file of /data: atomically in a mounted directory; in an image through ``debugfs -w`` (the
    image is not in use: nothing else writes it meanwhile)."""
    if place.data_dir is not None:
        atomic_write_text(place.data_dir / rel, text)
        return
    with tempfile.TemporaryDirectory(prefix="labkit-write-") as tmp:
        src = Path(tmp) / "f"
        src.write_text(text)
        parts = rel.split("/")
        mk = "".join(f'mkdir "/{"/".join(parts[:i])}"\n' for i in range(1, len(parts)))
        _debugfs(runner, place, f'{mk}rm "/{rel}"\nwrite "{src}" "/{rel}"\n', write=True)
    if read_data(runner, place, rel) != text.encode():
        raise LoopError(f"/data/{rel} in {place.disk} did not read back as written",
                        f"check the filesystem: e2fsck -f on the data partition of {place.disk}")


# -- the ESP's refind.conf --------------------------------------------------------------------------------
def conf_with_default(text: str, title: str) -> str:
    """refind.conf with ``default_selection "title"``: the first such line replaced (later ones dropped), or
    one added before the first menuentry: the same one-line change as loop.sh's ``labkit_conf_select``
    (rEFInd config.c: one token, a quoted title is one; menu.c: a case-insensitive substring of the titles)."""
    out: list[str] = []
    done = False
    sel = f'default_selection "{title}"'
    for ln in text.splitlines():
        s = ln.lstrip(" \t")
        if s.split(None, 1)[:1] == ["default_selection"]:
            if not done:
                out.append(sel)
            done = True
            continue
        if not done and s.split(None, 1)[:1] == ["menuentry"]:
            out.append(sel)
            done = True
        out.append(ln)
    if not done:
        out.append(sel)
    return "\n".join(out) + "\n"


def _esp_read(runner: Runner, place: Place, rel: str) -> str | None:
    if place.esp_dir is not None:
        p = place.esp_dir / rel
        return p.read_text() if p.is_file() else None
    res = runner.run(["mtype", "-i", place.esp_spec, f"::/{rel}"], env=MTOOLS_ENV, query=True, check=False)
    return res.stdout if res.rc == 0 else None


def _esp_write(runner: Runner, place: Place, rel: str, text: str | None) -> None:
    """Write (or with None delete) a file on the ESP, then read it back."""
    if place.esp_dir is not None:
        p = place.esp_dir / rel
        if text is None:
            p.unlink(missing_ok=True)
        else:
            atomic_write_text(p, text)
        os.sync()
    else:
        if text is None:
            runner.run(["mdel", "-i", place.esp_spec, f"::/{rel}"], env=MTOOLS_ENV, check=False)
        else:
            with tempfile.TemporaryDirectory(prefix="labkit-esp-") as tmp:
                src = Path(tmp) / "f"
                src.write_text(text)
                runner.run(["mcopy", "-o", "-i", place.esp_spec, src, f"::/{rel}"], env=MTOOLS_ENV)
    if _esp_read(runner, place, rel) != text:
        raise LoopError(f"{rel} on the ESP did not read back as written", "check the ESP with fsck.vfat")


def esp_text(runner: Runner, place: Place) -> str | None:
    """The ESP's refind.conf (None when there is none)."""
    return _esp_read(runner, place, bootchain.ESP_REFIND_CONF)


def conf_titles(text: str) -> list[str]:
    return [ln.split('"')[1] for ln in text.splitlines() if ln.strip().startswith("menuentry") and ln.count('"') >= 2]


def _titles(conf: str, systems: Sequence[str], given: dict[str, str]) -> dict[str, str]:
    titles = conf_titles(conf)
    out: dict[str, str] = {}
    for s in systems:
        if s in given:
            found = [t for t in titles if given[s].lower() in t.lower()]
            if not found:
                raise InputError(f"no rEFInd entry matches --title {s}={given[s]!r} (entries: {titles})",
                                 "give a piece of one of the entry titles")
            out[s] = given[s]
            continue
        found = [t for t in titles if s in t.lower()]
        if len(found) != 1:
            raise InputError(f"refind.conf has {len(found)} entries whose title names {s} (entries: {titles})",
                             f"say which one: --title {s}=<a piece of its title>")
        out[s] = found[0]
    for s, t in out.items():
        others = [u for u in titles if t.lower() in u.lower()]
        if len(others) != 1:
            raise InputError(f"the title {t!r} for {s} matches {len(others)} entries ({others}): rEFInd picks the "
                             "first one whose title contains it", "give a piece of the title that only it has")
    return out


# -- arm / disarm ------------------------------------------------------------------------------------------
def arm(runner: Runner, place: Place, *, rounds: int, systems: Sequence[str] = SYSTEMS, order: str = "interleaved",
        titles: dict[str, str] | None = None, max_gap_s: int = MAX_GAP_S) -> dict[str, Any]:
    """Write an armed loop.json and point rEFInd's default at the plan's first system (the original refind.conf
    kept as ``refind.conf.labkit-orig``). The next boot is the plan's first; the probe does the rest."""
    order_ = plan(systems, rounds, order)
    conf_rel = bootchain.ESP_REFIND_CONF
    if place.esp_dir is None and place.disk is None:
        raise InputError("no ESP given", "pass --esp with the mounted ESP (e.g. /boot/efi)")
    old = read_data(runner, place, STATE_REL)
    if old is not None and read_state(old.decode(errors="replace"), "loop.json").get("armed"):
        raise InputError("the loop is already armed (/data/labkit/loop.json)", "disarm it first: labkit measure disarm")
    orig = _esp_read(runner, place, conf_rel + ORIG_SUFFIX)
    conf = orig if orig is not None else _esp_read(runner, place, conf_rel)
    if conf is None:
        raise InputError(f"the ESP has no {conf_rel}", "install rEFInd with `labkit install` first")
    chosen = _titles(conf, systems, titles or {})
    if orig is None:
        _esp_write(runner, place, conf_rel + ORIG_SUFFIX, conf)
    text = state_json(armed=True, plan_=order_, titles=chosen, expected=order_[0], max_gap_s=max_gap_s,
                      armed_at=int(time.time()),
                      reason=f"armed: {rounds} rounds of {' '.join(systems)}, {order}")
    _esp_write(runner, place, conf_rel, conf_with_default(conf, chosen[order_[0]]))
    write_data(runner, place, STATE_REL, text)
    return read_state(text, "loop.json")


def disarm(runner: Runner, place: Place, reason: str = "disarmed by hand (labkit measure disarm)") -> dict[str, Any]:
    """Put the original refind.conf back and mark the loop disarmed (its recorded boots kept)."""
    conf_rel = bootchain.ESP_REFIND_CONF
    orig = _esp_read(runner, place, conf_rel + ORIG_SUFFIX) if (place.esp_dir or place.disk) else None
    if orig is not None:
        _esp_write(runner, place, conf_rel, orig)
        _esp_write(runner, place, conf_rel + ORIG_SUFFIX, None)
    old = read_data(runner, place, STATE_REL)
    if old is None:
        if orig is None:
            raise InputError("there is no loop state (/data/labkit/loop.json) and no kept refind.conf",
                             "nothing to disarm")
        return {}
    state = read_state(old.decode(errors="replace"), "loop.json")
    boots = list(state.get("boots", []))
    if state.get("armed") and (int(state.get("rebooted_at", 0)) > 0 or boots) and state.get("expected"):
        # the loop rebooted into the expected boot and it never came back to record itself: it failed
        boots.append({"index": int(state.get("next", 0)), "system": str(state["expected"]), "boot_id": "",
                      "status": "failed", "at": int(time.time()), "reason": f"never came back ({reason})"})
    text = _state_from(state, armed=False, reason=reason if state.get("armed") else state.get("reason", reason),
                       rebooted_at=0, boots=boots)
    write_data(runner, place, STATE_REL, text)
    return read_state(text, "loop.json")


# -- collect ----------------------------------------------------------------------------------------------
def in_vm(bundle: Bundle) -> str | None:
    """``kvm`` / ``tcg`` when the bundle's dmesg says the machine is QEMU, else None (hardware)."""
    dmesg = bundle.sections.get("dmesg", "")
    if "DMI: QEMU" not in dmesg and "Hypervisor detected" not in dmesg:
        return None
    return "kvm" if "Hypervisor detected: KVM" in dmesg else "tcg"


@dataclass(frozen=True)
class Collected:
    out: Path
    boots: tuple[BootRecord, ...]
    rows: tuple[ResultRow, ...]
    label: str  # hardware | lab VM
    state: dict[str, Any] | None


def _boot_id(name: str) -> tuple[str, str]:
    """``alpine-rehearsal-<boot id>.txt`` → (``alpine-rehearsal``, boot id): the probe's file name."""
    stem = name[:-4] if name.endswith(".txt") else name
    for os_id in ("alpine-rehearsal", "nixos-rehearsal", "alpine", "nixos"):
        if stem.startswith(os_id + "-"):
            return os_id, stem[len(os_id) + 1:]
    return "unknown", stem


def collect(runner: Runner, place: Place, out: Path, *, report: bool = True,
            serial_t_begin: dict[str, float] | None = None, accel: str | None = None,
            extra_env: dict[str, Any] | None = None) -> Collected:
    """Every bundle on /data, and the loop's failed boots, as a run folder in ``out``.

    The lab (:mod:`labkit.lab.rebootloop`) passes ``serial_t_begin`` (boot id → host time of the bundle's BEGIN
    line, counted from that boot's reset), so the host-timed metrics sit beside the in-guest ones, and ``accel``."""
    names = list_bundles(runner, place)
    state_raw = read_data(runner, place, STATE_REL)
    state = read_state(state_raw.decode(errors="replace"), "loop.json") if state_raw is not None else None
    if not names and not (state or {}).get("boots"):
        where = place.data_dir or place.disk
        raise InputError(f"no bundle in /data/labkit/bundles and no recorded loop boot on {where}",
                         "boot the installed systems (the probe saves a bundle each boot), then collect")
    out.mkdir(parents=True, exist_ok=True)
    (out / "bundles").mkdir(exist_ok=True)
    run_id = out.resolve().name
    loop_boots = {str(b.get("boot_id")): b for b in (state or {}).get("boots", []) if b.get("boot_id")}
    parsed: list[tuple[str, str, Bundle | None, str]] = []  # (os, boot id, bundle, problem)
    for name in names:
        os_guess, boot_id = _boot_id(name)
        data = read_data(runner, place, f"{BUNDLES_REL}/{name}")
        if data is None:
            parsed.append((os_guess, boot_id, None, f"{name} could not be read"))
            continue
        atomic_write_text(out / "bundles" / name, data.decode("latin-1"))
        try:
            got = parse_bundle_text(data.decode("latin-1"), strict=False)
        except BundleError as exc:
            parsed.append((os_guess, boot_id, None, exc.problem))
            continue
        parsed.append((got.os, boot_id, got, "; ".join(got.problems)))

    def order_key(item: tuple[str, str, Bundle | None, str]) -> tuple[int, float, str]:
        lb = loop_boots.get(item[1])
        return (0, float(lb.get("index", 0)), item[1]) if lb else (1, 0.0, item[1])

    parsed.sort(key=order_key)
    vm = {in_vm(b) for _o, _i, b, _p in parsed if b is not None} - {None}
    label = "lab VM" if vm or accel in ("tcg", "kvm") else "hardware"
    rows: list[ResultRow] = []
    counts: dict[str, int] = {}
    entries: list[tuple[int, str, BootRecord]] = []  # (plan index or big, ...)
    for os_id, boot_id, b, problem in parsed:
        n = counts.get(os_family(os_id), 0)
        counts[os_family(os_id)] = n + 1
        accel_ = accel or ((in_vm(b) or "hardware") if b is not None else ("tcg" if vm else "hardware"))
        rel = f"bundles/{os_id}-{boot_id}.txt"
        lb = loop_boots.get(boot_id)
        t_begin = (serial_t_begin or {}).get(boot_id)
        if b is not None and b.ok:
            if t_begin is not None:
                b = Bundle(b.os, b.guest, b.sections, t_begin, b.complete, b.md5_ok, b.version, b.problems)
            try:
                m = measure_bundle(b)
            except BundleError as exc:
                rec = BootRecord(os_id, n, False, False, exc.problem, float("nan"), accel_, False, "", rel)
            else:
                rows += [ResultRow(run_id, b.os, b.guest, n, False, accel_, x.name, x.value, x.unit, x.source)
                         for x in m.metrics]
                why = "loop boot" if lb else "not part of a loop"
                rec = BootRecord(os_id, n, False, True, f"{why}; boot id {boot_id}", float("nan"), accel_, False, "",
                                 rel, missing_json(m.missing))
        else:
            rec = BootRecord(os_id, n, False, False, f"bundle {rel}: {problem or 'unreadable'}", float("nan"), accel_,
                             False, "", rel)
        entries.append((int(lb["index"]) if lb else 10**6 + len(entries), boot_id, rec))
    for fb in (state or {}).get("boots", []):
        if fb.get("status") != "failed":
            continue
        system = str(fb.get("system") or "unknown")
        os_id = next((o for o, _i, _b, _p in parsed if os_family(o) == system), system)
        n = counts.get(system, 0)
        counts[system] = n + 1
        reason = f"loop boot {fb.get('index')} ({system}) failed: {fb.get('reason', 'no bundle')}"
        entries.append((int(fb.get("index", 0)), "", BootRecord(os_id, n, False, False, reason, float("nan"),
                                                                 accel or ("tcg" if vm else "hardware"), False,
                                                                 "", None)))
    entries.sort(key=lambda e: (e[0], e[1]))
    records = [e[2] for e in entries]
    write_boots_csv(records, out / "boots.csv")
    write_results_csv(rows, out / "results.csv")
    bundles = [b for _o, _i, b, _p in parsed if b is not None]
    extra: dict[str, Any] = {
        "run_id": run_id, "label": label, "source": str(place.data_dir or place.disk),
        "guest_kernel": guest_kernels(bundles),
        "loop": state, "boots_ok": sum(r.ok for r in records), "boots_failed": sum(not r.ok for r in records),
        "note": "collected from /data/labkit: 'host' below is the machine that ran labkit measure collect, not "
                "the measured machine (its kernels are in guest_kernel)",
        **(extra_env or {}),
    }
    params = {"target": label, "systems": sorted({os_family(r.os) for r in records}),
              "rounds": len((state or {}).get("plan", [])) // max(1, len(set((state or {}).get("plan", [])))) or None}
    write_environment(capture_environment(params, extra, runner=runner), out)
    atomic_write_text(out / "run.json", json.dumps({"run_id": run_id, "ok": all(r.ok for r in records)}) + "\n")
    if report and rows:
        from labkit.report.report import render_report

        render_report(out, runner=runner)
    return Collected(out, tuple(records), tuple(rows), label, state)
