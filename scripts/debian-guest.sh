#!/usr/bin/env bash
# Builds the Debian test guest (issue 16: a real distribution guest next to
# the busybox test guest): Debian made by debootstrap with systemd, udev and
# qemu-guest-agent (and nfs-common, and QEMU from backports, for ternd
# inside it), its root filesystem an ext4 image made without loop
# mounts (mkfs.ext4 -d), booted with Debian's own kernel and initrd
# (direct kernel boot, root=/dev/vda). A service prints to the serial
# console what the tests believe: `TERN-READY systemd=<state>` once systemd
# finished booting, then `TERN-HB seq=<n> up_ms=<ms>` every second.
#
# Cached under target/debian-guest/<hash of this script>/ (root.raw,
# vmlinuz, initrd.img, build-seconds): rebuilt only when this script
# changes. Prints that directory on its last line. Network: Debian's
# archive only. Needs root (debootstrap, chroot).
set -euo pipefail
cd "$(dirname "$0")/.."
mirror=http://deb.debian.org/debian
suite=bookworm
packages=systemd,systemd-sysv,udev,qemu-guest-agent,linux-image-amd64,iproute2,kmod,initramfs-tools
# The kernel-mount netfs test (issue 20) runs ternd inside the guest: it
# mounts with mount.nfs; QEMU and qemu-img come from backports below.
packages=$packages,nfs-common
# The logical-pool test (issue 16) runs two ternd with LVM volume groups on
# the guest's extra disks: Debian's kernel has device-mapper, this host's not.
packages=$packages,lvm2
key=$(sha256sum "$0" | cut -c1-16)
out=target/debian-guest/$key
if [ -f "$out/.done" ]; then
  echo "$out"
  exit 0
fi
start=$(date +%s)
tmp=target/debian-guest/tmp.$$
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp"
echo "debian-guest: debootstrap $suite (minbase + $packages); a few minutes, once" >&2
debootstrap --variant=minbase --include="$packages" "$suite" "$tmp/root" "$mirror" >"$tmp/debootstrap.log" 2>&1 || {
  tail -20 "$tmp/debootstrap.log" >&2
  exit 1
}
root=$tmp/root
# QEMU as scripts/install-deps.sh installs it on bookworm (Tern needs 10,
# from bookworm-backports), for ternd inside the guest.
echo "deb $mirror $suite-backports main" >"$root/etc/apt/sources.list.d/backports.list"
{
  chroot "$root" apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get install -y -qq --no-install-recommends \
      -t "$suite-backports" qemu-system-x86 qemu-utils
} >"$tmp/qemu.log" 2>&1 || {
  tail -20 "$tmp/qemu.log" >&2
  exit 1
}
echo tern-debian >"$root/etc/hostname"
printf '/dev/vda / ext4 rw,discard 0 1\n' >"$root/etc/fstab"
# No root password: the guest is only ever on a test's own host.
sed -i 's/^root:[^:]*:/root::/' "$root/etc/shadow"
cat >"$root/usr/local/bin/tern-heartbeat" <<'EOF'
#!/bin/sh
# Waits for systemd to finish booting, says so, then beats once a second.
state=$(systemctl is-system-running --wait)
echo "TERN-READY systemd=$state target=$(systemctl is-active multi-user.target)" >/dev/ttyS0
n=0
while :; do
  n=$((n + 1))
  echo "TERN-HB seq=$n up_ms=$(awk '{printf "%d", $1 * 1000}' /proc/uptime)" >/dev/ttyS0
  sleep 1
done
EOF
chmod 755 "$root/usr/local/bin/tern-heartbeat"
cat >"$root/etc/systemd/system/tern-heartbeat.service" <<'EOF'
[Unit]
Description=Tern test heartbeat on the serial console

[Service]
ExecStart=/usr/local/bin/tern-heartbeat

[Install]
WantedBy=multi-user.target
EOF
# The NIC takes an address by DHCP (systemd-networkd), as a cloud image's does.
printf '[Match]\nName=en*\n\n[Network]\nDHCP=yes\n' >"$root/etc/systemd/network/20-wired.network"
systemctl --root="$root" --quiet enable tern-heartbeat.service systemd-networkd.service
# Nothing in the guest reaches out on its own (apt's daily timers).
systemctl --root="$root" --quiet mask apt-daily.timer apt-daily-upgrade.timer
# The kernel and initrd leave the image; the image keeps its modules.
cp "$(ls "$root"/boot/vmlinuz-* | sort -V | tail -1)" "$tmp/vmlinuz"
cp "$(ls "$root"/boot/initrd.img-* | sort -V | tail -1)" "$tmp/initrd.img"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
mkfs.ext4 -q -F -L tern-debian -d "$root" "$tmp/root.raw" 2G
rm -rf "$root"
echo $(($(date +%s) - start)) >"$tmp/build-seconds"
touch "$tmp/.done"
rm -rf "$out"
mv "$tmp" "$out"
trap - EXIT
# Builds of earlier versions of this script are not used again.
for old in target/debian-guest/*; do
  [ "$old" = "$out" ] || rm -rf "$old"
done
echo "debian-guest: built in $(cat "$out/build-seconds") s" >&2
echo "$out"
