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
# ktls-vm-certs: ca.crt site.crt site.key
set -u
. "$KTLB_VM_LIB"
cd "$KTLB_WORK_DIR" || exit 1
F=$KTLB_FILES_DIR
N=${KTLB_MEMORY_CONNS:-1000}
PORT=8443
ADMIN=127.0.0.1:9901
cp "$F/site.crt" "$F/site.key" .
ulimit -n 65536

ktlb-origin --listen 127.0.0.1:9001 --name origin >origin.log 2>&1 &
ORIGIN_PID=$!
wait_for_listen 9001 10 || fail "origin did not start"

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
metric() { # metric NAME -> summed value
  wget -q -O - "http://$ADMIN/metrics" | awk -v n="$1" 'index($1, n "{") == 1 || $1 == n {s += $2} END {print s + 0}'
}

measure() { # measure KTLS_MODE TLS_VERSION -> prints KiB per idle connection
  mode=$1
  ver=$2
  cat >ktlb.toml <<EOT
[server]
workers = 1
admin_listen = "$ADMIN"
[[listeners]]
name = "public"
listen = "127.0.0.1:$PORT"
certificates = ["site"]
ktls = "$mode"
[[certificates]]
name = "site"
cert = "site.crt"
key = "site.key"
[[routes]]
listener = "public"
upstream = "origin"
[[upstreams]]
name = "origin"
servers = ["127.0.0.1:9001"]
EOT
  ktlb --config ktlb.toml >"ktlb-$mode-$ver.log" 2>&1 &
  kpid=$!
  wait_for_listen $PORT 10 || fail "ktlb did not start ($mode)"
  # Warm up pools, allocator arenas and the upstream connection.
  ktlb-tlshold --connect 127.0.0.1:$PORT -n 50 --hold 1 --tls "$ver" >/dev/null || fail "warm-up failed"
  sleep 2
  before=$(rss_kib $kpid)
  # Held far longer than the measurement needs (a loaded TCG guest is slow);
  # the holder is stopped as soon as the figures are read.
  ktlb-tlshold --connect 127.0.0.1:$PORT -n "$N" --hold 300 --tls "$ver" >held.txt 2>&1 &
  hpid=$!
  wait_for_file_text held.txt "held" 120 || fail "ktlb-tlshold did not open $N connections: $(cat held.txt)"
  sleep 2  # idle connections trim their buffers after 1 s
  after=$(rss_kib $kpid)
  cur_tx=$(tls_stat TlsCurrTxSw)
  cur_rx=$(tls_stat TlsCurrRxSw)
  released=$(metric ktlb_ktls_ssl_released_total)
  kill $hpid 2>/dev/null
  wait $hpid 2>/dev/null
  kill $kpid
  wait $kpid 2>/dev/null
  per=$(awk -v a="$after" -v b="$before" -v n="$N" 'BEGIN {printf "%.1f", (a - b) / n}')
  echo "ktls=$mode tls$ver: $N idle connections, RSS $before -> $after KiB: $per KiB each;" \
       "TlsCurrTxSw=$cur_tx TlsCurrRxSw=$cur_rx ssl_released=$released" | tee -a summary.txt
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
exit 0
