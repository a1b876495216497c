#!/usr/bin/env bash
# ctest entry for the kTLS guest harness.
#
# Usage: ctest-entry.sh SCENARIO [BIN...]
#   SCENARIO  script under tests/ktls/ (path, or a name relative to tests/ktls/)
#   BIN       executables for the guest (e.g. $<TARGET_FILE:ktlb>); "# ktls-vm-bin:" lines
#             in the scenario add more
# Environment: KTLB_VM_CACHE (kernel cache), KTLB_VM_LOG_DIR (console logs; default the
# working directory, i.e. the build tree under ctest), KTLB_VM_TIMEOUT (default 600 s),
# KTLB_VM_ACCEL (default tcg).
#
# Exit status: 0 pass, 1 fail, 77 skipped (qemu, busybox-static, cpio or kmod missing, or
# no kernel could be fetched), anything else a harness error. Suggested CMake:
#   add_test(NAME ktls_vm_openssl COMMAND ${CMAKE_SOURCE_DIR}/tools/ktls-vm/ctest-entry.sh
#            openssl_ktls.sh)
#   set_tests_properties(ktls_vm_openssl PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 700
#            LABELS ktls-vm)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)

(($# >= 1)) || { echo "usage: $0 SCENARIO [BIN...]" >&2; exit 2; }
scenario=$1
shift
[[ -f $scenario ]] || scenario="$repo/tests/ktls/$scenario"
[[ -f $scenario ]] || { echo "ctest-entry: no scenario $1" >&2; exit 2; }

for tool in qemu-system-x86_64 busybox cpio depmod apt-get dpkg-deb; do
  if ! command -v "$tool" >/dev/null; then
    echo "ctest-entry: SKIP: $tool not installed (tools/setup.sh installs it)" >&2
    exit 77
  fi
done
if ! "$here/fetch-kernel.sh" >/dev/null; then
  echo "ctest-entry: SKIP: no guest kernel (offline and nothing cached?)" >&2
  exit 77
fi

args=(--scenario "$scenario" --timeout "${KTLB_VM_TIMEOUT:-600}")
for b in "$@"; do args+=(--bin "$b"); done
name=$(basename "$scenario" .sh)
logdir=${KTLB_VM_LOG_DIR:-$PWD}
mkdir -p "$logdir"
args+=(--log "$logdir/ktls-vm-$name.log")

# run.sh: 0 PASS, 1 FAIL, 2 setup error, 3 no result from the guest (all but 0 fail).
exec "$here/run.sh" "${args[@]}"
