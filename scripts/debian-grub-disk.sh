#!/usr/bin/env bash
# Builds a bootable disk of the Debian test guest (issue 16): a GPT disk
# with GRUB installed for both firmwares -- grub-pc in a BIOS boot partition
# (SeaBIOS) and grub-efi as the removable EFI/BOOT/BOOTX64.EFI on an EFI
# system partition (OVMF) -- and the guest's root filesystem from
# scripts/debian-guest.sh (reused, not bootstrapped again) as its third
# partition. GRUB loads Debian's kernel and initrd from that filesystem, so
# a domain boots it from its disk alone: no <kernel> in the XML.
#
# Layout: p1 BIOS boot (1 MiB), p2 ESP (FAT, 32 MiB), p3 ext4 root
# (label tern-debian). Kernel command line: root=LABEL=tern-debian
# console=ttyS0 (GRUB adds BOOT_IMAGE=, which a direct kernel boot lacks).
#
# GRUB is installed as grub-install would, by hand: grub-install needs the
# disk's partitions as block devices, and this kernel makes none for loop
# devices. Cached under target/debian-grub/<hash of this script and the
# root's build>/disk.raw (sparse); prints that directory on its last line.
# Needs root (a loop mount), grub-pc-bin, grub-efi-amd64-bin (modules and
# grub-mkimage), dosfstools, mtools and fdisk (sfdisk). No network.
set -euo pipefail
cd "$(dirname "$0")/.."
base=$(scripts/debian-guest.sh | tail -1)
key=$( (sha256sum "$0" | cut -c1-16; basename "$base") | sha256sum | cut -c1-16)
out=target/debian-grub/$key
if [ -f "$out/.done" ]; then
  echo "$out"
  exit 0
fi
start=$(date +%s)
tmp=target/debian-grub/tmp.$$
loop=""
cleanup() {
  mountpoint -q "$tmp/mnt" 2>/dev/null && umount "$tmp/mnt"
  [ -n "$loop" ] && losetup -d "$loop"
  rm -rf "$tmp"
}
trap cleanup EXIT
mkdir -p "$tmp/mnt"
root_bytes=$(stat -c %s "$base/root.raw")
root_sectors=$((root_bytes / 512))
# 1 MiB alignment: p1 at 1 MiB, p2 at 2 MiB, p3 at 34 MiB; 1 MiB spare for the backup GPT.
disk_bytes=$(((34 + 1) * 1024 * 1024 + root_bytes))
truncate -s "$disk_bytes" "$tmp/disk.raw"
sfdisk -q "$tmp/disk.raw" <<PARTS
label: gpt
start=2048, size=2048, type=21686148-6449-6E6F-744E-656564454649, name=bios
start=4096, size=65536, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=esp
start=69632, size=$root_sectors, type=0FC63DAF-8483-4772-8E3D-693D47DE4784, name=root
PARTS
# The root filesystem goes in as built (holes stay holes).
dd if="$base/root.raw" of="$tmp/disk.raw" bs=1M seek=34 conv=sparse,notrunc status=none
# This kernel has no partition parsing, so no /dev/loopNp3: the root is
# mounted through a loop device at its offset.
loop=$(losetup --find --show --offset $((69632 * 512)) --sizelimit "$root_bytes" "$tmp/disk.raw")
mount "$loop" "$tmp/mnt"
printf 'LABEL=tern-debian / ext4 rw,discard 0 1\n' >"$tmp/mnt/etc/fstab"
kernel=$(cd "$tmp/mnt/boot" && ls vmlinuz-* | sort -V | tail -1)
initrd=$(cd "$tmp/mnt/boot" && ls initrd.img-* | sort -V | tail -1)
mkdir -p "$tmp/mnt/boot/grub"
cat >"$tmp/mnt/boot/grub/grub.cfg" <<CFG
# Written by scripts/debian-grub-disk.sh (the guest has no update-grub).
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set timeout=0
menuentry 'Debian GNU/Linux (tern)' {
  echo 'TERN-GRUB loading $kernel'
  search --no-floppy --label tern-debian --set=root
  linux /boot/$kernel root=LABEL=tern-debian rw console=ttyS0
  initrd /boot/$initrd
}
CFG
# GRUB's modules, as grub-install lays them out.
cp -r /usr/lib/grub/i386-pc /usr/lib/grub/x86_64-efi "$tmp/mnt/boot/grub/"
rm -f "$tmp/mnt/boot/grub"/*/*.efi "$tmp/mnt/boot/grub"/*/*.image
sync
umount "$tmp/mnt"
losetup -d "$loop"
loop=""

# The images GRUB starts from find /boot/grub by the root's label
# (grub-install would do the same with the filesystem's UUID).
printf 'search --no-floppy --label tern-debian --set=root\nset prefix=($root)/boot/grub\n' >"$tmp/early.cfg"
mods="part_gpt ext2 fat search search_label normal configfile linux echo test serial terminal boot all_video"
grub-mkimage -O i386-pc -o "$tmp/core.img" -c "$tmp/early.cfg" -p /boot/grub biosdisk $mods
grub-mkimage -O x86_64-efi -o "$tmp/BOOTX64.EFI" -c "$tmp/early.cfg" -p /boot/grub $mods

# BIOS: what grub-bios-setup does for a GPT disk. core.img fills the BIOS
# boot partition (LBA 2048); boot.img goes into the protective MBR's first
# 440 bytes and points at core.img's first sector (offset 0x5c), with the
# boot-drive check disabled for a hard disk (0x66); core.img's first sector
# lists where its remaining sectors start (offset 500: LBA 2049).
core_sectors=$(( ($(stat -c %s "$tmp/core.img") + 511) / 512 ))
[ "$core_sectors" -le 2048 ] || { echo "debian-grub-disk: core.img too big" >&2; exit 1; }
python3 - "$tmp/disk.raw" /usr/lib/grub/i386-pc/boot.img "$tmp/core.img" <<'PY'
import struct, sys
disk, boot, core = sys.argv[1:]
b = bytearray(open(boot, "rb").read())
c = bytearray(open(core, "rb").read())
struct.pack_into("<Q", b, 0x5C, 2048)
b[0x66:0x68] = b"\x90\x90"
struct.pack_into("<Q", c, 500, 2049)
with open(disk, "r+b") as f:
    f.seek(0)
    f.write(b[:440])
    f.seek(2048 * 512)
    f.write(c)
PY

# UEFI: the removable path OVMF boots without any NVRAM entry, on a FAT ESP.
truncate -s 32M "$tmp/esp.img"
mkfs.fat -F 16 -n ESP "$tmp/esp.img" >/dev/null
mmd -i "$tmp/esp.img" ::/EFI ::/EFI/BOOT
mcopy -i "$tmp/esp.img" "$tmp/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
dd if="$tmp/esp.img" of="$tmp/disk.raw" bs=1M seek=2 conv=notrunc status=none

echo $(($(date +%s) - start)) >"$tmp/build-seconds"
mkdir -p "$out.new"
mv "$tmp/disk.raw" "$tmp/build-seconds" "$out.new/"
touch "$out.new/.done"
rm -rf "$out"
mv "$out.new" "$out"
for old in target/debian-grub/*; do
  [ "$old" = "$out" ] || [[ "$old" == *tmp.* ]] || rm -rf "$old"
done
echo "debian-grub-disk: built in $(cat "$out/build-seconds") s" >&2
echo "$out"
