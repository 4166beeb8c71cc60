#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (default 30 s each) and fails at
# the first crash, timeout (an input taking over 10 s), out-of-memory (over
# 2 GiB) or leak. Works on a stable toolchain: cargo-fuzz needs nightly
# flags, which RUSTC_BOOTSTRAP=1 allows. Sanitizers are used when they
# build (`-s address`, the default), else set FUZZ_SANITIZER=none.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# New inputs that widen coverage are kept in fuzz/corpus/<target>/ (commit
# them); failing inputs land in fuzz/artifacts/<target>/. Without
# cargo-fuzz, `cargo test --manifest-path fuzz/Cargo.toml` still replays
# the whole corpus on stable (CI does).
set -euo pipefail
secs=${1:-30}
shift || true
cd "$(dirname "$0")/../fuzz"
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: cargo-fuzz is missing; install it with: cargo install cargo-fuzz" >&2
    exit 2
fi
export RUSTC_BOOTSTRAP=1
san=${FUZZ_SANITIZER:-address}
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi
cargo fuzz build -s "$san"
# libFuzzer's names for what it found: every one fails the run.
findings='crash-*|timeout-*|oom-*|leak-*'
found() { compgen -G "artifacts/$1/crash-*" || compgen -G "artifacts/$1/timeout-*" ||
    compgen -G "artifacts/$1/oom-*" || compgen -G "artifacts/$1/leak-*"; }
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    echo "fuzz.sh: $t for ${secs} s"
    log=$(mktemp)
    set +e
    cargo fuzz run -s "$san" "$t" "corpus/$t" -- \
        -max_total_time="$secs" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
        -malloc_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1
    rc=$?
    set -e
    grep -E "DONE|^==|SUMMARY|panicked|ERROR|Test unit written|^thread" "$log" || true
    if [ $rc -ne 0 ] || found "$t" >/dev/null; then
        echo "fuzz.sh: $t failed (exit $rc; $findings in fuzz/artifacts/$t/): reproduce with" \
            "(cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run -s $san $t artifacts/$t/FILE); full log: $log" >&2
        exit 1
    fi
    rm -f "$log"
done
echo "fuzz.sh: no crashes, timeouts or out-of-memory"
# After a long run, shrink the corpus before committing it:
#   (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz cmin -s address TARGET corpus/TARGET)
