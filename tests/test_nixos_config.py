"""The NixOS configuration model: rendering (checked with the real nix-instantiate), hashes, validation."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import synth

from labkit.core.errors import InputError
from labkit.core.layout import SEED_LAYOUT, GiB
from labkit.systems.nixos.config import (
    HOME_MANAGER_PINS,
    IMPERMANENCE_REPO,
    Devices,
    NeedsUserInput,
    NixosSettings,
    Pin,
    User,
    check_ssh_key,
    mem_total_bytes,
    render_module,
)
from labkit.systems.nixos.hashes import check_hash, hash_kind, hash_password, read_hash_file, verify_password
from labkit.systems.nixos.nixexpr import nix_string

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA lab@demo"
SHA512 = ("$6$rounds=5000$saltsaltsaltsalt$" + "a" * 86)
YESCRYPT = "$y$j9T$F5Jx5fExrKuPp53xLKQ..1$" + "X" * 43
MEM = 4 * GiB
IMPERMANENCE = Pin(IMPERMANENCE_REPO, synth.IMPERMANENCE_PIN_REV, synth.IMPERMANENCE_PIN_SHA256)

needs_nix = pytest.mark.skipif(shutil.which("nix-instantiate") is None, reason="nix-instantiate (nix-bin) missing")


def nix_parse(path: Path) -> str:
    proc = subprocess.run(["nix-instantiate", "--parse", str(path)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"nix-instantiate --parse {path} failed:\n{proc.stderr}\n{path.read_text()}"
    return proc.stdout


AUTH = {"password": User(hashed_password=SHA512), "ssh-key": User(ssh_keys=(KEY,)),
        "both": User(hashed_password=YESCRYPT, ssh_keys=(KEY, KEY.replace("lab@demo", "other")))}
COMBOS = list(itertools.product(AUTH, [False, True], [False, True], [False, True], [False, True]))


@needs_nix
@pytest.mark.parametrize(("auth", "impermanence", "home_manager", "probe", "serial"), COMBOS,
                         ids=["-".join([a, *("on" if f else "off" for f in rest)]) for a, *rest in COMBOS])
def test_every_combination_parses(tmp_path: Path, auth: str, impermanence: bool, home_manager: bool, probe: bool,
                                  serial: bool) -> None:
    s = NixosSettings(user=AUTH[auth], impermanence=impermanence, home_manager_user="lab" if home_manager else None,
                      probe=probe, serial_console=serial, impermanence_pin=IMPERMANENCE)
    text = render_module(s, mem_total=MEM)
    f = tmp_path / "labkit.nix"
    f.write_text(text)
    nix_parse(f)
    assert ("environment.persistence" in text) is impermanence
    assert ("home-manager.users.lab" in text) is home_manager
    assert ("systemd.services.labkit-probe" in text) is probe
    assert ("console=ttyS0,115200n8" in text) is serial
    assert ("services.openssh" in text) is (auth != "password")
    assert ("wheelNeedsPassword = false" in text) is (auth == "ssh-key")


def test_module_carries_the_tmpfs_root_facts() -> None:
    text = render_module(NixosSettings(user=User(hashed_password=SHA512), tmpfs_size="1G",
                                       devices=Devices.from_layout(SEED_LAYOUT)), mem_total=MEM)
    assert 'fsType = "tmpfs";' in text and '"size=1G" "mode=755"' in text
    assert text.count("neededForBoot = true;") == 2  # /nix and /data
    assert 'device = "nodev";' in text and "efiSupport = true;" in text
    assert 'efiSysMountPoint = "/boot/efi";' in text and "canTouchEfiVariables = false;" in text
    assert "boot.loader.systemd-boot.enable = lib.mkForce false;" in text
    assert "users.mutableUsers = false;" in text and f'hashedPassword = "{SHA512}";' in text
    assert "system.copySystemConfiguration = true;" in text
    assert '"nixos-config=/data/etc/nixos/configuration.nix"' in text
    assert "/dev/disk/by-label/nixboot" in text and "/dev/disk/by-label/ESP" in text
    # the probe waits for the end of the boot instead of holding it open
    assert 'Type = "simple";' in text and "systemctl is-system-running --wait" in text


@needs_nix
@pytest.mark.parametrize("s", ['plain', 'quote " and \\ backslash', "${builtins.abort 1}", "$${x}", "a\nb\tc\r",
                               "''", "dollar $ alone", "unicode é ✓"])
def test_nix_string_escaping_round_trips(s: str) -> None:
    proc = subprocess.run(["nix-instantiate", "--eval", "--json", "-E", nix_string(s)], capture_output=True,
                          text=True, check=True)
    assert json.loads(proc.stdout) == s


@needs_nix
def test_hostile_values_stay_strings(tmp_path: Path) -> None:
    key = KEY.replace("lab@demo", 'x"; users.users.root.hashedPassword = ""; ${abort}')
    text = render_module(NixosSettings(user=User(ssh_keys=(key,))), mem_total=MEM)
    f = tmp_path / "m.nix"
    f.write_text(text)
    nix_parse(f)
    assert 'root.hashedPassword = ""' not in text.replace('\\"', "")


# -- hashes ----------------------------------------------------------------------------------------

def test_hash_password_makes_a_checked_sha512() -> None:
    h = hash_password("correct horse", rounds=5000)
    assert hash_kind(h) == "sha512" and verify_password("correct horse", h)
    assert not verify_password("wrong", h)


@pytest.mark.parametrize("good", [SHA512, "$6$abc$" + "b" * 86, YESCRYPT])
def test_good_hashes(good: str) -> None:
    assert check_hash(good) == good


@pytest.mark.parametrize(("bad", "message"), [
    ("hunter2", "looks like a plaintext password"),
    ("", "empty"),
    ("$6$salt$tooshort", "malformed password hash"),
    ("$6$" + "s" * 17 + "$" + "a" * 86, "malformed"),
    ("$6$salt$" + "a" * 85 + "!", "malformed"),
    ("$y$j9T$salt$" + "X" * 42, "malformed"),
    ("$1$salt$abcdefghijklmnopqrstuv", "scheme $1$"),
    ("$2b$12$" + "a" * 53, "scheme $2b$"),
    (SHA512 + " ", "whitespace"),
    ("$6$rounds=10$salt$" + "a" * 86, "rounds=10"),
])
def test_bad_hashes_rejected_with_a_fix(bad: str, message: str) -> None:
    with pytest.raises(InputError, match=r"fix: .*mkpasswd") as exc:
        check_hash(bad)
    assert message in exc.value.problem


def test_hash_file(tmp_path: Path) -> None:
    f = tmp_path / "h"
    f.write_text(YESCRYPT + "\n")
    assert read_hash_file(f) == YESCRYPT
    f.write_text("secret\n")
    with pytest.raises(InputError, match="plaintext"):
        read_hash_file(f)
    with pytest.raises(InputError, match="does not exist"):
        read_hash_file(tmp_path / "missing")


# -- validation ------------------------------------------------------------------------------------

def test_lockout_rejected() -> None:
    with pytest.raises(InputError, match="neither a password hash nor an SSH key") as exc:
        render_module(NixosSettings(user=User()), mem_total=MEM)
    assert "--hashed-password-file" in str(exc.value.fix)


def test_tmpfs_above_ram_rejected(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:        2035000 kB\nMemFree:          100000 kB\n")
    mem = mem_total_bytes(meminfo)
    assert mem == 2035000 * 1024
    ok = NixosSettings(user=User(ssh_keys=(KEY,)), tmpfs_size="1G")
    render_module(ok, mem_total=mem)
    with pytest.raises(InputError, match=r"tmpfs size 4G \(4.0 GiB\) is more than the machine's RAM \(1.9 GiB\)"):
        render_module(NixosSettings(user=User(ssh_keys=(KEY,)), tmpfs_size="4G"), mem_total=mem)
    with pytest.raises(InputError, match="more than the machine's RAM"):
        render_module(NixosSettings(user=User(ssh_keys=(KEY,)), tmpfs_size="150%"), mem_total=mem)
    render_module(NixosSettings(user=User(ssh_keys=(KEY,)), tmpfs_size="50%"), mem_total=mem)
    with pytest.raises(InputError, match="not a size tmpfs understands"):
        render_module(NixosSettings(user=User(ssh_keys=(KEY,)), tmpfs_size="2 gigs"), mem_total=mem)


@pytest.mark.parametrize(("key", "message"), [
    ("ssh-ed25519", "not an OpenSSH public key"),
    ("ssh-dss AAAAB3NzaC1kc3M= x", "not an OpenSSH public key"),
    ("ssh-ed25519 !!!notbase64 x", "damaged"),
    ("ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA x", "does not encode a ssh-rsa"),
])
def test_bad_ssh_keys(key: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        check_ssh_key(key)


def test_other_bad_inputs() -> None:
    with pytest.raises(InputError, match="user name 'root'"):
        render_module(NixosSettings(user=User(name="root", ssh_keys=(KEY,))), mem_total=MEM)
    with pytest.raises(InputError, match="home-manager user 'bob'"):
        render_module(NixosSettings(user=User(ssh_keys=(KEY,)), home_manager_user="bob"), mem_total=MEM)
    with pytest.raises(InputError, match="host name"):
        render_module(NixosSettings(user=User(ssh_keys=(KEY,)), hostname="bad_host!"), mem_total=MEM)


@needs_nix
def test_probe_unit_path_holds_the_systems_nix(tmp_path: Path) -> None:
    """Evaluated by the real nix-instantiate: the probe unit's path ends with config.nix.package (the module's
    config, not pkgs.config), so the probe finds `nix` and measures the closure of /run/current-system."""
    f = tmp_path / "labkit.nix"
    f.write_text(render_module(NixosSettings(user=User(ssh_keys=(KEY,))), mem_total=MEM))
    tools = ["coreutils", "gawk", "gnugrep", "util-linux", "procps", "systemd"]
    pkgs = "{ config = { nix.package = \"pkgs.config: wrong\"; }; " + " ".join(f'{t} = "{t}";' for t in tools) + " }"
    expr = (f"(import {f} {{ config = {{ nix.package = \"the system's nix\"; }}; "
            f"lib = {{ mkForce = x: x; mkDefault = x: x; }}; pkgs = {pkgs}; }}).systemd.services.labkit-probe.path")
    proc = subprocess.run(["nix-instantiate", "--eval", "--strict", "--json", "-E", expr], capture_output=True,
                          text=True, check=True)
    assert json.loads(proc.stdout) == [*tools, "the system's nix"]


def test_fetches_are_pinned_or_refused() -> None:
    """impermanence: no verified pin exists, so the user gives one or the render is refused; home-manager:
    labkit's verified pin for the release (24.11 here), never a branch tarball without a hash."""
    with pytest.raises(NeedsUserInput, match="impermanence would be fetched without a pinned revision") as exc:
        render_module(NixosSettings(user=User(ssh_keys=(KEY,)), impermanence=True), mem_total=MEM)
    assert "nix-prefetch-url --unpack https://github.com/nix-community/impermanence/archive/<commit>.tar.gz" in str(
        exc.value.fix) and "--impermanence-pin" in str(exc.value.fix)
    text = render_module(NixosSettings(user=User(ssh_keys=(KEY,)), impermanence=True, impermanence_pin=IMPERMANENCE,
                                       home_manager_user="lab"), mem_total=MEM)
    hm = HOME_MANAGER_PINS["24.11"]
    assert f'url = "{IMPERMANENCE.url}"; sha256 = "{IMPERMANENCE.sha256}";' in text
    assert f'url = "{hm.url}"; sha256 = "{hm.sha256}";' in text
    assert "master.tar.gz" not in text and "release-24.11.tar.gz" not in text
    with pytest.raises(NeedsUserInput, match=r"no verified pin for it with NixOS 25\.05"):
        render_module(NixosSettings(user=User(ssh_keys=(KEY,)), home_manager_user="lab", state_version="25.05"),
                      mem_total=MEM)
    for bad, message in ((Pin(IMPERMANENCE_REPO, "master", IMPERMANENCE.sha256), "not a 40-hex commit"),
                         (Pin(IMPERMANENCE_REPO, IMPERMANENCE.rev, "0000"), "is not a sha256")):
        with pytest.raises(InputError, match=message):
            render_module(NixosSettings(user=User(ssh_keys=(KEY,)), impermanence=True, impermanence_pin=bad),
                          mem_total=MEM)


def test_plan_mode_turns_what_only_the_user_can_give_into_findings(tmp_path: Path) -> None:
    findings: list[NeedsUserInput] = []
    text = render_module(NixosSettings(user=User(), impermanence=True), mem_total=MEM, findings=findings)
    assert [f.problem.split(":")[0] for f in findings] == [
        "user 'lab' has neither a password hash nor an SSH key",
        "impermanence would be fetched without a pinned revision and hash (builtins.fetchTarball of a branch "
        "changes under the configuration); labkit has no verified pin for it with NixOS 24.11 (verified pins"]
    assert "# PLAN ONLY, NOT INSTALLABLE" in text and text.count("assertion = false;") == 2
    assert "(throw " in text and "fetchTarball {" not in text  # the unpinned fetch is never written
    with pytest.raises(InputError, match="not usable"):  # anything else still raises
        render_module(NixosSettings(user=User(name="root")), mem_total=MEM, findings=[])
    if shutil.which("nix-instantiate"):
        (tmp_path / "labkit.nix").write_text(text)
        nix_parse(tmp_path / "labkit.nix")
