#!@busybox@/bin/sh
# labkit rehearsal guest: NixOS-style stage 2 (lives in the store as @system@/init).
# Activation (/etc, /bin/sh, /run/current-system → store symlinks), the probe, power off.
export PATH=@system@/sw/bin
echo "<<< NixOS Stage 2 (labkit rehearsal, not NixOS) >>>" > /dev/console
echo "labkit-rehearsal: stage 2 @system@" > /dev/kmsg
mkdir -p /etc /bin /usr/bin /run /tmp /var/log /root
chmod 1777 /tmp
ln -sfn @system@ /run/current-system
ln -sfn @system@/etc /etc/static
for f in @system@/etc/*; do
	ln -sfn "/etc/static/${f##*/}" "/etc/${f##*/}"
done
ln -sfn @system@/sw/bin/sh /bin/sh
ln -sfn @system@/sw/bin/env /usr/bin/env
hostname -F /etc/hostname 2>/dev/null
# shellcheck disable=SC2012 # store names are plain
echo "labkit-rehearsal: activation done: $(ls @system@/sw/bin | wc -l) programs in /run/current-system/sw/bin" > /dev/console
sh @system@/sw/bin/labkit-probe
sync
poweroff -f
