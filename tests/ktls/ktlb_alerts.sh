#!/bin/sh
# kTLS guest scenario: fatal TLS errors on offloaded connections are answered with an
# alert before the close (tests/ktls/alerts_cases.sh has the cases and what they expect).
# ctest ktls_vm.alerts runs it; by hand:
#
#   tools/ktls-vm/run.sh --scenario tests/ktls/ktlb_alerts.sh \
#     --bin build/ktlb --bin build/ktlb-origin --bin build/ktlb-tlsrogue \
#     --bin tests/ktls/alerts_cases.sh --bin tests/ktls/terminate_setup.sh
#
# (alerts_cases.sh and terminate_setup.sh are not ELF files: run.sh copies them to
# $KTLB_BIN_DIR as they are.)
#
# ktls-vm-certs: ca.crt site.crt site.key
# ktls-vm-bin: /usr/bin/curl
set -u
# shellcheck source=tools/ktls-vm/guest-lib.sh
. "$KTLB_VM_LIB"
# shellcheck source=tests/ktls/alerts_cases.sh
. "$KTLB_BIN_DIR/alerts_cases.sh"

# W, PORT, ORIGIN_PORT; start_origin, write_config, start_ktlb, the EXIT trap.
# shellcheck source=tests/ktls/terminate_setup.sh
. "$KTLB_BIN_DIR/terminate_setup.sh"

start_origin
write_config ktlb.toml auto
start_ktlb ktlb.toml ktlb.log
grep -q 'kTLS available' ktlb.log || { cat ktlb.log; fail "ktlb did not find kernel TLS"; }

tls_stat_show before
ALERT_CA="$W/ca.crt"
ALERT_KTLB_LOG="$W/ktlb.log"
# In a subshell: its `fail` ends only the subshell, so the counters
# after it are printed either way.
(run_alert_cases 127.0.0.1 "$PORT")
rc=$?
tls_stat_show after
exit "$rc"
