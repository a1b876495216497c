# Start-up shared by the kTLS guest scenarios that run ktlb in terminate mode in front
# of ktlb-origin (ktlb_ktls.sh, ktlb_alerts.sh). A snippet for busybox sh, not a
# scenario of its own; source it after guest-lib.sh:
#
#   . "$KTLB_BIN_DIR/terminate_setup.sh"   # shipped with --bin tests/ktls/terminate_setup.sh
#
# (run.sh copies a file that is not ELF to $KTLB_BIN_DIR as is.) The scenario needs
# "# ktls-vm-certs: ca.crt site.crt site.key".
#
# Sourcing it enters $KTLB_WORK_DIR, copies the test certificate there, sets W, F,
# PORT, ADMIN and ORIGIN_PORT, and installs an EXIT trap that stops ktlb and the origin
# (KTLB_PID, ORIGIN_PID). Then: start_origin, write_config, start_ktlb.

cd "$KTLB_WORK_DIR" || exit 1
W=$KTLB_WORK_DIR
F=$KTLB_FILES_DIR
PORT=8443
H2_PORT=8445
ADMIN=127.0.0.1:9901
ORIGIN_PORT=9001
KTLB_PID=""
ORIGIN_PID=""
# The guest has no proxy settings, but never let curl guess.
export NO_PROXY='*'
cp "$F/ca.crt" "$F/site.crt" "$F/site.key" "$W/"

cleanup() {
  [ -n "$KTLB_PID" ] && kill -TERM "$KTLB_PID" 2>/dev/null
  [ -n "$ORIGIN_PID" ] && kill "$ORIGIN_PID" 2>/dev/null
}
trap cleanup EXIT

start_origin() { # start_origin: ktlb-origin on $ORIGIN_PORT, log in origin.log
  ktlb-origin --listen "127.0.0.1:$ORIGIN_PORT" --threads 1 >origin.log 2>&1 &
  ORIGIN_PID=$!
  wait_for_listen "$ORIGIN_PORT" 60 || { cat origin.log; fail "origin did not start"; }
}

# write_config FILE KTLS_MODE: one worker, the admin listener on $ADMIN, terminate
# listeners on $PORT (HTTP/1.1) and $H2_PORT (ALPN h2 first) with the test certificate,
# every request to the origin.
write_config() {
  cat >"$1" <<EOF
[server]
workers = 1
admin_listen = "$ADMIN"
# Far beyond any case: a slow guest must never see a timeout it did not ask for.
handshake_timeout_ms = 120000
request_header_timeout_ms = 120000
keepalive_timeout_ms = 120000
upstream_connect_timeout_ms = 60000
upstream_response_timeout_ms = 120000
drain_timeout_ms = 20000

[[listeners]]
name = "public"
listen = "127.0.0.1:$PORT"
mode = "terminate"
certificates = ["site"]
ktls = "$2"

[[listeners]]
name = "h2"
listen = "127.0.0.1:$H2_PORT"
mode = "terminate"
certificates = ["site"]
alpn = ["h2", "http/1.1"]
ktls = "$2"

[[certificates]]
name = "site"
cert = "$W/site.crt"
key = "$W/site.key"

[[routes]]
listener = "public"
upstream = "origin"

[[routes]]
listener = "h2"
upstream = "origin"

[[upstreams]]
name = "origin"
servers = ["127.0.0.1:$ORIGIN_PORT"]
EOF
}

# start_ktlb CONFIG LOG: ktlb in the background (KTLB_PID), with the kTLS trace on,
# once its listener and its admin listener accept.
start_ktlb() {
  KTLB_KTLS_DEBUG=1 ktlb --config "$1" >"$2" 2>&1 &
  KTLB_PID=$!
  wait_for_listen "$PORT" 60 || { cat "$2"; fail "ktlb did not listen on $PORT"; }
  wait_for_listen "$H2_PORT" 60 || { cat "$2"; fail "ktlb did not listen on $H2_PORT"; }
  wait_for_listen "${ADMIN##*:}" 60 || { cat "$2"; fail "ktlb admin did not listen"; }
}
