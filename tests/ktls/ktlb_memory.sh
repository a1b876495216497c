#!/bin/sh
# kTLS guest scenario: what an idle keep-alive TLS connection costs ktlb with both
# directions in the kernel (OpenSSL state freed) against userspace TLS.
#
#   tools/ktls-vm/run.sh --scenario tests/ktls/ktlb_memory.sh \
#     --bin build/ktlb --bin build/ktlb-origin --bin build/ktlb-tlshold
#
# For ktls = "auto" and ktls = "off", for TLS 1.3 and 1.2: ktlb-tlshold opens N
# connections with one request each and keeps them idle; ktlb's VmRSS growth over a
# warmed-up baseline, divided by N, is the cost of one idle connection. With kTLS every
# held connection must have TX and RX offloaded (tls_stat TlsCurrTxSw/TlsCurrRxSw = N)
# and its OpenSSL state released (ktlb_ktls_ssl_released_total), and the kTLS figure
# must be smaller.
#
# Nothing here waits for a fixed time: the emulated guest needs a minute or more to
# open 1000 connections on a slow host. ktlb's own timeouts are set far beyond the
# run (held connections must never reach keepalive_timeout_ms), the holder reports
# progress and is waited for while it makes progress, and the measurement starts once
# ktlb's /metrics (and the kernel's tls_stat) count every held connection and ktlb's
# RSS has settled. The holder finally checks that all N were still open. It opens its
# connections from 4 threads, and the certificate is the test PKI's ECDSA one (cheaper
# handshakes than RSA under emulation): the idle state measured is the same.
#
# ktls-vm-certs: ca.crt other.crt other.key
set -u
. "$KTLB_VM_LIB"
cd "$KTLB_WORK_DIR" || exit 1
F=$KTLB_FILES_DIR
N=${KTLB_MEMORY_CONNS:-1000}
PORT=8443
ADMIN=127.0.0.1:9901
# Far beyond any run: a held connection that times out spoils the count.
HOLD_TIMEOUT_MS=3600000
# The holder may go this long without opening another batch of connections.
STALL_SECS=120
# ktlb gives an idle connection's buffers back after 1 s (kTrimAfterMs).
TRIM_SECS=1.5
cp "$F/other.crt" "$F/other.key" .
ulimit -n 65536

phase origin-start
ktlb-origin --listen 127.0.0.1:9001 --name origin >origin.log 2>&1 &
ORIGIN_PID=$!
wait_for_listen 9001 60 || fail "origin did not start"

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
metric() { # metric NAME -> summed value ("" when /metrics cannot be read)
  # (busybox 1.35's wget -T crashes: bound it with timeout instead)
  timeout 30 wget -q -O metrics.txt "http://$ADMIN/metrics" || { echo ""; return; }
  awk -v n="$1" 'index($1, n "{") == 1 || $1 == n {s += $2} END {print s + 0}' metrics.txt
}
# metric_is NAME OP VALUE: the metric satisfies test(1)'s OP VALUE.
metric_is() { v=$(metric "$1"); [ -n "$v" ] && [ "$v" "$2" "$3" ]; }
tls_stat_is() { [ "$(tls_stat "$1")" "$2" "$3" ]; }
# rss_settled PID: two readings 0.5 s apart within 1% of each other.
rss_settled() {
  a=$(rss_kib "$1")
  usleep 500000
  b=$(rss_kib "$1")
  awk -v a="$a" -v b="$b" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d * 100 <= b) }'
}
# after_secs T0 SECS: at least SECS seconds have passed since T0 (an uptime_s value).
after_secs() { awk -v a="$1" -v s="$2" -v b="$(uptime_s)" 'BEGIN { exit !(b - a >= s) }'; }

measure() { # measure KTLS_MODE TLS_VERSION -> per-$mode-$ver.txt: KiB per idle connection
  mode=$1
  ver=$2
  tag="tls$ver-$mode"
  phase "$tag ktlb-start"
  cat >ktlb.toml <<EOT
[server]
workers = 1
admin_listen = "$ADMIN"
handshake_timeout_ms = 120000
request_header_timeout_ms = $HOLD_TIMEOUT_MS
keepalive_timeout_ms = $HOLD_TIMEOUT_MS
upstream_connect_timeout_ms = 60000
upstream_response_timeout_ms = 120000
drain_timeout_ms = 10000
[[listeners]]
name = "public"
listen = "127.0.0.1:$PORT"
certificates = ["other"]
ktls = "$mode"
[[certificates]]
name = "other"
cert = "other.crt"
key = "other.key"
[[routes]]
listener = "public"
upstream = "origin"
[[upstreams]]
name = "origin"
servers = ["127.0.0.1:9001"]
EOT
  ktlb --config ktlb.toml >"ktlb-$mode-$ver.log" 2>&1 &
  kpid=$!
  wait_for_listen $PORT 60 || fail "ktlb did not start ($mode)"
  wait_for_listen 9901 60 || fail "ktlb admin did not start ($mode)"

  # Warm up pools, allocator arenas and the upstream connection; the baseline is taken
  # once those connections are gone and the RSS is steady.
  phase "$tag warm-up"
  ktlb-tlshold --connect 127.0.0.1:$PORT -n 50 --hold 0 --progress 0 --tls "$ver" >warm.txt 2>&1 ||
    fail "warm-up failed: $(cat warm.txt)"
  wait_until 60 metric_is ktlb_connections_active -eq 0 ||
    fail "ktlb still counts $(metric ktlb_connections_active) active connections after the warm-up"
  wait_until 60 rss_settled $kpid || echo "note: ktlb's RSS still moving after the warm-up"
  before=$(rss_kib $kpid)
  released0=$(metric ktlb_ktls_ssl_released_total)

  phase "$tag open-$N"
  ktlb-tlshold --connect 127.0.0.1:$PORT -n "$N" --hold 3600 --progress 100 --parallel 4 --tls "$ver" >held.txt 2>&1 &
  hpid=$!
  wait_for_progress held.txt "held $N" $STALL_SECS show ||
    fail "ktlb-tlshold did not open $N connections (no progress for ${STALL_SECS}s): $(tail -3 held.txt)"
  grep '^held' held.txt
  held_t=$(uptime_s)

  # ktlb has every held connection (and, with kTLS, both directions in the kernel and
  # the OpenSSL state freed), the idle trim is due and the RSS has settled.
  phase "$tag settle"
  wait_until 120 metric_is ktlb_connections_active -eq "$N" ||
    fail "ktlb counts $(metric ktlb_connections_active) active connections, expected $N"
  if [ "$mode" = auto ]; then
    wait_until 120 tls_stat_is TlsCurrTxSw -ge "$N" ||
      fail "only $(tls_stat TlsCurrTxSw) of $N held connections have TLS_TX"
    wait_until 120 tls_stat_is TlsCurrRxSw -ge "$N" ||
      fail "only $(tls_stat TlsCurrRxSw) of $N held connections have TLS_RX"
    wait_until 120 metric_is ktlb_ktls_ssl_released_total -ge $((released0 + N)) ||
      fail "only $(($(metric ktlb_ktls_ssl_released_total) - released0)) of $N held connections released their OpenSSL state"
  fi
  wait_until 60 after_secs "$held_t" "$TRIM_SECS"
  wait_until 60 rss_settled $kpid || echo "note: ktlb's RSS still moving with $N idle connections"

  phase "$tag measure"
  after=$(rss_kib $kpid)
  cur_tx=$(tls_stat TlsCurrTxSw)
  cur_rx=$(tls_stat TlsCurrRxSw)
  active=$(metric ktlb_connections_active)
  released=$(($(metric ktlb_ktls_ssl_released_total) - released0))
  timeouts=$(metric ktlb_timeouts_total)
  # The holder checks each connection before it lets go: all must still be open.
  kill -TERM $hpid 2>/dev/null
  wait $hpid
  hrc=$?
  grep '^still open' held.txt
  [ "$hrc" -eq 0 ] || fail "ktlb closed held connections during the measurement: $(grep '^still open' held.txt)" \
    "(ktlb_timeouts_total $timeouts)"
  kill $kpid
  wait $kpid 2>/dev/null
  per=$(awk -v a="$after" -v b="$before" -v n="$N" 'BEGIN {printf "%.1f", (a - b) / n}')
  echo "ktls=$mode tls$ver: $N idle connections, RSS $before -> $after KiB: $per KiB each;" \
       "active=$active TlsCurrTxSw=$cur_tx TlsCurrRxSw=$cur_rx ssl_released=$released" | tee -a summary.txt
  [ "$active" -eq "$N" ] || fail "ktlb counted $active active connections at the measurement, expected $N"
  if [ "$mode" = auto ]; then
    [ "$cur_tx" -ge "$N" ] || fail "only $cur_tx of $N held connections have TLS_TX"
    [ "$cur_rx" -ge "$N" ] || fail "only $cur_rx of $N held connections have TLS_RX"
    [ "$released" -ge "$N" ] || fail "only $released connections released their OpenSSL state"
  fi
  echo "$per" >"per-$mode-$ver.txt"
}

: >summary.txt
for ver in 1.3 1.2; do
  measure auto $ver
  measure off $ver
  k=$(cat per-auto-$ver.txt)
  u=$(cat per-off-$ver.txt)
  awk -v k="$k" -v u="$u" 'BEGIN {exit !(k < u)}' ||
    fail "TLS $ver: kTLS idle connection ($k KiB) is not smaller than userspace ($u KiB)"
done
kill $ORIGIN_PID 2>/dev/null
echo "== idle connection memory"
cat summary.txt
phase_summary
exit 0
