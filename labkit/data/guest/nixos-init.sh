#!/bin/sh
# labkit rehearsal guest: NixOS-style stage 1 /init (busybox ash).
# Reproduces the mechanism of NixOS stage 1 with a tmpfs root: tmpfs /, the store partition
# (label nix) read-only at /nix, /data (label data) read-write, then switch_root to the
# stage-2 script named by init= (a path inside /nix/store). Not NixOS.
export PATH=/usr/bin:/bin:/usr/sbin:/sbin

/bin/busybox mkdir -p /proc /sys /dev /mnt-root /tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

KVER=$(uname -r)
kmsg() { echo "$1" > /dev/kmsg 2>/dev/null; }
say() { echo "$1" > /dev/console 2>/dev/null || echo "$1"; }
fail() {
	say "labkit-rehearsal: FATAL: $1"
	kmsg "labkit-rehearsal: FATAL: $1"
	sync
	poweroff -f
	sleep 10
}

ROOTSIZE=50%
STAGE2=
# shellcheck disable=SC2013 # the command line is one line of words
for opt in $(cat /proc/cmdline); do
	case "$opt" in
		init=*) STAGE2=${opt#init=} ;;
		rootflags=*size=*) ROOTSIZE=${opt#*size=}; ROOTSIZE=${ROOTSIZE%%,*} ;;
	esac
done

say "<<< NixOS Stage 1 (labkit rehearsal, not NixOS) >>>"
kmsg "labkit-rehearsal: NixOS-style stage 1 on kernel $KVER"
[ -n "$STAGE2" ] || fail "no init= on the kernel command line (the stage-2 script in /nix/store)"

kmsg "labkit-rehearsal: loading kernel modules"
while read -r mod; do
	[ -n "$mod" ] && insmod "/lib/modules/$KVER/$mod" 2>/dev/null
done < "/lib/modules/$KVER/labkit-load-order"

find_label() {
	n=0
	while [ "$n" -lt 50 ]; do
		dev=$(findfs "LABEL=$1" 2>/dev/null) && { echo "$dev"; return 0; }
		n=$((n + 1))
		sleep 0.1
	done
	return 1
}

mount -t tmpfs -o "mode=755,size=$ROOTSIZE" tmpfs /mnt-root || fail "cannot mount the tmpfs root"
mkdir -p /mnt-root/nix /mnt-root/data /mnt-root/dev /mnt-root/proc /mnt-root/sys
NIXDEV=$(find_label nix) || fail "no filesystem labelled 'nix' (the store partition)"
kmsg "labkit-rehearsal: mounting $NIXDEV (LABEL=nix) on /nix read-only"
mount -t ext4 -o ro "$NIXDEV" /mnt-root/nix || fail "cannot mount $NIXDEV on /nix"
if DATADEV=$(find_label data); then
	kmsg "labkit-rehearsal: mounting $DATADEV (LABEL=data) on /data"
	mount -t ext4 -o rw "$DATADEV" /mnt-root/data || say "labkit-rehearsal: WARNING: cannot mount $DATADEV on /data"
else
	say "labkit-rehearsal: WARNING: no filesystem labelled 'data'; /data stays on the tmpfs root"
fi
[ -e "/mnt-root$STAGE2" ] || fail "stage 2 $STAGE2 is not in the store"

kmsg "labkit-rehearsal: switch_root"
for d in dev proc sys; do
	mount -o move "/$d" "/mnt-root/$d"
done
exec switch_root /mnt-root "$STAGE2"
