#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine:
#   setup (packages) -> release build + tests -> ASan/UBSan build + tests
#   -> clang libFuzzer build + fuzz smoke runs.
# Build directories live in the checkout (build/, build-asan/, build-fuzz/).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
JOBS=$(nproc)

bash tools/setup.sh

run_suite() {  # dir label-args...
  local dir=$1; shift
  ctest --test-dir "$dir" --output-on-failure --timeout 900 "$@"
}

echo "== release build"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$JOBS"
run_suite build -j2

echo "== ASan + UBSan build"
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DKTLB_SANITIZE=ON >/dev/null
cmake --build build-asan -j"$JOBS"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  run_suite build-asan -j2 -LE 'ktls-vm'

echo "== libFuzzer build (clang) + smoke runs"
CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=Debug -DKTLB_FUZZ=ON >/dev/null
cmake --build build-fuzz -j"$JOBS"
run_suite build-fuzz -j2 -L fuzz

echo "== all suites passed"
