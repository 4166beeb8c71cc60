#!/usr/bin/env bash
# Installs what Tern needs on a Debian machine: QEMU, qemu-img, a kernel and
# busybox for the test guest, iproute2 for bridges and namespaces, protoc and
# etcd for the cluster controller's etcd store.
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
  protobuf-compiler    # protoc, for the etcd client (tern-store)
  etcd-server          # the cluster store for several controllers; tests start one
)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# The kernel meta-package may be satisfied by any installed linux-image.
if ls /boot/vmlinuz-* >/dev/null 2>&1; then
  missing=("${missing[@]/linux-image-amd64}")
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

# Installing Debian's qemu-system-x86 can remove a newer qemu-utils from
# backports (their packages conflict): make sure the tools are really there.
need_cmd() { command -v "$1" >/dev/null 2>&1 || {
  echo "install-deps: $1 missing, installing $2"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$2" >/dev/null
}; }
need_cmd qemu-img qemu-utils
need_cmd qemu-system-x86_64 qemu-system-x86

if ! command -v cargo >/dev/null 2>&1; then
  echo "install-deps: cargo is missing; install a Rust toolchain (rustup) first" >&2
  exit 1
fi
echo "install-deps: ok ($(qemu-system-x86_64 --version | head -1))"
