#!/usr/bin/env bash
# Builds the codec fuzz target with clang-14 (libFuzzer + ASan + UBSan) and runs it for a
# bounded time from the seed corpus. Any crash, leak or sanitizer report fails.
# Usage: tests/fuzz/run.sh [SECONDS]   (default 60)
set -euo pipefail
cd "$(dirname "$0")/../.."
SECONDS_TO_RUN=${1:-60}
BUILD=${FTX_FUZZ_BUILD_DIR:-build-fuzz}
CC=clang-14 CXX=clang++-14 cmake -S . -B "$BUILD" -DFTX_FUZZ=ON -DFTX_BUILD_TESTS=OFF \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_FLAGS="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined" >/dev/null
cmake --build "$BUILD" --target codec_fuzz -j "${FTX_JOBS:-2}" >/dev/null
work=$(mktemp -d "${TMPDIR:-/tmp}/ftx-fuzz-XXXXXX")
trap 'rm -rf "$work"' EXIT
# New inputs go to a scratch folder; the committed seeds are only read.
status=0
"$BUILD/tests/fuzz/codec_fuzz" -max_total_time="$SECONDS_TO_RUN" -timeout=10 -rss_limit_mb=2048 \
  -artifact_prefix="$work/" -print_final_stats=1 "$work" tests/fuzz/corpus >"$work/fuzz.log" 2>&1 || status=$?
tail -15 "$work/fuzz.log"
if [ "$status" != 0 ]; then
  mkdir -p "$BUILD/artifacts"
  cp "$work"/crash-* "$work"/leak-* "$work"/timeout-* "$work"/oom-* "$BUILD/artifacts/" 2>/dev/null || true
  echo "fuzz: FAILED (exit $status); reproducers kept in $BUILD/artifacts/:" $(ls "$BUILD/artifacts")
  exit 1
fi
echo "fuzz: codec ran ${SECONDS_TO_RUN} s without a finding"
