#!/bin/sh
# The same tools labkit.image.build_image runs, as a plain script (for the overhead ratio).
# usage: image_build.sh OUT.img ALPINE_TREE   (LAB_LAYOUT: 2 GiB; ESP 64M, 128M, 768M, 768M, rest)
set -eu
out=$1; tree=$2; w=$(mktemp -d "$(dirname "$out")/.sh-build-XXXX"); export MTOOLS_SKIP_CHECK=1
truncate -s 67108864 "$w/p1"; mkfs.vfat -F 32 -s 1 -n ESP "$w/p1" >/dev/null
mmd -i "$w/p1" ::/EFI ::/EFI/BOOT
mcopy -o -i "$w/p1" /usr/share/refind/refind/refind_x64.efi ::/EFI/BOOT/BOOTX64.EFI
mke2fs -q -F -t ext4 -b 4096 -L nixboot -E lazy_itable_init=1,lazy_journal_init=1 "$w/p2" 131072k
mke2fs -q -F -t ext4 -b 4096 -L nix -E lazy_itable_init=1,lazy_journal_init=1 "$w/p3" 786432k
mke2fs -q -F -t ext4 -b 4096 -L alpine -E lazy_itable_init=1,lazy_journal_init=1 -d "$tree" "$w/p4" 786432k
mke2fs -q -F -t ext4 -b 4096 -L data -E lazy_itable_init=1,lazy_journal_init=1 "$w/p5" 325632k
truncate -s 2147483648 "$w/disk.img"
sgdisk --clear --set-alignment=2048 -n 1:2048:133119 -t 1:ef00 -c "1:EFI system" \
  -n 2:133120:395263 -t 2:8300 -c "2:NixOS boot" -n 3:395264:1968127 -t 3:8300 -c "3:Nix store" \
  -n 4:1968128:3540991 -t 4:8300 -c 4:Alpine -n 5:3540992:4192255 -t 5:8300 -c 5:Data "$w/disk.img" >/dev/null
if [ "${COPY:-dd}" = dd ]; then
  seek=1; for n in 1 2 3 4 5; do
    dd if="$w/p$n" of="$w/disk.img" bs=1M seek=$seek conv=sparse,notrunc status=none
    seek=$((seek + $(stat -c %s "$w/p$n") / 1048576))
  done
fi
mv "$w/disk.img" "$out"; rm -rf "$w"
