#!/bin/sh
# labkit probe: print one bundle (docs/contracts.md) to the console, then return.
# Cheap on purpose: /proc/uptime is read first and the BEGIN line is printed at once (the host
# stamps it: host time of BEGIN - uptime = when the kernel started); everything else is collected
# into one file in RAM and printed in one go. uptime_end (read last) gives the probe's own cost. Overrides for tests: LABKIT_PROBE_ROOT (prefix for /proc and /etc files),
# LABKIT_PROBE_OUT (instead of /dev/console), LABKIT_PROBE_DMESG (a file instead of `dmesg`).
R=${LABKIT_PROBE_ROOT:-}
OUT=${LABKIT_PROBE_OUT:-/dev/console}
UPTIME=$(cat "$R/proc/uptime")
OS=$(cat "$R/etc/labkit-os" 2>/dev/null) || OS=unknown
case "$OS" in
	*-rehearsal) GUEST=rehearsal ;;
	*) GUEST=real ;;
esac
TMP=${TMPDIR:-/tmp}/labkit-probe.$$
BODY=$TMP.body
echo "@@LABKIT-BUNDLE-BEGIN v=1 os=$OS guest=$GUEST@@" > "$OUT"

section() {
	echo "@@SECTION $1@@"
}

{
	section uptime
	echo "$UPTIME"
	section meminfo
	awk 1 "$R/proc/meminfo"
	section dmesg
	if [ -n "${LABKIT_PROBE_DMESG:-}" ]; then awk 1 "$LABKIT_PROBE_DMESG"; else dmesg | awk 1; fi
	section df
	set -- /
	for m in "$R"/media/* /nix /data; do
		[ -d "$m" ] && set -- "$@" "$m"
	done
	df -k "$@" 2>/dev/null | awk 1
	section cmdline
	awk 1 "$R/proc/cmdline"
	section kernel
	uname -a
	section uptime_end
	cat "$R/proc/uptime"
} > "$BODY"

SUM=$(md5sum "$BODY")
SUM=${SUM%% *}
{
	cat "$BODY"
	echo "@@LABKIT-BUNDLE-END sections=7 md5=$SUM@@"
} > "$TMP.all"
cat "$TMP.all" >> "$OUT"
rm -f "$BODY" "$TMP.all"
