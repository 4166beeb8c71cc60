#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (default 30 s each) and stops at
# the first crash. Works on a stable toolchain: cargo-fuzz needs nightly
# flags, which RUSTC_BOOTSTRAP=1 allows. Sanitizers are used when they
# build (`-s address`, the default), else set FUZZ_SANITIZER=none.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# New inputs that widen coverage are kept in fuzz/corpus/<target>/ (commit
# them); crashes land in fuzz/artifacts/<target>/.
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
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    echo "fuzz.sh: $t for ${secs} s"
    cargo fuzz run -s "$san" "$t" "corpus/$t" -- \
        -max_total_time="$secs" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 2>&1 | grep -E "DONE|^==|SUMMARY|panicked|ERROR|Test unit written|^thread" || true
    if compgen -G "artifacts/$t/crash-*" >/dev/null; then
        echo "fuzz.sh: $t crashed; reproduce with: (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run -s $san $t artifacts/$t/crash-...)" >&2
        exit 1
    fi
done
echo "fuzz.sh: no crashes"
# After a long run, shrink the corpus before committing it:
#   (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz cmin -s address TARGET corpus/TARGET)
