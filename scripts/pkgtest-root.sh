#!/usr/bin/env bash
# Prepares the clean root the package test installs Tern's .debs into
# (crates/tern-testkit/tests/packages.rs): a minimal Debian made by
# debootstrap, plus systemd (as on any host; `systemd-analyze verify
# --root` needs its units) and the Debian packages that target/debian/*.deb
# declare in Depends (QEMU from bookworm-backports on bookworm, as
# install-deps does).
# Tern itself is not installed there: the test does that with dpkg -i.
#
# The root is cached under target/pkgroot/deps (about 600 MB) and rebuilt
# only when the packages' Depends change. Network: Debian's archive only.
# Run scripts/package.sh --dev first.
set -euo pipefail
cd "$(dirname "$0")/.."
root=target/pkgroot
mirror=http://deb.debian.org/debian
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")

debs=(target/debian/ternd_*.deb target/debian/tern_*.deb target/debian/tern-controller_*.deb)
for d in "${debs[@]}"; do
  [ -s "$d" ] || { echo "pkgtest-root: $d is missing; run scripts/package.sh --dev" >&2; exit 1; }
done
# The dependency names, without versions or alternatives' extras.
deps=$(for d in "${debs[@]}"; do dpkg-deb -f "$d" Depends; done | tr ',' '\n' \
  | sed 's/([^)]*)//g; s/|.*//; s/ //g' | grep -v '^$' | sort -u | tr '\n' ' ')
deps="$deps systemd"
want="$codename: $deps"
if [ -f "$root/deps/.tern-deps" ] && [ "$(cat "$root/deps/.tern-deps")" = "$want" ]; then
  exit 0
fi

mkdir -p "$root"
if [ ! -f "$root/base/.tern-base" ]; then
  rm -rf "$root/base.tmp" "$root/base"
  echo "pkgtest-root: debootstrap $codename (minbase)"
  debootstrap --variant=minbase "$codename" "$root/base.tmp" "$mirror" >/dev/null
  touch "$root/base.tmp/.tern-base"
  mv "$root/base.tmp" "$root/base"
fi

rm -rf "$root/deps.tmp" "$root/deps"
cp -a "$root/base" "$root/deps.tmp"
cp /etc/resolv.conf "$root/deps.tmp/etc/resolv.conf"
target=()
if [ "$codename" = bookworm ]; then
  printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$mirror" \
    > "$root/deps.tmp/etc/apt/sources.list.d/backports.sources"
  target=(-t bookworm-backports)
fi
echo "pkgtest-root: installing $deps"
# A private mount namespace: /proc for the packages' scripts, gone afterwards.
unshare --mount --fork sh -c '
  mount -t proc proc "$1/proc"
  shift
  exec chroot "$@"' - "$root/deps.tmp" "$root/deps.tmp" /bin/sh -c "
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq &&
  apt-get install -y -qq --no-install-recommends ${target[*]} $deps >/dev/null &&
  apt-get clean"
echo "$want" > "$root/deps.tmp/.tern-deps"
mv "$root/deps.tmp" "$root/deps"
echo "pkgtest-root: ready ($(du -sh "$root/deps" | cut -f1))"
