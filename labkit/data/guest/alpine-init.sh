#!/bin/sh
# labkit rehearsal guest: Alpine-style diskless initramfs /init (busybox ash). Not Alpine Linux.
# It follows Alpine's own initramfs, alpinelinux/mkinitfs initramfs-init.in (3.10.1 @5628e3d, "MK310";
# 3.13.0 @5e9c5e6, "MK313"), step by step, with the rehearsal's means:
#  - every partition with a filesystem (ext4 or vfat, the ESP included) is mounted read-only at
#    /media/<dev> and scanned at its top level, as nlplug-findfs does: files *.apkovl.tar.gz* are apkovls,
#    directories holding .boot_repository are package repositories; the first apkovl found is the one
#    booted (MK310 l.747-751 `head -n 1`); a medium where nothing was found is unmounted again;
#  - a tmpfs /sysroot, the apkovl unpacked into it; then the default boot services are added only when
#    there is no apkovl or it carries etc/.default_boot_services (MK310 l.781-815), and hwclock (swclock
#    without an RTC) on every boot (MK310 l.895-899), with rc_add's absolute links (MK310 l.89-93);
#  - the world's packages installed from the repository (labkit's tarballs and LABKIT-INDEX stand in
#    for apk), the apkovl's files winning over the packages' (apk --overlay-from-stdin, MK310 l.913-936);
#  - a getty for each console= (setup_inittab_console, MK310 l.122-143, run at l.956), switch_root.
# The kernel-log texts are Alpine's (ebegin/eend, MK310 l.11-33).
export PATH=/usr/bin:/bin:/usr/sbin:/sbin

/bin/busybox mkdir -p /proc /sys /dev /media /sysroot /tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

KVER=$(uname -r)
BASE_PKG=busybox-static
# With the Alpine minirootfs, the initramfs carries the real apk-tools (musl loader, libapk, /sbin/apk) and
# the lab key: the packages are installed by apk exactly as mkinitfs does; without it, the rehearsal's own
# tarball install below (labelled in the report).
REAL_APK=
[ -x /sbin/apk ] && [ -e /lib/ld-musl-x86_64.so.1 ] && REAL_APK=y
sysroot=/sysroot

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
#  add a boot service to $sysroot (MK310 l.89-93)
rc_add() {
	mkdir -p "$sysroot/etc/runlevels/$2"
	ln -sf "/etc/init.d/$1" "$sysroot/etc/runlevels/$2/$1"
}
rtc_exists() {  # MK310 l.349-355
	for rtc in /dev/rtc /dev/rtc[0-9]*; do
		[ -e "$rtc" ] && return 0
	done
	return 1
}

QUIET=
MARKER_REMOVED=
ROOTSIZE=50%
MODULES_OPT=
CONSOLES=
APKOVL_OPT=
PROBE_AT=
# shellcheck disable=SC2013 # the command line is one line of words
for opt in $(cat /proc/cmdline); do
	case "$opt" in
		quiet) QUIET=y ;;
		rootflags=*size=*) ROOTSIZE=${opt#*size=}; ROOTSIZE=${ROOTSIZE%%,*} ;;
		modules=*) MODULES_OPT=${opt#modules=} ;;
		console=*) c=${opt#console=}; CONSOLES="${c%%,*} $CONSOLES" ;;  # MK310 l.460-466
		apkovl=*) APKOVL_OPT=${opt#apkovl=} ;;
		labkit.probe=*) PROBE_AT=${opt#labkit.probe=} ;;  # labkit's own switch, not Alpine's (see below)
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

# nlplug-findfs (MK310 nlplug-findfs.c scandev l.885-924, scandev_cb l.861-883): mount each filesystem
# read-only, look at its top level only, keep it mounted when something was found there.
ebegin "Mounting boot media"
: > /tmp/apkovls
: > /tmp/repositories
SCANNED=
MEDIA_DEV=
tries=0
while :; do
	for b in /sys/class/block/*; do
		dev=${b##*/}
		case "$dev" in loop*|ram*|sr*) continue ;; esac
		case " $SCANNED " in *" $dev "*) continue ;; esac
		[ -b "/dev/$dev" ] || continue
		SCANNED="$SCANNED $dev"
		mnt="/media/$dev"
		mkdir -p "$mnt"
		if mount -t ext4 -o ro "/dev/$dev" "$mnt" 2>/dev/null || mount -t vfat -o ro "/dev/$dev" "$mnt" 2>/dev/null; then
			found=
			for f in "$mnt"/*.apkovl.tar.gz*; do
				[ -e "$f" ] && [ ! -d "$f" ] && { echo "$f" >> /tmp/apkovls; found=y; }
			done
			for d in "$mnt"/*/; do
				[ -e "$d.boot_repository" ] && { echo "${d%/}" >> /tmp/repositories; found=y; }
			done
			if [ -n "$found" ]; then MEDIA_DEV="$MEDIA_DEV $dev"; else umount "$mnt"; rmdir "$mnt"; fi
		else
			rmdir "$mnt"
		fi
	done
	[ -s /tmp/repositories ] && [ -s /tmp/apkovls ] && break
	tries=$((tries + 1))
	[ "$tries" -gt 30 ] && break
	sleep 0.1
done
[ -s /tmp/repositories ]
eend $?
REPO=$(head -n 1 /tmp/repositories)
[ -n "$REPO" ] || die "no boot repository (a top-level directory with .boot_repository) on any partition"
n_ovl=$(wc -l < /tmp/apkovls)
[ "$n_ovl" -le 1 ] || kmsg "labkit-rehearsal: $n_ovl apkovls found: $(tr '\n' ' ' < /tmp/apkovls)"

# MK310 l.747-761: without apkovl=, the first apkovl nlplug-findfs found
if [ -n "$APKOVL_OPT" ]; then
	OVL=$APKOVL_OPT
else
	OVL=$(head -n 1 /tmp/apkovls)
fi

mount -t tmpfs -o "mode=0755,size=$ROOTSIZE" tmpfs $sysroot || die "cannot mount tmpfs on $sysroot"

: > /tmp/ovlfiles
if [ -f "$OVL" ]; then
	ebegin "Loading user settings from $OVL"
	# MK310 l.770-771: "create apk db and needed /dev/null and /tmp first" (the real apk, when carried)
	[ -z "$REAL_APK" ] || apk add --root $sysroot --initdb --quiet
	# MK310 l.41-43: tar -zxvf, the file list kept for apk --overlay-from-stdin
	tar -C $sysroot -xzvf "$OVL" > /tmp/ovlfiles
	eend $?
else
	say "labkit-rehearsal: WARNING: no *.apkovl.tar.gz found; booting without user settings"
fi

# MK310 l.781-815: the default boot services, only with no apkovl or with the marker in it
if [ -f "$sysroot/etc/.default_boot_services" ] || [ ! -f "$OVL" ]; then
	rc_add devfs sysinit
	rc_add dmesg sysinit
	rc_add mdev sysinit
	rc_add hwdrivers sysinit
	rc_add modloop sysinit

	rc_add modules boot
	rc_add sysctl boot
	rc_add hostname boot
	rc_add bootmisc boot
	rc_add syslog boot

	rc_add mount-ro shutdown
	rc_add killprocs shutdown
	rc_add savecache shutdown

	rc_add firstboot default
	rm -f "$sysroot/etc/.default_boot_services"
	MARKER_REMOVED=y
fi

if [ -n "$REAL_APK" ]; then
	# MK310 l.864-865: the world file's entries, then alpine-base ("hack so we get openrc")
	pkgs=
	[ -f $sysroot/etc/apk/world ] && pkgs="$(cat $sysroot/etc/apk/world)"
	pkgs="$pkgs alpine-base"
	# MK310 l.867-869: "copy keys so apk finds them. apk looks for stuff relative --root"
	mkdir -p $sysroot/etc/apk
	cp -a /etc/apk/keys $sysroot/etc/apk
	# MK310 l.871-885: one --repository per boot repository found
	repo_opt=
	while read -r i; do
		repo_opt="$repo_opt --repository $i"
	done < /tmp/repositories
	# MK310 l.895-899: hwclock, or swclock without an RTC
	if rtc_exists; then rc_add hwclock boot; else rc_add swclock boot; fi
	ebegin "Installing packages to root filesystem"
	# MK310 l.913-936 (no network in the lab: --no-network)
	apkflags="--initramfs-diskless-boot --progress --no-network"
	[ -z "$QUIET" ] || apkflags="$apkflags --quiet"
	apkflags="$apkflags --clean-protected"
	[ -s /tmp/ovlfiles ] && apkflags="$apkflags --overlay-from-stdin"
	mkdir -p $sysroot/sys $sysroot/proc $sysroot/dev
	mount -o bind /sys $sysroot/sys
	mount -o bind /proc $sysroot/proc
	mount -o bind /dev $sysroot/dev
	# shellcheck disable=SC2086 # word lists on purpose, as in initramfs-init
	# mkinitfs >= 3.13.0 (MK313 l.1072-1074): a failed apk add leaves a warning in the kernel log
	apk add --root $sysroot $repo_opt $apkflags $pkgs < /tmp/ovlfiles ||
		kmsg "WARNING: apkovl packages install completed with errors..."
	umount $sysroot/sys $sysroot/proc $sysroot/dev
	eend 0
	[ -z "$MARKER_REMOVED" ] || rm -f "$sysroot/etc/.default_boot_services"
else
INDEX="$REPO/x86_64/LABKIT-INDEX"
# MK310 l.768-779, l.864-865: the world file's entries, then alpine-base ("hack so we get openrc")
PKGS="$BASE_PKG"
if [ -f $sysroot/etc/apk/world ]; then
	PKGS="$PKGS $(cat $sysroot/etc/apk/world)"
fi
PKGS="$PKGS alpine-base"

# MK310 l.895-899: hwclock, or swclock without an RTC, on every boot
if rtc_exists; then
	rc_add hwclock boot
else
	rc_add swclock boot
fi

ebegin "Installing packages to root filesystem"
fail=0
count=0
kib=0
done_pkgs=
mkdir -p $sysroot/lib/apk/db
: > $sysroot/lib/apk/db/installed
# apk prints "(i/n) Installing NAME (VER)" before unpacking each package (apk-tools v2.14.4 src/commit.c
# print_change, :38 and :75-79); the rehearsal writes the same line on the console and to kmsg, so the host
# can time each package (labkit.measure.parsers.apk_timing). n counts the distinct world names.
step=0
total=$(for name in $PKGS; do [ "$name" = alpine-base ] && name=$BASE_PKG; echo "$name"; done | sort -u | wc -l)
for name in $PKGS; do
	# alpine-base (the world of a real Alpine apkovl) is provided by the rehearsal base package: its record
	# in the installed database says so with a p: (provides) line, as apk writes one for virtual names
	[ "$name" = alpine-base ] && name=$BASE_PKG
	prov=
	[ "$name" = "$BASE_PKG" ] && prov=alpine-base
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
	if tar -C $sysroot -xzf "$REPO/x86_64/$2"; then
		count=$((count + 1))
		kib=$((kib + $4 / 1024))
		{
			printf 'P:%s\nV:%s\nS:%s\nI:%s\n' "$name" "$1" "$3" "$4"
			[ -z "$prov" ] || printf 'p:%s\n' "$prov"
			echo
		} >> $sysroot/lib/apk/db/installed
	else
		say "labkit-rehearsal: ERROR: cannot unpack $2"
		kmsg "labkit-rehearsal: ERROR: cannot unpack $2"
		fail=$((fail + 1))
	fi
done
# The apkovl's files are the user's: apk add --overlay-from-stdin never replaces them (MK310 l.917-934);
# busybox tar cannot exclude a list, so the rehearsal lays the apkovl over the packages again, and removes
# again what the init removed since (the marker: apk does not bring back a file of the overlay list).
if [ -f "$OVL" ]; then
	tar -C $sysroot -xzf "$OVL"
	[ -z "$MARKER_REMOVED" ] || rm -f "$sysroot/etc/.default_boot_services"
fi
# mkinitfs >= 3.13.0 (initramfs-init.in l.1072): a failed apk add leaves a warning in the kernel log, and
# the step still ends in "ok." (apk's own exit status is not the step's)
[ "$fail" = 0 ] || kmsg "WARNING: apkovl packages install completed with errors..."
eend 0
say "labkit-rehearsal: OK: $kib KiB in $count packages ($fail missing or broken)"
fi

# setup_inittab_console (MK310 l.122-143): a getty on every console= that answers
for tty in $CONSOLES; do
	stty -g -F "/dev/$tty" > /dev/null 2>&1 || continue
	if ! grep -q "^$tty:" $sysroot/etc/inittab 2>/dev/null; then
		echo "# enable login on alternative console" >> $sysroot/etc/inittab
		echo "$tty::respawn:/sbin/getty -L 0 $tty vt100" >> $sysroot/etc/inittab
	fi
done

# Keep the boot media mounted in the new root (MK310 l.975-981 moves every mount; LBU writes back to it).
for dev in $MEDIA_DEV; do
	mkdir -p "$sysroot/media/$dev"
	mount -o move "/media/$dev" "$sysroot/media/$dev"
done
[ -x $sysroot/sbin/init ] || die "/sbin/init is missing from the new root (base package $BASE_PKG not installed?)"

# labkit.probe=initramfs: the load-cost experiment's boots (labkit.lab.run.run_load_cost) measure the package
# load and the root tmpfs it fills, nothing after it. The apkovl's probe runs here, in the new root as it is
# before switch_root (packages and apkovl in place, boot media under /media), tells the bundle so
# (LABKIT_PROBE_STAGE: the userspace metrics are absent, with that reason), and the machine powers off
# instead of booting OpenRC, which takes ~20 s of every boot under TCG. Not an Alpine option: without it
# the boot goes on exactly as Alpine's.
if [ "$PROBE_AT" = initramfs ]; then
	probe=$sysroot/etc/local.d/labkit-probe.start
	[ -f "$probe" ] || die "labkit.probe=initramfs: the apkovl has no etc/local.d/labkit-probe.start"
	mkdir -p $sysroot/tmp
	for d in dev proc sys; do
		mkdir -p "$sysroot/$d"
		mount -o bind "/$d" "$sysroot/$d"
	done
	kmsg "labkit-rehearsal: probe in the initramfs (labkit.probe=initramfs), then power off"
	LABKIT_PROBE_STAGE=initramfs chroot $sysroot /bin/sh /etc/local.d/labkit-probe.start
	sync
	poweroff -f
	sleep 10
fi

kmsg "labkit-rehearsal: switch_root"
for d in dev proc sys; do
	mkdir -p "$sysroot/$d"
	mount -o move "/$d" "$sysroot/$d"
done
exec switch_root $sysroot /sbin/init
