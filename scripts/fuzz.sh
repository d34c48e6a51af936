#!/usr/bin/env bash
# Fuzz the MRC header parser for a bounded time: scripts/fuzz.sh [SECONDS] (default 60).
#
# With a nightly toolchain and libFuzzer (cargo-fuzz's target in fuzz/), runs fuzz/fuzz_targets/mrc_header.rs:
# through `cargo fuzz` when it is installed, otherwise by building the target with the same instrumentation flags
# cargo-fuzz uses. Crashes land in fuzz/artifacts/mrc_header/; turn each into a test in
# crates/io/tests/fuzz_headers.rs. Without nightly, runs the stable-Rust mutation test (same checks) with more
# iterations.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
corpus=fuzz/corpus/mrc_header
mkdir -p "$corpus" fuzz/artifacts/mrc_header
# Seed the corpus with small real headers (first 4 KiB of mrcfile's test files, when fetched).
for f in .cache/testdata/mrcfile/EMD-3197.map .cache/testdata/mrcfile/emd_3197.map.gz; do
  [ -f "$f" ] && [ ! -f "$corpus/$(basename "$f")" ] && cp "$f" "$corpus/$(basename "$f")"
done
if rustup run nightly rustc --version >/dev/null 2>&1; then
  if cargo +nightly fuzz --version >/dev/null 2>&1; then
    cd fuzz && exec cargo +nightly fuzz run mrc_header -- -max_total_time="$secs" -max_len=8192 -rss_limit_mb=2048
  fi
  echo "fuzz.sh: cargo-fuzz not installed; building the libFuzzer target directly (nightly, sancov, ASan)" >&2
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/fuzz/target}
  triple=$(rustc -vV | sed -n 's/^host: //p')
  RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
    -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
    -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks \
    -Zsanitizer=address" \
    cargo +nightly build --release --manifest-path fuzz/Cargo.toml --target "$triple" --bin mrc_header
  exec "$CARGO_TARGET_DIR/$triple/release/mrc_header" -max_total_time="$secs" -max_len=8192 -rss_limit_mb=2048 \
    -artifact_prefix=fuzz/artifacts/mrc_header/ "$corpus"
fi
echo "fuzz.sh: no nightly toolchain; running the stable mutation test instead" >&2
iters=$((secs * 400))
CRYODEN_FUZZ_ITERS=$iters exec cargo test --release -p cryoden-io --test fuzz_headers
