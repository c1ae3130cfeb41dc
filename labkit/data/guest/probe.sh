#!/bin/sh
# labkit probe: print one bundle (docs/contracts.md) to the console, then return.
# Cheap on purpose: /proc/uptime is read first and the BEGIN line is printed at once (the host
# stamps it: host time of BEGIN - uptime = when the kernel started); the timing sources (dmesg)
# and RAM (/proc/meminfo, free) are read next, with no settle delay; everything else is collected
# into one file in RAM and printed in one go. uptime_end (read last, before printing) gives the
# probe's own cost; then, after a fixed settle (labkit.settle=S on the kernel command line, default
# 2 s; LABKIT_PROBE_SETTLE overrides), /proc/meminfo again. Raw outputs only: parsing happens on the host.
# Optional sections (os_release, systemd_*, rc_log, rc_status, apk_*, nix_*) are written only where their
# source exists.
# Overrides for tests: LABKIT_PROBE_ROOT (prefix for /proc, /etc, /var, /run, /lib, /media, /nix),
# LABKIT_PROBE_OUT (instead of /dev/console), LABKIT_PROBE_DMESG (a file instead of `dmesg`),
# LABKIT_PROBE_SYSTEM (the NixOS system whose closure is measured, instead of /run/current-system),
# LABKIT_PROBE_DATA (where /data is, instead of $R/data when /data is a mount point).
# After printing, the bundle is also saved as /data/labkit/bundles/<os>-<boot id>.txt when /data is mounted
# (atomically: temporary file, sync, rename), and an armed reboot loop (/data/labkit/loop.json) takes its
# next step (the functions below, from loop.sh).
R=${LABKIT_PROBE_ROOT:-}
SYSTEM=${LABKIT_PROBE_SYSTEM:-/run/current-system}
OUT=${LABKIT_PROBE_OUT:-/dev/console}
UPTIME=$(cat "$R/proc/uptime")
# The rehearsal's base package ships etc/labkit-rehearsal: it wins over etc/labkit-os (which labkit's
# apkovl writes as "alpine" for real media), so a rehearsal guest never reports itself as Alpine.
OS=$(cat "$R/etc/labkit-rehearsal" 2>/dev/null) || OS=$(cat "$R/etc/labkit-os" 2>/dev/null) || OS=unknown
case "$OS" in
	*-rehearsal) GUEST=rehearsal ;;
	*) GUEST=real ;;
esac
TMP=${TMPDIR:-/tmp}/labkit-probe.$$
BODY=$TMP.body
BEGIN="@@LABKIT-BUNDLE-BEGIN v=1 os=$OS guest=$GUEST@@"
echo "$BEGIN" > "$OUT"

N=0
section() {
	N=$((N + 1))
	echo "@@SECTION $1@@"
}
have() {
	command -v "$1" > /dev/null 2>&1
}

{
	section uptime
	echo "$UPTIME"
	# where the probe ran when it is not the booted system (the Alpine-style rehearsal's
	# labkit.probe=initramfs: right after the package install, before switch_root)
	if [ -n "${LABKIT_PROBE_STAGE:-}" ]; then
		section probe_stage
		echo "$LABKIT_PROBE_STAGE"
	fi
	section dmesg
	# the first dmesg on PATH may not run (an installed package's dmesg shadowing busybox's without its
	# libraries): then busybox's applet, which every Alpine has
	if [ -n "${LABKIT_PROBE_DMESG:-}" ]; then
		awk 1 "$LABKIT_PROBE_DMESG"
	elif dmesg > "$TMP.dmesg"; then
		awk 1 "$TMP.dmesg"
	elif have busybox && busybox dmesg > "$TMP.dmesg"; then
		awk 1 "$TMP.dmesg"
	fi
	rm -f "$TMP.dmesg"
	section meminfo
	awk 1 "$R/proc/meminfo"
	if have free; then
		section free
		free
	fi
	section df
	set -- /
	for m in "$R"/media/* /nix /data /.modloop; do
		[ -d "$m" ] && set -- "$@" "$m"
	done
	df -k "$@" 2>/dev/null | awk 1
	section cmdline
	awk 1 "$R/proc/cmdline"
	section kernel
	uname -a
	# end of the part that reads the boot's timings and RAM; the inventory (packages, store) follows
	section uptime_mid
	cat "$R/proc/uptime"
	# Firmware and loader time without a host clock: the ACPI FPDT boot record as the kernel exposes it
	# (drivers/acpi/acpi_fpdt.c, kernel >= 5.12 on x86_64: <name>_ns, decimal ns) and the Boot Loader
	# Interface variables (systemd docs/BOOT_LOADER_INTERFACE.md; efivarfs <Name>-<guid>: a 4-byte attribute
	# word, then a NUL-terminated UTF-16 decimal string). rEFInd and GRUB set no LoaderTime* variable.
	section firmware
	F=$R/sys/firmware/acpi/fpdt/boot
	if [ -d "$F" ]; then
		for n in firmware_start_ns bootloader_load_ns bootloader_launch_ns exitbootservice_start_ns exitbootservice_end_ns; do
			[ -r "$F/$n" ] && echo "fpdt $n $(cat "$F/$n")"
		done
	else
		echo "fpdt absent"
	fi
	if [ -e "$R/sys/firmware/acpi/tables/FPDT" ]; then echo "fpdt_table present"; else echo "fpdt_table absent"; fi
	if [ -d "$R/sys/firmware/efi" ]; then echo "efi present"; else echo "efi absent"; fi
	V=$R/sys/firmware/efi/efivars
	if [ -d "$V" ] && [ -n "$(ls "$V" 2>/dev/null)" ]; then echo "efivars present"; else echo "efivars absent"; fi
	for n in LoaderTimeInitUSec LoaderTimeExecUSec LoaderInfo; do
		f=$V/$n-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f
		if [ -r "$f" ]; then echo "efivar $n $(tail -c +5 "$f" | tr -d '\000')"; else echo "efivar $n absent"; fi
	done
	if [ -f "$R/etc/os-release" ]; then
		section os_release
		awk 1 "$R/etc/os-release"
	fi
	# systemd's own account of the boot (the userspace metrics read it). Not `blame` nor `critical-chain`: no
	# metric reads them, and under TCG they took 8.3 s and 3.1 s of every boot (`time`: 0.2 s), as they ask
	# PID 1 for every unit's properties one by one.
	if have systemd-analyze; then
		section systemd_time
		systemd-analyze time 2>&1
	fi
	# OpenRC's rc_logger appends each finished runlevel to /var/log/rc.log; the runlevel in progress
	# (default: the probe runs in it, from local.d) is still in /run/openrc/rc.log (rc-logger.c TMPLOG)
	set --
	for f in "$R/var/log/rc.log" "$R/run/openrc/rc.log"; do
		[ -f "$f" ] && set -- "$@" "$f"
	done
	if [ $# -gt 0 ]; then
		section rc_log
		awk 1 "$@"
	fi
	if have rc-status && [ -z "${LABKIT_PROBE_STAGE:-}" ]; then
		# OpenRC: every runlevel's services and their state (the live view; rc.log has only the levels done)
		section rc_status
		rc-status --all --nocolor 2>&1
	fi
	if [ -f "$R/lib/apk/db/installed" ]; then
		# only the package header fields and what each provides (p:, for the world check: packages_missing);
		# the file list (F:/R:/Z: lines) would be most of the text
		section apk_installed
		awk '/^[PVSIp]:/ || /^$/' "$R/lib/apk/db/installed"
	fi
	if [ -f "$R/etc/apk/world" ]; then
		section apk_world
		awk 1 "$R/etc/apk/world"
	fi
	set --
	for d in "$R"/media/*/apks/* "$R"/etc/apk/cache; do
		[ -d "$d" ] && set -- "$@" "$d"
	done
	if [ $# -gt 0 ]; then
		section apk_cache
		ls -ln "$@" 2>/dev/null
	fi
	# NixOS: the closure of the running system, never the whole store (old generations, .drv files).
	# nix is on the probe unit's path (config.nix.package in labkit.nix); nixpkgs' systemd-lib.nix gives
	# a service only its path plus coreutils, findutils, gnugrep, gnused and systemd.
	if have nix; then
		section nix_path_info
		nix --extra-experimental-features nix-command path-info -rS "$SYSTEM" 2>&1
	elif have nix-store; then
		section nix_closure_du
		# stdout only: nix-store's warnings on stderr are not store paths
		if CLOSURE=$(nix-store -qR "$SYSTEM" 2> "$TMP.err"); then
			set --
			for p in $CLOSURE; do
				set -- "$@" "$R$p"
			done
			if [ $# -gt 0 ]; then du -sk "$@" 2>&1; else echo "error: nix-store -qR $SYSTEM printed no path"; fi
		else
			echo "error: nix-store -qR $SYSTEM failed: $(awk 1 "$TMP.err")"
		fi
		rm -f "$TMP.err"
	elif [ -f "$R/nix/var/nix/labkit-store-sizes" ]; then
		# rehearsal store: sizes registered at build time, as Nix's database holds them
		section nix_store_du
		cat "$R/nix/var/nix/labkit-store-sizes"
	fi
	section uptime_end
	cat "$R/proc/uptime"
	# RAM after a fixed settle: the boot's last services have had time to start (or to free
	# memory). Not part of the probe's cost (uptime_end is read before) nor of any boot phase.
	SETTLE=${LABKIT_PROBE_SETTLE:-}
	if [ -z "$SETTLE" ]; then
		# shellcheck disable=SC2013 # the command line is one line of blank-separated words
		for a in $(cat "$R/proc/cmdline"); do
			case "$a" in labkit.settle=*) SETTLE=${a#labkit.settle=} ;; esac
		done
	fi
	SETTLE=${SETTLE:-2}
	if [ "$SETTLE" != 0 ]; then
		sleep "$SETTLE"
		section meminfo_settled
		awk 1 "$R/proc/meminfo"
		section uptime_settled
		cat "$R/proc/uptime"
	fi
	# The guest's own decompression limit, on the payloads it has just installed: the .apk files of the
	# installed packages (lib/apk/db/installed P:/V:, found under /media/*/apks/<arch>/), read once untimed
	# (page cache), then `gzip -dc` to /dev/null timed by /proc/uptime. Sizes: ls -ln (compressed) and each
	# file's gzip trailer (ISIZE: the last member's uncompressed size). Last of all, so no metric of the boot
	# includes it. labkit.gunzip=0 on the kernel command line (or LABKIT_PROBE_GUNZIP=0) skips it.
	GUNZIP=${LABKIT_PROBE_GUNZIP:-}
	if [ -z "$GUNZIP" ]; then
		# shellcheck disable=SC2013 # the command line is one line of blank-separated words
		for a in $(cat "$R/proc/cmdline"); do
			case "$a" in labkit.gunzip=*) GUNZIP=${a#labkit.gunzip=} ;; esac
		done
	fi
	if [ "${GUNZIP:-1}" != 0 ] && [ -f "$R/lib/apk/db/installed" ]; then
		# shellcheck disable=SC2046 # .apk paths have no blanks
		set -- $(for f in "$R"/media/*/apks/*/*.apk; do [ -f "$f" ] && echo "$f"; done | awk -v db="$R/lib/apk/db/installed" '
			BEGIN {
				while ((getline l < db) > 0) {
					if (l ~ /^P:/) p = substr(l, 3)
					else if (l ~ /^V:/) { v = substr(l, 3); want[p "-" v ".apk"] = 1; gsub(/:/, "_", v); want[p "-" v ".apk"] = 1 }
				}
			}
			{ n = $0; sub(/.*\//, "", n); if (n in want) print }')
		if [ $# -gt 0 ]; then
			section apk_gunzip
			cat "$@" > /dev/null
			echo "start $(cat "$R/proc/uptime")"
			gzip -dc "$@" > /dev/null
			echo "status $?"
			echo "end $(cat "$R/proc/uptime")"
			echo "files"
			ls -ln "$@"
			echo "isize"
			for f in "$@"; do tail -c 4 "$f"; done | od -An -tu4 -v
		fi
	fi
} > "$BODY" 2> "$TMP.stderr"
# What the tools said on stderr (not into a section) is the last section, never on the console: the probe's
# stderr is the console in a guest, and a stray line between BEGIN and END breaks the bundle's checksum (seen:
# a payload's glibc dmesg that cannot load its libraries in a musl root). At most 64 KiB of it.
if [ -s "$TMP.stderr" ]; then
	section probe_errors >> "$BODY"
	head -c 65536 "$TMP.stderr" | awk 1 >> "$BODY"
fi
rm -f "$TMP.stderr"

SUM=$(md5sum "$BODY")
SUM=${SUM%% *}
{
	cat "$BODY"
	echo "@@LABKIT-BUNDLE-END sections=$N md5=$SUM@@"
} > "$TMP.all"
cat "$TMP.all" >> "$OUT"

# @@include loop.sh@@

DATA=${LABKIT_PROBE_DATA:-}
if [ -z "$DATA" ] && awk '$2 == "/data" { f = 1 } END { exit !f }' "$R/proc/mounts" 2>/dev/null; then
	DATA=$R/data
fi
if [ -n "$DATA" ]; then
	BOOTID=$(cat "$R/proc/sys/kernel/random/boot_id" 2>/dev/null) || BOOTID=
	BOOTID=${BOOTID:-noid-$(date +%s)-$$}
	{
		echo "$BEGIN"
		cat "$TMP.all"
	} > "$TMP.file"
	if labkit_save "$TMP.file" "$DATA/labkit/bundles" "$OS-$BOOTID.txt"; then
		echo "labkit-probe: bundle saved as /data/labkit/bundles/$OS-$BOOTID.txt" >> "$OUT"
		FAILED=
	else
		echo "labkit-probe: cannot save the bundle in /data/labkit/bundles" >> "$OUT"
		FAILED="the probe could not save its bundle in /data/labkit/bundles"
	fi
	rm -f "$TMP.file"
	if [ -f "$DATA/labkit/loop.json" ]; then
		labkit_loop "$DATA/labkit/loop.json" "$OS" "$BOOTID" "$FAILED" >> "$OUT" 2>&1
	fi
fi
rm -f "$BODY" "$TMP.all"
