#!/usr/bin/env bash
# Regenerates crates/tern-model/tests/fixtures/corpus/virt-install/*.xml:
# domain XML exactly as Debian's virt-install (virtinst 4.1) writes it for a
# KVM host running this machine's QEMU, with no libvirt daemon (issue 16).
#
# How: libvirt's QEMU driver runs embedded in `virsh` (qemu:///embed, as an
# unprivileged user, so it needs no libvirt-qemu account) and reports this
# host's real capabilities and domain capabilities (machine types, OVMF
# firmware, CPU modes), probed from the installed QEMU. virt-install then
# runs against libvirt's in-process test driver (test:///default) told to
# report those capabilities as qemu:///system (virtinst's own test hook,
# `__virtinst_test__`; UUIDs and MACs random, as always), and prints the XML
# (`--print-xml`) without defining anything anywhere.
#
# Bookworm's osinfo-db (0.20221130) predates Debian 12, so
# `--osinfo debian12` is refused there; `debian11` gives the same devices
# (virtio disk and NIC, q35, qemu-xhci, virtio-rng) and differs only in the
# libosinfo id under <metadata>, which Tern ignores.
#
# Paths and the network name are what virt-install writes on a stock host
# (/var/lib/libvirt/images/..., network 'default'); tests point them at
# their own disks and a Tern network named 'default', nothing else changes.
# Needs: virtinst, libvirt-clients, libvirt-daemon-driver-qemu, QEMU.
set -euo pipefail
cd "$(dirname "$0")/.."
out=crates/tern-model/tests/fixtures/corpus/virt-install
work=$(mktemp -d /tmp/tern-virt-install.XXXXXX)
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"
mkdir -m 777 "$work/embed" "$work/caps"

# The embedded QEMU driver as nobody (with /dev/kvm's group, so KVM counts).
as_nobody() {
  local kvm
  kvm=$(getent group kvm | cut -d: -f3)
  HOME="$work/embed" setpriv --reuid=65534 --regid=65534 --groups="${kvm:-65534}" "$@"
}
embed="qemu:///embed?root=$work/embed"
as_nobody virsh -q -c "$embed" capabilities >"$work/caps/caps.xml"
for machine in q35 pc; do
  as_nobody virsh -q -c "$embed" domcapabilities --machine "$machine" --virttype kvm \
    >"$work/caps/$machine.xml"
done

# virt-install against the test driver posing as this host's qemu:///system.
vi() {
  local machine=$1 file=$2 cmd
  shift 2
  local uri="__virtinst_test__test:///default,caps=$work/caps/caps.xml,domcaps=$work/caps/$machine.xml,fakeuri=qemu:///system"
  # An XML comment cannot hold "--": the options (all written --opt=value)
  # are printed without their two leading dashes.
  cmd="virt-install print-xml $(printf '%s\n' "$@" | sed 's/^--//' | tr '\n' ' ')"
  {
    echo "<!-- Written by virt-install $(virt-install --version) (Debian virtinst) for QEMU"
    echo "     $(qemu-system-x86_64 --version | head -1 | sed 's/.*version \([^ ]*\).*/\1/'), by scripts/virt-install-corpus.sh, as"
    echo "     (each word after print-xml is an option with two leading dashes):"
    echo "     ${cmd% } -->"
    virt-install --connect "$uri" --print-xml "$@"
  } >"$out/$file"
  echo "virt-install-corpus: $out/$file" >&2
}

common=(--memory=1024 --vcpus=2 --osinfo=debian11 --import
  --disk=path=/var/lib/libvirt/images/debian12.qcow2,size=10,format=qcow2)
devices=(--network=network=default
  --channel=unix,target.type=virtio,name=org.qemu.guest_agent.0
  --rng=/dev/urandom --tpm=emulator,model=tpm-crb,version=2.0
  --watchdog=i6300esb,action=reset --sound=ich9)

mkdir -p "$out"
# The defaults: what `virt-install --osinfo debian11 --import --disk ...` gives.
vi q35 debian12-defaults.xml --name=debian12 "${common[@]}"
# q35 with SeaBIOS, SPICE, the guest agent channel, rng, TPM, watchdog, sound.
vi q35 debian12-q35-bios.xml --name=debian12-bios --machine=q35 "${common[@]}" \
  "${devices[@]}" --graphics=spice
# The same with UEFI (Debian's OVMF; a per-guest NVRAM from its template).
vi q35 debian12-q35-uefi.xml --name=debian12-uefi --machine=q35 --boot=uefi "${common[@]}" \
  "${devices[@]}" --graphics=spice
# i440fx (machine 'pc') with VNC.
vi pc debian12-i440fx-vnc.xml --name=debian12-i440fx --machine=pc "${common[@]}" \
  "${devices[@]}" --graphics=vnc --video=vga
