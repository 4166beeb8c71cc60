#!/usr/bin/env bash
# Runs every test binary of the workspace, several at once, longest first.
#
# Why not plain `cargo test`: cargo runs test binaries one after another,
# and most of this suite waits (guest boots under TCG, leases, orphan
# timers), so two cores sat 58 % idle over a full run. Here
# TERN_TEST_JOBS binaries (default 2) run side by side, each with
# --test-threads=2 as before; the slowest binaries start first so the last
# one to end is a short one. Each binary runs from its package's directory,
# as cargo would run it, and its whole output is printed when it ends,
# under cargo's own "Running" header, so a failure reads as it always did.
#
# Usage: scripts/run-tests.sh [ARGS...]   (ARGS go to every test binary,
# e.g. a name filter). Doc tests run last, through cargo. The binaries are
# run by xargs -P (through this script's --one mode), not by shell job
# control: a first version that counted `jobs` exited early in a full run
# for a reason not found.
set -euo pipefail
self=$(realpath "$0")
cd "$(dirname "$self")/.."
jobs_max=${TERN_TEST_JOBS:-2}

# --one LINE [ARGS...]: run one binary of the queue (see below), record its
# exit code and print its whole output at once.
if [[ ${1:-} == --one ]]; then
  IFS=$'\t' read -r i m n src exe <<<"$2"
  shift 2
  logs=$TERN_TEST_LOGS
  echo "$n" >"$logs/$i.name"
  rc=0
  (cd "$(dirname "$m")" && "$exe" --test-threads=2 "$@") >"$logs/$i.out" 2>&1 || rc=$?
  echo "$rc" >"$logs/$i.rc"
  label=$src
  [[ $src == src/* ]] && label="unittests $src"
  {
    flock 9
    echo "     Running $label (${exe#"$PWD"/})"
    cat "$logs/$i.out"
  } 9>"$logs/print.lock"
  exit 0
fi

# The slowest binaries, measured over full runs (seconds at
# --test-threads=2 on two cores): started first. Others follow in any order.
SLOW=(virt_install fault_matrix logical_pools ceph postcopy_recovery migration fencing
  cluster data_plane ceph_fencing guests fencing_watchdog confinement
  netfs_kernel debian_guest ceph_copies leaders netfs observe)

# "manifest<TAB>name<TAB>source<TAB>executable" for every test binary.
list=$(cargo test --workspace --no-run --message-format=json 2>/dev/null |
  jq -r 'select(.reason == "compiler-artifact" and .profile.test and .executable != null)
    | [.manifest_path, .target.name, (.target.src_path | sub(".*/(?<p>(src|tests)/.*)$"; "\(.p)")), .executable]
    | @tsv')
if [[ -z $list ]]; then
  echo "run-tests: cargo listed no test binaries (does the workspace build?)" >&2
  exit 1
fi

ordered=()
for s in "${SLOW[@]}"; do
  while IFS=$'\t' read -r m n src exe; do
    [[ $n == "$s" && $src == tests/* ]] && ordered+=("$m"$'\t'"$n"$'\t'"$src"$'\t'"$exe")
  done <<<"$list"
done
while IFS=$'\t' read -r m n src exe; do
  line="$m"$'\t'"$n"$'\t'"$src"$'\t'"$exe"
  [[ " ${SLOW[*]} " == *" $n "* && $src == tests/* ]] || ordered+=("$line")
done <<<"$list"

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
# One line per binary, numbered, for xargs: it keeps TERN_TEST_JOBS of them
# running (each through this script's --one mode below) and waits for all.
for k in "${!ordered[@]}"; do
  printf '%s\t%s\n' "$k" "${ordered[$k]}"
done >"$logs/queue"
export TERN_TEST_LOGS=$logs
xargs -a "$logs/queue" -d '\n' -P "$jobs_max" -I{} "$self" --one {} "$@" || true
i=${#ordered[@]}

failed=()
for ((k = 0; k < i; k++)); do
  [[ $(cat "$logs/$k.rc" 2>/dev/null || echo 1) == 0 ]] || failed+=("$(cat "$logs/$k.name" 2>/dev/null || echo "#$k")")
done
doc_rc=0
cargo test --workspace --doc --no-fail-fast -- "$@" || doc_rc=$?
if ((${#failed[@]} > 0 || doc_rc != 0)); then
  echo "error: ${#failed[@]} test binaries failed: ${failed[*]}; doc tests exit code $doc_rc" >&2
  exit 1
fi
