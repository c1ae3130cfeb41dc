#!@busybox@/bin/sh
# labkit rehearsal guest: NixOS-style stage 2 (lives in the store as @system@/init). Not NixOS.
# As nixpkgs nixos/modules/system/boot/stage-2-init.sh: greeting, "booting system configuration" to the
# kernel log, activation (/etc from the system's etc, /run/current-system, /bin/sh, /usr/bin/env), then
# "starting systemd..." and exec systemd (its last line, `exec @systemdExecutable@`). The systemd is
# Debian's; the rehearsal system carries an FHS view of its store paths (@system@/fhs, linked as /usr,
# /bin, /sbin, /lib, /lib64), which Debian's build of systemd needs and a real NixOS does not have.
export PATH=@system@/sw/bin
echo "<<< NixOS Stage 2 (labkit rehearsal, not NixOS) >>>" > /dev/console
echo "labkit-rehearsal: stage 2 @system@" > /dev/kmsg
echo "booting system configuration @system@" > /dev/kmsg
mkdir -p /etc /run /tmp /var/log /root
chmod 1777 /tmp
ln -sfn @system@ /run/current-system
ln -sfn @system@ /run/booted-system
ln -sfn @system@/etc /etc/static
for f in @system@/etc/*; do
	ln -sfn "/etc/static/${f##*/}" "/etc/${f##*/}"
done
# the FHS view for Debian's systemd (rehearsal only); /bin/sh and /usr/bin/env come with it
ln -sfn @system@/fhs/usr /usr
for d in bin sbin lib lib64; do
	ln -sfn "usr/$d" "/$d"
done
hostname -F /etc/hostname 2>/dev/null
# shellcheck disable=SC2012 # store names are plain
echo "labkit-rehearsal: activation done: $(ls @system@/sw/bin | wc -l) programs in /run/current-system/sw/bin" > /dev/console
echo "starting systemd..." > /dev/console
exec @systemd@/lib/systemd/systemd
