#!/usr/bin/env bash
# The test command: installs dependencies, builds everything (including the
# test guest), then runs every test. Integration tests boot real QEMU guests
# under TCG.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
# The Debian guest (debootstrap; about 4 minutes once, then cached) mostly
# waits on the archive, so it is built while cargo compiles.
debian_log=$(mktemp)
scripts/debian-guest.sh >/dev/null 2>"$debian_log" &
debian_pid=$!
trap 'kill "$debian_pid" 2>/dev/null || true; rm -f "$debian_log"' EXIT
# Style and lints are part of the tests: formatting, then clippy with every
# warning an error (the workspace's [workspace.lints] included).
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --workspace --all-targets
cargo run -q -p tern-testkit --bin tern-testguest >/dev/null
if ! wait "$debian_pid"; then
  cat "$debian_log" >&2
  echo "test: building the Debian guest failed (scripts/debian-guest.sh)" >&2
  exit 1
fi
# The Debian guest on a GRUB disk (from the same root; seconds, cached).
scripts/debian-grub-disk.sh >/dev/null
# The .deb packages (debug build) and the clean root their test installs into.
scripts/package.sh --dev >/dev/null
scripts/pkgtest-root.sh
# The fuzz workspace (its own, see fuzz/Cargo.toml) must build, and its
# whole corpus replays as tests against the current code (stable toolchain).
# It shares the main target directory (and dev profile), so the
# dependencies compiled above are reused.
CARGO_TARGET_DIR=target cargo build --manifest-path fuzz/Cargo.toml --all-targets
CARGO_TARGET_DIR=target cargo test --manifest-path fuzz/Cargo.toml
# Every test binary, two at a time, longest first (scripts/run-tests.sh
# says why); TERN_TEST_JOBS=1 runs them one after another.
scripts/run-tests.sh "$@"
