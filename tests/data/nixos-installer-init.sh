#!/bin/sh
# labkit rehearsal installer: /init of the rehearsal installer ISO's initrd (busybox ash). NOT NixOS.
# Plays the part of the NixOS minimal ISO's live system on the serial console: loads the modules,
# makes /dev/disk/by-label links (udev's job on NixOS), mounts the ISO (found by the root=LABEL=
# on the command line, as NixOS stage 1 does) on /iso and offers an automatically logged-in shell
# on ttyS0 with the installer tools from the ISO (labkit's rehearsal stand-ins) on PATH.
# A `poweroff` (SIGUSR2 to PID 1) or the shell's end powers the machine off.
export PATH=/usr/bin:/bin:/usr/sbin:/sbin
mkdir -p /proc /sys /dev /tmp /iso /mnt /root /etc
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
say() { echo "$1" > /dev/console 2>/dev/null || echo "$1"; }
halt_now() { sync; poweroff -f; sleep 10; }
trap halt_now USR2 TERM INT

KVER=$(uname -r)
say "<<< labkit rehearsal installer (NixOS-style, not NixOS) on kernel $KVER >>>"
while read -r mod; do
	[ -n "$mod" ] && insmod "/lib/modules/$KVER/$mod" 2>/dev/null
done < "/lib/modules/$KVER/labkit-load-order"

ROOTLABEL=
# shellcheck disable=SC2013 # the command line is one line of words
for opt in $(cat /proc/cmdline); do
	case "$opt" in root=LABEL=*) ROOTLABEL=${opt#root=LABEL=} ;; esac
done
mkdir -p /dev/disk/by-label
n=0
while [ "$n" -lt 50 ]; do
	findfs "LABEL=$ROOTLABEL" >/dev/null 2>&1 && break
	n=$((n + 1))
	sleep 0.1
done
for label in "$ROOTLABEL" @labels@; do
	dev=$(findfs "LABEL=$label" 2>/dev/null) && ln -sf "$dev" "/dev/disk/by-label/$label"
done
if [ -n "$ROOTLABEL" ] && mount -t iso9660 -o ro "/dev/disk/by-label/$ROOTLABEL" /iso; then
	export PATH="/iso/labkit-rehearsal/bin:$PATH"
else
	say "labkit-rehearsal: WARNING: the installer ISO (LABEL=$ROOTLABEL) is not mounted; no installer tools"
fi
echo "root:x:0:0:root:/root:/bin/sh" > /etc/passwd
echo "labkit-rehearsal" > /proc/sys/kernel/hostname
say "labkit-rehearsal login: nixos (automatic login; a root shell standing in for user nixos)"
export HOME=/root PS1='[nixos@labkit-rehearsal:~]$ '
cd /root || true
setsid cttyhack sh &
wait
halt_now
