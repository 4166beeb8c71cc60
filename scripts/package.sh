#!/usr/bin/env bash
# Builds Tern's Debian packages: ternd, tern and tern-controller, into
# target/debian/. Man pages and shell completions are generated first from
# the programs' own clap definitions (TERN_GENERATE_DOCS, see tern-docgen).
#
#   scripts/package.sh          release build (what to install on hosts);
#                               the binaries are stripped, their debug
#                               symbols go to *-dbgsym_*.ddeb beside them
#   scripts/package.sh --dev    debug build, for the package tests
#
# Needs cargo-deb at the version below (scripts/install-deps.sh installs it)
# and dpkg-dev.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO_DEB_VERSION=3.8.0

profile=release
dir=release
# The release profile keeps debug info (line tables for backtraces): ship
# it in separate dbgsym packages, not in the 120 MB binaries.
debug=(--dbgsym)
if [ "${1:-}" = "--dev" ]; then
  profile=dev
  dir=debug
  debug=()
fi
have=$(cargo deb --version 2>/dev/null | awk '{print $2}' || true)
if [ "$have" != "$CARGO_DEB_VERSION" ]; then
  echo "package: cargo-deb $CARGO_DEB_VERSION is needed (found: ${have:-none}); run scripts/install-deps.sh" >&2
  exit 1
fi

# Every binary a package ships: ternd's package carries tern-fence and
# tern-watchdog too.
cargo build --profile "$profile" -p tern-agent --bin ternd --bin tern-fence --bin tern-watchdog \
  -p tern-cli --bin tern -p tern-controller --bin tern-controller

docs=target/docs
rm -rf "$docs"
for b in ternd tern tern-controller; do
  TERN_GENERATE_DOCS="$docs" "target/$dir/$b" >/dev/null
done
gzip -9nf "$docs"/man/*

mkdir -p target/debian
for crate in tern-agent tern-cli tern-controller; do
  cargo deb --no-build --profile "$profile" "${debug[@]}" -p "$crate" --output target/debian/
done
# The package names and versions make the file names; report what was built.
ls -1 target/debian/*.deb
for d in target/debian/ternd_*.deb target/debian/tern_*.deb target/debian/tern-controller_*.deb; do
  [ -s "$d" ] || { echo "package: $d was not built" >&2; exit 1; }
done
