#!/bin/sh
# labkit rehearsal guest: Alpine-style diskless initramfs /init (busybox ash).
# Reproduces the mechanism of Alpine's initramfs-init: find the boot media holding the apkovl and
# the package repository (apks/.boot_repository), tmpfs /sysroot, unpack the overlay, install
# etc/apk/world from the repository into RAM, switch_root. Not Alpine Linux.
export PATH=/usr/bin:/bin:/usr/sbin:/sbin

/bin/busybox mkdir -p /proc /sys /dev /media /sysroot /tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

KVER=$(uname -r)
BASE_PKG=busybox-static

kmsg() { echo "$1" > /dev/kmsg 2>/dev/null; }
say() { echo "$1" > /dev/console 2>/dev/null || echo "$1"; }
ebegin() { LAST_MSG="$1"; kmsg "$1..."; [ -n "$QUIET" ] || say " * $1 ..."; }
eend() {
	if [ "$1" = 0 ]; then kmsg "$LAST_MSG: ok."; [ -n "$QUIET" ] || say " [ ok ]"
	else kmsg "$LAST_MSG: failed."; say " * $LAST_MSG: failed."; fi
}
die() {
	say "labkit-rehearsal: FATAL: $1"
	kmsg "labkit-rehearsal: FATAL: $1"
	sync
	poweroff -f
	sleep 10
}

QUIET=
ROOTSIZE=50%
MODULES_OPT=
# shellcheck disable=SC2013 # the command line is one line of words
for opt in $(cat /proc/cmdline); do
	case "$opt" in
		quiet) QUIET=y ;;
		rootflags=*size=*) ROOTSIZE=${opt#*size=}; ROOTSIZE=${ROOTSIZE%%,*} ;;
		modules=*) MODULES_OPT=${opt#modules=} ;;
	esac
done

kmsg "Alpine Init labkit-rehearsal (busybox initramfs reproducing Alpine's diskless boot; not Alpine Linux)"
say "labkit-rehearsal: Alpine-style diskless init on kernel $KVER"

# Alpine's modules= (loop,squashfs,sd-mod,usb-storage) names drivers of Alpine's kernel; the rehearsal
# loads the modules it carries for the lab's virtio disk (labkit-load-order) whatever that option says.
[ -z "$MODULES_OPT" ] || kmsg "labkit-rehearsal: modules=$MODULES_OPT noted; loading the rehearsal's own boot modules"
ebegin "Loading boot drivers"
rc=0
while read -r mod; do
	[ -n "$mod" ] || continue
	insmod "/lib/modules/$KVER/$mod" 2>/dev/null || { grep -q "^${mod##*/}" /proc/modules || rc=1; }
done < "/lib/modules/$KVER/labkit-load-order"
eend $rc

ebegin "Mounting boot media"
OVL=
REPO=
MEDIA_DEV=
tries=0
while :; do
	for b in /sys/class/block/*; do
		dev=${b##*/}
		case "$dev" in loop*|ram*|sr*) continue ;; esac
		[ -b "/dev/$dev" ] || continue
		mnt="/media/$dev"
		grep -q " $mnt " /proc/mounts && continue
		mkdir -p "$mnt"
		if mount -t ext4 -o ro "/dev/$dev" "$mnt" 2>/dev/null; then
			used=
			if [ -z "$OVL" ]; then
				for f in "$mnt"/*.apkovl.tar.gz; do
					[ -f "$f" ] && { OVL=$f; used=y; break; }
				done
			fi
			if [ -z "$REPO" ]; then
				for d in "$mnt"/*/; do
					[ -f "$d.boot_repository" ] && { REPO=${d%/}; used=y; break; }
				done
			fi
			if [ -n "$used" ]; then MEDIA_DEV="$MEDIA_DEV $dev"; else umount "$mnt"; rmdir "$mnt"; fi
		else
			rmdir "$mnt"
		fi
	done
	[ -n "$OVL" ] && [ -n "$REPO" ] && break
	tries=$((tries + 1))
	[ "$tries" -gt 30 ] && break
	sleep 0.1
done
[ -n "$OVL" ] && [ -n "$REPO" ]
eend $?
[ -n "$REPO" ] || die "no boot repository (a top-level directory with .boot_repository) on any ext4 partition"

mount -t tmpfs -o "mode=0755,size=$ROOTSIZE" tmpfs /sysroot || die "cannot mount tmpfs on /sysroot"

if [ -n "$OVL" ]; then
	ebegin "Loading user settings from $OVL"
	tar -C /sysroot -xzf "$OVL"
	eend $?
else
	say "labkit-rehearsal: WARNING: no *.apkovl.tar.gz found; booting without user settings"
fi

INDEX="$REPO/x86_64/LABKIT-INDEX"
PKGS="$BASE_PKG"
if [ -f /sysroot/etc/apk/world ]; then
	PKGS="$PKGS $(cat /sysroot/etc/apk/world)"
fi

ebegin "Installing packages to root filesystem"
fail=0
count=0
kib=0
mkdir -p /sysroot/lib/apk/db
: > /sysroot/lib/apk/db/installed
# apk prints "(i/n) Installing NAME (VER)" before unpacking each package (apk-tools v2.14.4 src/commit.c
# print_change, :38 and :75-79); the rehearsal writes the same line on the console and to kmsg, so the host
# can time each package (labkit.measure.parsers.apk_timing). n counts the distinct world names.
step=0
total=$(for name in $PKGS; do [ "$name" = alpine-base ] && name=$BASE_PKG; echo "$name"; done | sort -u | wc -l)
for name in $PKGS; do
	# alpine-base (the world of a real Alpine apkovl) is provided by the rehearsal base package
	[ "$name" = alpine-base ] && name=$BASE_PKG
	case " $done_pkgs " in *" $name "*) continue ;; esac
	done_pkgs="$done_pkgs $name"
	line=$(awk -v n="$name" '$1 == n { print $2 " " $3 " " $4 " " $5; exit }' "$INDEX" 2>/dev/null)
	if [ -z "$line" ]; then
		say "labkit-rehearsal: ERROR: world package '$name' not found in $REPO"
		kmsg "labkit-rehearsal: ERROR: world package '$name' not found in $REPO"
		fail=$((fail + 1))
		continue
	fi
	# shellcheck disable=SC2086 # split the index fields on purpose
	set -- $line
	step=$((step + 1))
	say "($step/$total) Installing $name ($1)"
	kmsg "($step/$total) Installing $name ($1)"
	if tar -C /sysroot -xzf "$REPO/x86_64/$2"; then
		count=$((count + 1))
		kib=$((kib + $4 / 1024))
		printf 'P:%s\nV:%s\nS:%s\nI:%s\n\n' "$name" "$1" "$3" "$4" >> /sysroot/lib/apk/db/installed
	else
		say "labkit-rehearsal: ERROR: cannot unpack $2"
		kmsg "labkit-rehearsal: ERROR: cannot unpack $2"
		fail=$((fail + 1))
	fi
done
[ "$fail" = 0 ]
eend $?
say "labkit-rehearsal: OK: $kib KiB in $count packages ($fail missing or broken)"

# Keep the boot media mounted in the new root (as Alpine does: LBU writes back to it).
for dev in $MEDIA_DEV; do
	mkdir -p "/sysroot/media/$dev"
	mount -o move "/media/$dev" "/sysroot/media/$dev"
done
[ -x /sysroot/sbin/init ] || die "/sbin/init is missing from the new root (base package $BASE_PKG not installed?)"

kmsg "labkit-rehearsal: switch_root"
for d in dev proc sys; do
	mkdir -p "/sysroot/$d"
	mount -o move "/$d" "/sysroot/$d"
done
exec switch_root /sysroot /sbin/init
