#!/usr/bin/env bash
# Installs what Tern needs on a Debian machine: QEMU, qemu-img, a kernel and
# busybox for the test guest, iproute2 for bridges and namespaces, protoc and
# etcd for the cluster controller's etcd store, and a single-node Ceph for
# the RBD tests.
# Idempotent: only missing packages are installed.
set -euo pipefail

PKGS=(
  qemu-system-x86      # the hypervisor Tern drives
  qemu-utils           # qemu-img, qemu-nbd
  busybox-static       # the test guest's userland
  linux-image-amd64    # the test guest's kernel (Debian's)
  iproute2             # bridges, taps, network namespaces in tests
  xz-utils
  cpio
  openssh-client       # ssh, ssh-keygen: the tern+ssh:// transport
  openssh-server       # sshd for the tern+ssh:// tests (run on a loopback port)
  rsync                # the storage benchmark's baseline
  protobuf-compiler    # protoc, for the etcd client (tern-store)
  etcd-server          # the cluster store for several controllers; tests start one
  ovmf                 # UEFI firmware for <os firmware='efi'> guests (/usr/share/OVMF)
  swtpm                # the TPM emulator behind <tpm><backend type='emulator'>
  swtpm-tools          # swtpm_setup, to create a TPM's state
  nfs-ganesha          # the NFS server the netfs pool tests start in a namespace
  nfs-ganesha-vfs      # its backend that exports a local directory
  rpcbind              # the portmapper NFSv3 clients (libnfs) ask for ports
  chromium             # the web console's browser test (headless)
  chromium-driver      # WebDriver for it
  fonts-dejavu-core    # text in the console's screenshots
  prometheus           # promtool, to lint the /metrics the daemons serve
  dpkg-dev             # dpkg-shlibdeps, for cargo deb (scripts/package.sh)
  debootstrap          # the clean root of the package test (scripts/pkgtest-root.sh)
  systemd              # systemd-analyze verify, for the units' test
  openssl              # s_client: an intruder's TLS client in the data-plane test
  curl                 # the console's certificate login test
  e2fsprogs            # chattr: the fencing tests make one host's storage lease unwritable
  ceph-mon             # the single-node Ceph the RBD tests start (issue 21)
  ceph-mgr             # its manager: a cluster without one never reports HEALTH_OK
  ceph-osd             # its one BlueStore OSD, on a sparse file
  ceph-common          # ceph, rbd, ceph-authtool: pools, images, blocklists, keys
  lvm2                 # logical (LVM) pools, and the volume groups their tests make on loop devices
  virtinst             # virt-install: scripts/virt-install-corpus.sh writes the corpus with it
  libvirt-clients      # virsh, whose embedded QEMU driver reports this host's capabilities to it
  libvirt-daemon-driver-qemu # that driver (run in-process: no libvirt daemon is started)
  # libvirtd, for the benchmarks' libvirt baseline (crates/tern-bench/src/libvirt.rs
  # starts two in network and mount namespaces of their own). Bookworm's package ships
  # no systemd units and no maintainer scripts (those are in libvirt-daemon-system,
  # which is NOT installed), so installing it starts no system libvirtd, creates no
  # network and touches neither /etc/libvirt nor the host's firewall.
  libvirt-daemon
  grub-pc-bin          # GRUB for BIOS: the Debian guest's bootable disk (scripts/debian-grub-disk.sh)
  grub-efi-amd64-bin   # GRUB for UEFI, on the same disk
  dosfstools           # mkfs.fat: that disk's EFI system partition
  mtools               # mcopy: fills the ESP without mounting it
  fdisk                # sfdisk: that disk's GPT
  jq                   # scripts/run-tests.sh reads cargo's list of test binaries with it
)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# The kernel meta-package may be satisfied by any installed linux-image.
if ls /boot/vmlinuz-* >/dev/null 2>&1; then
  missing=("${missing[@]/linux-image-amd64}")
fi
# On bookworm QEMU comes from bookworm-backports (below): installing
# bookworm's 7.2 first breaks apt's resolver when a backported qemu-utils
# is already there (seen on a fresh machine), and would be replaced anyway.
if [ "$(. /etc/os-release && echo "${VERSION_CODENAME:-}")" = "bookworm" ]; then
  missing=("${missing[@]/qemu-system-x86}")
  missing=("${missing[@]/qemu-utils}")
fi
missing=($(printf '%s\n' "${missing[@]}" | grep -v '^$' || true))

if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# QEMU 7.2 (bookworm's) corrupts guests migrated under TCG with post-copy
# and, more rarely, with pre-copy of a dirtying guest (see docs/BENCHMARKS.md,
# "QEMU version"); Tern needs QEMU 10, which bookworm has in backports.
QEMU_MIN_MAJOR=10
qemu_major() { qemu-system-x86_64 --version 2>/dev/null | sed -n 's/.*version \([0-9]*\)\..*/\1/p' | head -1; }
major=$(qemu_major || true)
if [ -z "$major" ] || [ "$major" -lt "$QEMU_MIN_MAJOR" ] || ! command -v qemu-img >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  target=()
  if [ "$codename" = "bookworm" ]; then
    echo "install-deps: QEMU ${major:-none} found; installing QEMU from bookworm-backports"
    printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      | $SUDO tee /etc/apt/sources.list.d/tern-backports.sources >/dev/null
    target=(-t bookworm-backports)
  fi
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${target[@]}" qemu-system-x86 qemu-utils qemu-block-extra >/dev/null
  major=$(qemu_major || true)
  if [ -z "$major" ] || [ "$major" -lt "$QEMU_MIN_MAJOR" ]; then
    echo "install-deps: QEMU ${major:-none} installed, Tern needs $QEMU_MIN_MAJOR or newer" >&2
    exit 1
  fi
fi

# SPICE (<graphics type='spice'>, qxl, spicevmc channels) is a QEMU module that
# must come from the same QEMU build as qemu-system-x86.
if ! qemu-system-x86_64 -spice help >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  target=()
  [ -f /etc/apt/sources.list.d/tern-backports.sources ] && target=(-t bookworm-backports)
  echo "install-deps: installing QEMU's SPICE module"
  $SUDO apt-get install -y -qq --no-install-recommends "${target[@]}" qemu-system-modules-spice >/dev/null
fi

# QEMU's network block drivers (nfs:// through libnfs, rbd, iscsi, gluster)
# must come from the same QEMU build: on bookworm, from backports too.
if ! dpkg-query -W -f='${Status}' qemu-block-extra 2>/dev/null | grep -q "install ok installed"; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  target=()
  if [ "$(. /etc/os-release && echo "${VERSION_CODENAME:-}")" = "bookworm" ]; then
    target=(-t bookworm-backports)
  fi
  echo "install-deps: installing qemu-block-extra ${target[*]}"
  $SUDO apt-get install -y -qq --no-install-recommends "${target[@]}" qemu-block-extra >/dev/null
fi

# QEMU drops to this user once it has opened its domain's files (ternd's
# [qemu] user; see docs/SECURITY.md, "Confinement and inputs"). It may use
# KVM and, for post-copy, /dev/userfaultfd.
if ! id tern-qemu >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "install-deps: creating the tern-qemu user"
  $SUDO useradd --system --user-group --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin tern-qemu
fi
if getent group kvm >/dev/null && ! id -nG tern-qemu | grep -qw kvm; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO usermod -aG kvm tern-qemu
fi

# libvirtd's QEMU driver resolves its built-in QEMU user and group
# (libvirt-qemu) at start, before reading qemu.conf, and fails without them;
# libvirt-daemon-system (not installed, see above) would create them. The
# benchmark's daemons still run QEMU as root (their private qemu.conf).
if ! getent group libvirt-qemu >/dev/null; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO groupadd --system libvirt-qemu
fi
if ! id libvirt-qemu >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "install-deps: creating the libvirt-qemu user (libvirtd's QEMU driver needs it to exist)"
  $SUDO useradd --system --gid libvirt-qemu --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin libvirt-qemu
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "install-deps: cargo is missing; install a Rust toolchain (rustup) first" >&2
  exit 1
fi
# cargo-deb builds the .deb packages (scripts/package.sh); pinned.
CARGO_DEB_VERSION=3.8.0
if [ "$(cargo deb --version 2>/dev/null | awk '{print $2}')" != "$CARGO_DEB_VERSION" ]; then
  echo "install-deps: installing cargo-deb $CARGO_DEB_VERSION"
  cargo install --locked --quiet cargo-deb --version "$CARGO_DEB_VERSION"
fi
echo "install-deps: ok ($(qemu-system-x86_64 --version | head -1))"
