#!/bin/sh
# kTLS guest scenario: fatal TLS errors on offloaded connections are answered with an
# alert before the close (tests/ktls/alerts_cases.sh has the cases and what they expect).
# ctest ktls_vm.alerts runs it; by hand:
#
#   tools/ktls-vm/run.sh --scenario tests/ktls/ktlb_alerts.sh \
#     --bin build/ktlb --bin build/ktlb-origin --bin build/ktlb-tlsrogue \
#     --bin tests/ktls/alerts_cases.sh
#
# (alerts_cases.sh is not an ELF file: run.sh copies it to $KTLB_BIN_DIR as is.)
#
# ktls-vm-certs: ca.crt site.crt site.key
# ktls-vm-bin: /usr/bin/curl
set -u
# shellcheck source=tools/ktls-vm/guest-lib.sh
. "$KTLB_VM_LIB"
# shellcheck source=tests/ktls/alerts_cases.sh
. "$KTLB_BIN_DIR/alerts_cases.sh"

cd "$KTLB_WORK_DIR" || exit 1
W=$KTLB_WORK_DIR
F=$KTLB_FILES_DIR
PORT=8443
ORIGIN_PORT=9001
export NO_PROXY='*'
cp "$F/ca.crt" "$F/site.crt" "$F/site.key" "$W/"

ktlb-origin --listen "127.0.0.1:$ORIGIN_PORT" --threads 1 >origin.log 2>&1 &
ORIGIN_PID=$!
wait_for_listen "$ORIGIN_PORT" 30 || { cat origin.log; fail "origin did not start"; }

cat >ktlb.toml <<EOF
[server]
workers = 1

[[listeners]]
name = "public"
listen = "127.0.0.1:$PORT"
mode = "terminate"
certificates = ["site"]
ktls = "auto"

[[certificates]]
name = "site"
cert = "$W/site.crt"
key = "$W/site.key"

[[routes]]
listener = "public"
upstream = "origin"

[[upstreams]]
name = "origin"
servers = ["127.0.0.1:$ORIGIN_PORT"]
EOF
KTLB_KTLS_DEBUG=1 ktlb --config ktlb.toml >ktlb.log 2>&1 &
KTLB_PID=$!
trap 'kill -TERM "$KTLB_PID" "$ORIGIN_PID" 2>/dev/null' EXIT
wait_for_listen "$PORT" 30 || { cat ktlb.log; fail "ktlb did not listen on $PORT"; }
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
