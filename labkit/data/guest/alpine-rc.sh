#!/bin/sh
# labkit rehearsal guest: what OpenRC's "local" service does on Alpine, run from busybox init's
# sysinit (etc/inittab of the rehearsal base package, as Alpine's init comes from alpine-base and
# openrc). Like OpenRC it runs /etc/local.d/*.start only when the apkovl enabled the service
# (the runlevel link etc/runlevels/default/local), then it powers off.
export PATH=/usr/bin:/bin:/usr/sbin:/sbin
mkdir -p /tmp /run /var/log
chmod 1777 /tmp
hostname -F /etc/hostname 2>/dev/null
if [ -L /etc/runlevels/default/local ] || [ -e /etc/runlevels/default/local ]; then
	echo "labkit-rehearsal: rootfs init: running /etc/local.d/*.start" > /dev/console
	for s in /etc/local.d/*.start; do
		[ -x "$s" ] && "$s"
	done
else
	echo "labkit-rehearsal: rootfs init: service local is not in runlevel default (no etc/runlevels/default/local in the apkovl): /etc/local.d not run" > /dev/console
fi
sync
poweroff -f
