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
# e.g. a name filter). Doc tests run last, through cargo.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs_max=${TERN_TEST_JOBS:-2}

# The slowest binaries, measured over full runs (seconds at
# --test-threads=2 on two cores): started first. Others follow in any order.
SLOW=(virt_install fault_matrix ceph postcopy_recovery migration fencing
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
run_one() {
  local i=$1 m=$2 src=$3 exe=$4
  shift 4
  local rc=0
  (cd "$(dirname "$m")" && "$exe" --test-threads=2 "$@") >"$logs/$i.out" 2>&1 || rc=$?
  echo "$rc" >"$logs/$i.rc"
  # One whole log at a time on our output.
  {
    flock 9
    echo "     Running $src (${exe#"$PWD"/})"
    cat "$logs/$i.out"
  } 9>"$logs/print.lock"
}

i=0
for line in "${ordered[@]}"; do
  IFS=$'\t' read -r m n src exe <<<"$line"
  while (($(jobs -rp | wc -l) >= jobs_max)); do
    wait -n || true
  done
  run_one "$i" "$m" "$src" "$exe" "$@" &
  echo "$n" >"$logs/$i.name"
  i=$((i + 1))
done
wait

failed=()
for ((k = 0; k < i; k++)); do
  [[ $(cat "$logs/$k.rc" 2>/dev/null || echo 1) == 0 ]] || failed+=("$(cat "$logs/$k.name")")
done
doc_rc=0
cargo test --workspace --doc --no-fail-fast -- "$@" || doc_rc=$?
if ((${#failed[@]} > 0 || doc_rc != 0)); then
  echo "error: ${#failed[@]} test binaries failed: ${failed[*]}; doc tests exit code $doc_rc" >&2
  exit 1
fi
