#!/bin/sh
# kTLS guest scenario: upstream TLS with kTLS on both sides. A front ktlb terminates
# the client's TLS and speaks TLS to its backend (a second ktlb, terminating in front of
# ktlb-origin); with kTLS on the client socket (TX) and on the upstream socket (RX), a
# large response body moves backend kTLS socket -> pipe -> client kTLS socket: the kernel
# decrypts and re-encrypts it and the front ktlb never reads the bytes.
#
# Run with:
#   tools/ktls-vm/run.sh --scenario tests/ktls/ktlb_upstream_ktls.sh \
#     --bin build/ktlb --bin build/ktlb-origin
# (ctest: ktls_vm.upstream). Cases: the backend speaking TLS 1.3, then TLS 1.2.
#
# Proof: /proc/net/tls_stat moves by one TX and one RX per TLS socket of the ktlbs
# (front: client side and upstream side; backend: its client side; curl offloads
# nothing), TlsDecryptError stays, the front ktlb's ktlb_upstream_ktls_rx_total and
# ktlb_upstream_ktls_tx_total move, its ktlb_spliced_bytes_total grows by nearly the
# whole body, and the body's sha256 is the origin's.
#
# ktls-vm-certs: ca.crt site.crt site.key
# ktls-vm-bin: /usr/bin/curl
set -u
# shellcheck source=tools/ktls-vm/guest-lib.sh
. "$KTLB_VM_LIB"

cd "$KTLB_WORK_DIR" || exit 1
W=$KTLB_WORK_DIR
F=$KTLB_FILES_DIR
export NO_PROXY='*'
cp "$F/ca.crt" "$F/site.crt" "$F/site.key" "$W/"
FRONT_PORT=8443
BACK_PORT=8543
FRONT_ADMIN=127.0.0.1:9901
BACK_ADMIN=127.0.0.1:9902
ORIGIN_PORT=9001
BIG=8388608
PIDS=""
cleanup() { for p in $PIDS; do kill -TERM "$p" 2>/dev/null; done; }
trap cleanup EXIT

# write_config FILE PORT ADMIN UPSTREAM_LINES...: one terminate listener with the test
# certificate, every request to upstream "b".
write_config() {
  file=$1 port=$2 admin=$3
  shift 3
  cat >"$file" <<EOT
[server]
workers = 1
admin_listen = "$admin"
handshake_timeout_ms = 120000
request_header_timeout_ms = 120000
keepalive_timeout_ms = 120000
upstream_connect_timeout_ms = 60000
upstream_response_timeout_ms = 120000
drain_timeout_ms = 20000

[[listeners]]
name = "public"
listen = "127.0.0.1:$port"
mode = "terminate"
certificates = ["site"]
ktls = "auto"
${LISTENER_EXTRA:-}

[[certificates]]
name = "site"
cert = "$W/site.crt"
key = "$W/site.key"

[[routes]]
listener = "public"
upstream = "b"

[[upstreams]]
name = "b"
EOT
  for line in "$@"; do echo "$line" >>"$file"; done
}

metric() { # metric FILE NAME: the first sample whose name+labels start with NAME
  awk -v k="$2" 'index($0, k) == 1 { print $NF; found = 1; exit } END { if (!found) print 0 }' "$1"
}

phase start
ktlb-origin --listen "127.0.0.1:$ORIGIN_PORT" --threads 1 >origin.log 2>&1 &
PIDS="$PIDS $!"
wait_for_listen "$ORIGIN_PORT" 60 || { cat origin.log; fail "origin did not start"; }

phase origin-reference
curl -sS --max-time 120 "http://127.0.0.1:$ORIGIN_PORT/size/$BIG" -o direct.bin || fail "origin fetch"
want=$(sha256sum direct.bin | cut -d' ' -f1)

for V in 1.3 1.2; do
  phase "tls$V"
  echo "=== backend speaking TLS $V"
  # The backend ktlb offers only TLS $V; the front connects to it with upstream TLS.
  LISTENER_EXTRA="tls_versions = [\"$V\"]" write_config back.toml "$BACK_PORT" "$BACK_ADMIN" \
    "servers = [\"127.0.0.1:$ORIGIN_PORT\"]"
  ktlb --config back.toml >"back.$V.log" 2>&1 &
  BACK_PID=$!
  wait_for_listen "$BACK_PORT" 60 || { cat "back.$V.log"; fail "backend ktlb did not listen"; }

  LISTENER_EXTRA="" write_config front.toml "$FRONT_PORT" "$FRONT_ADMIN" \
    "servers = [\"127.0.0.1:$BACK_PORT\"]" \
    "tls = { ca = \"$W/ca.crt\", sni = \"localhost\", ktls = \"auto\" }"
  KTLB_KTLS_DEBUG=1 ktlb --config front.toml >"front.$V.log" 2>&1 &
  FRONT_PID=$!
  PIDS="$PIDS $BACK_PID $FRONT_PID"
  wait_for_listen "$FRONT_PORT" 60 || { cat "front.$V.log"; fail "front ktlb did not listen"; }
  wait_for_listen "${FRONT_ADMIN##*:}" 60 || { cat "front.$V.log"; fail "front admin did not listen"; }

  tls_stat_save tls.before
  curl -sS --max-time 300 "http://$FRONT_ADMIN/metrics" >m.before || fail "front /metrics"
  # Two requests on one client connection: the second reuses the pooled upstream
  # connection, whose OpenSSL state may be gone (both directions in the kernel).
  curl -sS --max-time 300 --cacert "$W/ca.crt" -w '%{http_code}\n' \
    -o got1.bin "https://localhost:$FRONT_PORT/size/$BIG" \
    -o got2.bin "https://localhost:$FRONT_PORT/size/$BIG" >code.txt 2>curl.err ||
    { cat curl.err; fail "curl failed"; }
  curl -sS --max-time 300 "http://$FRONT_ADMIN/metrics" >m.after || fail "front /metrics"
  tls_stat_show "after tls$V"
  grep -E 'ktls|upstream' "front.$V.log" | head -20

  [ "$(tr -d '\n' <code.txt)" = 200200 ] || fail "statuses $(cat code.txt)"
  for f in got1.bin got2.bin; do
    got=$(sha256sum "$f" | cut -d' ' -f1)
    [ "$got" = "$want" ] || fail "TLS $V $f: sha256 $got, origin's $want ($(wc -c <"$f") bytes)"
  done
  echo "ok: TLS $V: both bodies sha256-intact ($BIG bytes each)"

  # Three offloaded TLS sockets: front<-curl, front->back (the upstream), back<-front.
  expect_delta tls.before TlsTxSw -eq 3
  expect_delta tls.before TlsRxSw -eq 3
  expect_delta tls.before TlsDecryptError -eq 0
  d() { echo $(($(metric m.after "$1") - $(metric m.before "$1"))); }
  up_rx=$(d 'ktlb_upstream_ktls_rx_total{upstream="b"}')
  up_tx=$(d 'ktlb_upstream_ktls_tx_total{upstream="b"}')
  up_hs=$(d 'ktlb_upstream_tls_handshakes_total{upstream="b",kind="full"}')
  spliced=$(d 'ktlb_spliced_bytes_total{listener="public"}')
  echo "front: upstream kTLS rx +$up_rx tx +$up_tx, full handshakes +$up_hs, spliced +$spliced bytes"
  [ "$up_rx" -eq 1 ] || fail "upstream kTLS RX +$up_rx, expected 1"
  [ "$up_tx" -eq 1 ] || fail "upstream kTLS TX +$up_tx, expected 1"
  [ "$up_hs" -eq 1 ] || fail "$up_hs upstream handshakes: the pooled connection was not reused"
  # Everything but what came with each response head went through the pipe.
  [ "$spliced" -ge $((2 * BIG - 131072)) ] || fail "only $spliced of $((2 * BIG)) bytes spliced"
  echo "ok: TLS $V: backend kTLS socket -> pipe -> client kTLS socket"

  kill -TERM "$FRONT_PID" "$BACK_PID"
  wait "$FRONT_PID" "$BACK_PID"
  curr_zero() { [ "$(tls_stat TlsCurrTxSw)" -eq 0 ] && [ "$(tls_stat TlsCurrRxSw)" -eq 0 ]; }
  wait_until 60 curr_zero || fail "TlsCurrTxSw/TlsCurrRxSw not back to 0"
done
phase
phase_summary
echo "PASS"
