#!/usr/bin/env bash
# The test command: installs dependencies, builds everything (including the
# test guest), then runs every test. Integration tests boot real QEMU guests
# under TCG.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
# Style and lints are part of the tests: formatting, then clippy with every
# warning an error (the workspace's [workspace.lints] included).
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --workspace --all-targets
cargo run -q -p tern-testkit --bin tern-testguest >/dev/null
# The Debian guest (debootstrap; about 4 minutes once, then cached).
scripts/debian-guest.sh >/dev/null
scripts/debian-grub-disk.sh >/dev/null
# The .deb packages (debug build) and the clean root their test installs into.
scripts/package.sh --dev >/dev/null
scripts/pkgtest-root.sh
# The fuzz workspace (its own, see fuzz/Cargo.toml) must build, and its
# whole corpus replays as tests against the current code (stable toolchain).
cargo build --manifest-path fuzz/Cargo.toml --all-targets
cargo test --manifest-path fuzz/Cargo.toml
cargo test --workspace --no-fail-fast -- --test-threads=2 "$@"
