#!/usr/bin/env bash
# The main job: installs dependencies, builds Tern and its test guest, then
# live-migrates a real guest between two Tern hosts on this machine and
# prints what happened.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build -q --workspace --bins
exec target/debug/tern-demo "$@"
