#!/bin/sh
# labkit rehearsal guest: what OpenRC's "local" service does on Alpine, run from busybox init's
# sysinit (etc/inittab in the apkovl): run /etc/local.d/*.start in order, then power off.
export PATH=/usr/bin:/bin:/usr/sbin:/sbin
mkdir -p /tmp /run /var/log
chmod 1777 /tmp
hostname -F /etc/hostname 2>/dev/null
echo "labkit-rehearsal: rootfs init: running /etc/local.d/*.start" > /dev/console
for s in /etc/local.d/*.start; do
	[ -x "$s" ] && "$s"
done
sync
poweroff -f
