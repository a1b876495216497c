#!/bin/sh
# kTLS guest scenario: ktlb itself hands record crypto to the kernel, TX and RX, for
# TLS 1.2 and 1.3 with AES-128-GCM, AES-256-GCM and ChaCha20-Poly1305.
#
# Run with:
#   tools/ktls-vm/run.sh --scenario tests/ktls/ktlb_ktls.sh \
#     --bin build/ktlb --bin build/ktlb-origin --bin /usr/bin/curl --bin /usr/bin/openssl \
#     --bin tests/ktls/terminate_setup.sh
# (ctest: ktls_vm.ktlb). The test PKI comes from tools/gen-certs.sh (line below).
#
# Only ktlb offloads here: curl and s_client run without SSL_OP_ENABLE_KTLS, so every
# client connection must move TlsTxSw and TlsRxSw by exactly 1 each (ktlb's socket),
# TlsDecryptError must not move, TlsCurrTxSw/TlsCurrRxSw must be back to 0 once the
# connection is gone, and ktlb's ktlb_ktls_tx_total / ktlb_ktls_rx_total must move with
# the kernel. Each case also checks the payload (sha256 both ways).
#
# Nothing waits for a fixed time: every wait is for a condition (a port, a response in
# a client's output, a counter, a line in ktlb's log) with a generous deadline, ktlb's
# timeouts are set far beyond what a case needs, and each group of cases prints how
# long it took ("phase <group>: 12.3 s"), so a slow host shows in the log.
#
# ktls-vm-certs: ca.crt site.crt site.key client.crt client.key
# ktls-vm-bin: /usr/bin/curl
# ktls-vm-bin: /usr/bin/openssl
set -u
# shellcheck source=tools/ktls-vm/guest-lib.sh
. "$KTLB_VM_LIB"
# W, F, PORT, ADMIN, ORIGIN_PORT; start_origin, write_config, start_ktlb, the EXIT trap.
# shellcheck source=tests/ktls/terminate_setup.sh
. "$KTLB_BIN_DIR/terminate_setup.sh"

RELAY_PORT=8600
BIG=4194304
URL=https://localhost:$PORT
T_START=$(uptime_s)

: >summary.txt

# Development aid: pass "--file ktlb_ktls.only" holding a pattern (grep -E) to run only
# the matching case groups (bulk, h2, keepalive, pipelined, coalesce, resume, close_notify,
# keyupdate, renegotiate, maxfrag, mtls, nomodule). The ctest entry runs everything.
want() { [ ! -f "$F/ktlb_ktls.only" ] || echo "$1" | grep -qE "$(cat "$F/ktlb_ktls.only")"; }

now() { uptime_s; }
elapsed() { secs_since "$1"; }
note() { echo "$*" | tee -a summary.txt; }

stop_ktlb() {
  [ -n "$KTLB_PID" ] || return 0
  kill -TERM "$KTLB_PID" 2>/dev/null
  wait "$KTLB_PID"
  rc=$?
  KTLB_PID=""
  [ "$rc" -eq 0 ] || fail "ktlb exited $rc on SIGTERM"
}

metrics_save() { # metrics_save FILE
  curl -sS --max-time 20 "http://$ADMIN/metrics" >"$1" || fail "cannot read ktlb /metrics"
}
# metric FILE NAME: value of the sample whose name+labels start with NAME (first match).
metric() {
  awk -v k="$2" 'index($0, k) == 1 { print $NF; found = 1; exit } END { if (!found) print 0 }' "$1"
}
metric_delta() { # metric_delta BEFORE AFTER NAME
  echo $(($(metric "$2" "$3") - $(metric "$1" "$3")))
}
TX_M='ktlb_ktls_tx_total{listener="public"}'
RX_M='ktlb_ktls_rx_total{listener="public"}'
KU_M='ktlb_ktls_keyupdates_total{listener="public"}'
REKEY_M='ktlb_ktls_rekeys_total{listener="public"}'
KU_CANNOT_M='ktlb_ktls_keyupdate_closes_total{listener="public",reason="kernel_cannot_rekey"}'
HS_M='ktlb_tls_handshakes_total{listener="public",kind="full"}'

# wait_curr_zero SECS: ktlb closes its side shortly after the client; the kernel counts
# a socket in TlsCurrTxSw/TlsCurrRxSw until it is destroyed.
curr_zero() { [ "$(tls_stat TlsCurrTxSw)" -eq 0 ] && [ "$(tls_stat TlsCurrRxSw)" -eq 0 ]; }
wait_curr_zero() {
  wait_until "$1" curr_zero && return 0
  tls_stat_show stuck
  return 1
}
# wait_responses FILE N SECS: FILE (a client's output) holds N responses.
has_responses() { [ "$(count_responses "$1")" -ge "$2" ]; }
wait_responses() { wait_until "$3" has_responses "$1" "$2"; }

# Around every client connection: begin_conn LABEL ... end_conn LABEL CONNS [FULL]
# CONNS is how many ktlb connections the case made; each must be offloaded both ways.
# FULL is how many of them made a full handshake (default: all).
begin_conn() {
  CASE=$1
  CASE_T0=$(now)
  tls_stat_save "tls.before.$CASE"
  metrics_save "m.before.$CASE"
  echo "=== case $CASE"
}
end_conn() {
  n=$2
  wait_curr_zero 60 || fail "$CASE: TlsCurrTxSw/TlsCurrRxSw not back to 0 after the connection closed"
  metrics_save "m.after.$CASE"
  dtx=$(tls_stat_delta "tls.before.$CASE" TlsTxSw)
  drx=$(tls_stat_delta "tls.before.$CASE" TlsRxSw)
  ddec=$(tls_stat_delta "tls.before.$CASE" TlsDecryptError)
  mtx=$(metric_delta "m.before.$CASE" "m.after.$CASE" "$TX_M")
  mrx=$(metric_delta "m.before.$CASE" "m.after.$CASE" "$RX_M")
  mhs=$(metric_delta "m.before.$CASE" "m.after.$CASE" "$HS_M")
  note "conn $CASE: TlsTxSw +$dtx TlsRxSw +$drx TlsDecryptError +$ddec" \
    "TlsCurrTxSw $(tls_stat TlsCurrTxSw) TlsCurrRxSw $(tls_stat TlsCurrRxSw)" \
    "| ktlb tx +$mtx rx +$mrx handshakes +$mhs | $(elapsed "$CASE_T0")s"
  [ "$dtx" -eq "$n" ] || fail "$CASE: TlsTxSw moved by $dtx, expected $n"
  [ "$drx" -eq "$n" ] || fail "$CASE: TlsRxSw moved by $drx, expected $n"
  [ "$ddec" -eq 0 ] || fail "$CASE: TlsDecryptError moved by $ddec"
  [ "$mtx" -eq "$dtx" ] || fail "$CASE: ktlb_ktls_tx_total +$mtx but kernel TlsTxSw +$dtx"
  [ "$mrx" -eq "$drx" ] || fail "$CASE: ktlb_ktls_rx_total +$mrx but kernel TlsRxSw +$drx"
  [ "$mhs" -eq "${3:-$n}" ] || fail "$CASE: $mhs full handshakes, expected ${3:-$n}"
  echo "=== case $CASE: ok"
}

lt() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a + 0 == a && a < b) }'; } # lt A B: A < B (decimals)

ccurl() { # curl with the test CA and a deadline
  curl -sS --cacert "$W/ca.crt" --max-time 120 "$@"
}

# --- setup ---------------------------------------------------------------------------------
phase setup
echo "=== setup"
tls_stat_show boot
start_origin

head -c "$BIG" /dev/urandom >up.bin
UP_SUM="$(sha256sum up.bin | cut -d' ' -f1) $BIG"
curl -sS --max-time 60 "http://127.0.0.1:$ORIGIN_PORT/size/$BIG" -o ref.bin ||
  fail "cannot fetch the reference body from the origin"
DOWN_SUM=$(sha256sum ref.bin | cut -d' ' -f1)
[ "$(wc -c <ref.bin)" -eq "$BIG" ] || fail "origin reference body has the wrong size"
echo "reference: download sha256 $DOWN_SUM, upload \"$UP_SUM\""

write_config ktlb.toml auto
start_ktlb ktlb.toml ktlb.log
grep -q 'kTLS available' ktlb.log || { cat ktlb.log; fail "ktlb did not find kernel TLS"; }
tls_stat_save tls.before.all
metrics_save m.before.all

# --- bulk: 4 MB down and 4 MB up, each Content-Length and chunked, per version x cipher -----
# One curl, four transfers (--next keeps the connection): one offloaded connection each.
bulk_case() { # bulk_case NAME EXPECT_PROTO EXPECT_CIPHER CURL_TLS_ARGS...
  name=$1 want_proto=$2 want_cipher=$3
  shift 3
  begin_conn "$name"
  rm -f down.bin downch.bin upcl.txt upch.txt
  ccurl -v "$@" -w '%{http_code} %{num_connects}\n' -o down.bin "$URL/size/$BIG" \
    --next -sS --cacert "$W/ca.crt" --max-time 120 "$@" \
    -w '%{http_code} %{num_connects}\n' -o downch.bin "$URL/chunked/$BIG" \
    --next -sS --cacert "$W/ca.crt" --max-time 120 "$@" -H 'Expect:' \
    --data-binary @up.bin -w '%{http_code} %{num_connects}\n' -o upcl.txt "$URL/sha256" \
    --next -sS --cacert "$W/ca.crt" --max-time 120 "$@" -H 'Expect:' \
    -H 'Transfer-Encoding: chunked' --data-binary @up.bin \
    -w '%{http_code} %{num_connects}\n' -o upch.txt "$URL/sha256" \
    >"curl.$name.out" 2>"curl.$name.err"
  rc=$?
  cat "curl.$name.out"
  grep -E 'SSL connection using' "curl.$name.err"
  [ "$rc" -eq 0 ] || { tail -20 "curl.$name.err"; tail -20 ktlb.log; fail "$name: curl exited $rc"; }
  grep -q "SSL connection using $want_proto / $want_cipher" "curl.$name.err" ||
    fail "$name: not $want_proto / $want_cipher"
  [ "$(tr '\n' ' ' <"curl.$name.out")" = "200 1 200 0 200 0 200 0 " ] ||
    fail "$name: expected four 200s on one connection, got: $(cat "curl.$name.out")"
  got=$(sha256sum down.bin | cut -d' ' -f1)
  [ "$got" = "$DOWN_SUM" ] || fail "$name: download sha256 $got, expected $DOWN_SUM"
  got=$(sha256sum downch.bin | cut -d' ' -f1)
  [ "$got" = "$DOWN_SUM" ] || fail "$name: chunked download sha256 $got, expected $DOWN_SUM"
  [ "$(cat upcl.txt)" = "$UP_SUM" ] || fail "$name: Content-Length upload: origin saw \"$(cat upcl.txt)\""
  [ "$(cat upch.txt)" = "$UP_SUM" ] || fail "$name: chunked upload: origin saw \"$(cat upch.txt)\""
  end_conn "$name" 1
  spliced=$(metric_delta "m.before.$name" "m.after.$name" 'ktlb_spliced_bytes_total{listener="public"}')
  note "$name: ktlb_spliced_bytes_total +$spliced of $((4 * BIG)) body bytes (CL and chunked, both ways)"
  # Each body's first bytes arrive with its head and go through userspace, and
  # so do chunk framing and the data read with it; the rest is spliced.
  [ "$spliced" -ge $((4 * BIG * 85 / 100)) ] ||
    fail "$name: only $spliced of $((4 * BIG)) body bytes spliced"
}
T12="--tlsv1.2 --tls-max 1.2"
T13="--tlsv1.3"
if want bulk; then
  phase bulk
  # shellcheck disable=SC2086
  bulk_case t12-aes128gcm TLSv1.2 ECDHE-RSA-AES128-GCM-SHA256 $T12 --ciphers ECDHE-RSA-AES128-GCM-SHA256
  bulk_case t12-aes256gcm TLSv1.2 ECDHE-RSA-AES256-GCM-SHA384 $T12 --ciphers ECDHE-RSA-AES256-GCM-SHA384
  bulk_case t12-chacha20 TLSv1.2 ECDHE-RSA-CHACHA20-POLY1305 $T12 --ciphers ECDHE-RSA-CHACHA20-POLY1305
  bulk_case t13-aes128gcm TLSv1.3 TLS_AES_128_GCM_SHA256 $T13 --tls13-ciphers TLS_AES_128_GCM_SHA256
  bulk_case t13-aes256gcm TLSv1.3 TLS_AES_256_GCM_SHA384 $T13 --tls13-ciphers TLS_AES_256_GCM_SHA384
  bulk_case t13-chacha20 TLSv1.3 TLS_CHACHA20_POLY1305_SHA256 $T13 --tls13-ciphers TLS_CHACHA20_POLY1305_SHA256
fi

# --- HTTP/2: DATA of a Content-Length body spliced frame by frame ---------------------------
# One connection each: a CL download (its DATA payloads spliced from the backend's pipe into
# the kTLS socket after ktlb writes each frame header), a chunked download and an upload
# (copied), every body by sha256.
h2_case() { # h2_case NAME CURL_TLS_ARGS...
  name=$1
  shift
  begin_conn "$name"
  rm -f h2down.bin h2downch.bin h2up.txt
  ccurl --http2 -v "$@" -w '%{http_version} %{http_code} %{num_connects}\n' -o h2down.bin \
    "https://localhost:$H2_PORT/size/$BIG" \
    --next -sS --cacert "$W/ca.crt" --max-time 120 --http2 "$@" \
    -w '%{http_version} %{http_code} %{num_connects}\n' -o h2downch.bin \
    "https://localhost:$H2_PORT/chunked/$BIG" \
    --next -sS --cacert "$W/ca.crt" --max-time 120 --http2 "$@" --data-binary @up.bin \
    -w '%{http_version} %{http_code} %{num_connects}\n' -o h2up.txt \
    "https://localhost:$H2_PORT/sha256" >"curl.$name.out" 2>"curl.$name.err"
  rc=$?
  cat "curl.$name.out"
  [ "$rc" -eq 0 ] || { tail -20 "curl.$name.err"; tail -20 ktlb.log; fail "$name: curl exited $rc"; }
  [ "$(tr '\n' ' ' <"curl.$name.out")" = "2 200 1 2 200 0 2 200 0 " ] ||
    fail "$name: expected three h2 200s on one connection, got: $(cat "curl.$name.out")"
  got=$(sha256sum h2down.bin | cut -d' ' -f1)
  [ "$got" = "$DOWN_SUM" ] || fail "$name: download sha256 $got, expected $DOWN_SUM"
  got=$(sha256sum h2downch.bin | cut -d' ' -f1)
  [ "$got" = "$DOWN_SUM" ] || fail "$name: chunked download sha256 $got, expected $DOWN_SUM"
  [ "$(cat h2up.txt)" = "$UP_SUM" ] || fail "$name: upload: origin saw \"$(cat h2up.txt)\""
  end_conn "$name" 1
  spliced=$(metric_delta "m.before.$name" "m.after.$name" 'ktlb_spliced_bytes_total{listener="h2"}')
  note "$name: HTTP/2 DATA spliced: ktlb_spliced_bytes_total{listener=h2} +$spliced of $BIG CL body bytes"
  # The body's first bytes arrive with the response head and are copied.
  [ "$spliced" -ge $((BIG * 85 / 100)) ] || fail "$name: only $spliced of $BIG DATA bytes spliced"
}
if want h2; then
  phase h2
  TX_M='ktlb_ktls_tx_total{listener="h2"}'
  RX_M='ktlb_ktls_rx_total{listener="h2"}'
  HS_M='ktlb_tls_handshakes_total{listener="h2",kind="full"}'
  # shellcheck disable=SC2086
  h2_case h2-t13 $T13
  # shellcheck disable=SC2086
  h2_case h2-t12 $T12
  TX_M='ktlb_ktls_tx_total{listener="public"}'
  RX_M='ktlb_ktls_rx_total{listener="public"}'
  HS_M='ktlb_tls_handshakes_total{listener="public",kind="full"}'
fi

# --- keep-alive: several requests on one connection ------------------------------------------
if want keepalive; then
  phase keepalive
  for v in 12 13; do
    if [ "$v" = 12 ]; then flags=$T12; else flags=$T13; fi
    begin_conn "keepalive-t$v"
    # shellcheck disable=SC2086
    ccurl $flags -w '%{http_code} %{num_connects} %{size_download}\n' -o /dev/null "$URL/size/1000" \
      -o /dev/null "$URL/size/70000" -o /dev/null "$URL/" >"ka.$v.out" 2>"ka.$v.err" ||
      { cat "ka.$v.err"; fail "keepalive-t$v: curl failed"; }
    cat "ka.$v.out"
    [ "$(tr '\n' ' ' <"ka.$v.out")" = "200 1 1000 200 0 70000 200 0 23 " ] ||
      fail "keepalive-t$v: unexpected transfers: $(cat "ka.$v.out")"
    end_conn "keepalive-t$v" 1
  done
fi

# --- openssl s_client cases --------------------------------------------------------------------
# count_responses FILE: "HTTP/1.1 200 OK" status lines in FILE (a body without a final
# newline runs into the next status line, so count matches, not lines).
count_responses() { grep -o 'HTTP/1.1 200 OK' "$1" | wc -l; }
CRLF=$(printf '\r')

# Pipelining: two requests in one write (one TLS record), answered in order; the second
# asks ktlb to close, which it does with a close_notify ("closed" from s_client).
if want pipelined; then
  phase pipelined
  for v in 1_2 1_3; do
    begin_conn "pipelined-t$v"
    printf 'GET /size/3000 HTTP/1.1\r\nHost: localhost\r\n\r\nGET /size/5000 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' >pipe.req
    timeout 60 openssl s_client -connect "127.0.0.1:$PORT" -servername localhost \
      -CAfile "$W/ca.crt" -verify_return_error "-tls$v" -ign_eof <pipe.req >"pipe.$v.out" 2>"pipe.$v.err"
    rc=$?
    [ "$rc" -eq 0 ] || { cat "pipe.$v.err"; fail "pipelined-t$v: s_client exited $rc"; }
    [ "$(count_responses "pipe.$v.out")" -eq 2 ] || { grep -a 'HTTP/1.1' "pipe.$v.out"; fail "pipelined-t$v: expected 2 responses"; }
    grep -q "^Content-Length: 3000$CRLF\$" "pipe.$v.out" && grep -q "^Content-Length: 5000$CRLF\$" "pipe.$v.out" ||
      fail "pipelined-t$v: wrong response lengths"
    # s_client prints "closed" on close_notify (SSL_ERROR_ZERO_RETURN), right after the body.
    [ "$(tail -c 7 "pipe.$v.out")" = closed ] ||
      { tail -5 "pipe.$v.out"; fail "pipelined-t$v: no close_notify from ktlb (s_client did not print closed)"; }
    end_conn "pipelined-t$v" 1
  done
  # A chunked upload of two large chunks (spliced) with a trailer, and a GET in the same
  # stream: the 64-byte framing read after the last chunk takes the trailer and the start
  # of the GET, which must become the next request, served after the first response.
  begin_conn chunked-pipelined
  head -c 131072 up.bin >c1.bin
  tail -c 131072 up.bin >c2.bin
  CH_SUM="$(cat c1.bin c2.bin | sha256sum | cut -d' ' -f1) 262144"
  { printf 'POST /sha256 HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n'
    printf '20000\r\n'; cat c1.bin; printf '\r\n20000;x=y\r\n'; cat c2.bin
    printf '\r\n0\r\nX-Trailer: 1\r\n\r\n'
    printf 'GET /size/10 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n'; } >chpipe.req
  timeout 60 openssl s_client -connect "127.0.0.1:$PORT" -servername localhost -quiet \
    -CAfile "$W/ca.crt" -verify_return_error -ign_eof <chpipe.req >chpipe.out 2>chpipe.err
  [ "$(count_responses chpipe.out)" -eq 2 ] || { cat chpipe.err; grep -a HTTP/ chpipe.out; fail "chunked-pipelined: expected 2 responses"; }
  grep -q "^$CH_SUM\$" chpipe.out || { cat chpipe.out; fail "chunked-pipelined: origin saw another body (want \"$CH_SUM\")"; }
  end_conn chunked-pipelined 1
  spliced=$(metric_delta m.before.chunked-pipelined m.after.chunked-pipelined 'ktlb_spliced_bytes_total{listener="public"}')
  note "chunked-pipelined: 2 x 128 KiB chunks + trailer + pipelined GET: both served, $spliced bytes spliced"
  [ "$spliced" -ge 131072 ] || fail "chunked-pipelined: only $spliced bytes spliced"
  # Bad framing right after a spliced chunk (no CRLF after the data): 400, closed, counted.
  begin_conn chunked-bad-framing
  { printf 'POST /sha256 HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n'
    printf '20000\r\n'; cat c1.bin; printf 'XX\r\n0\r\n\r\n'; } >chbad.req
  timeout 60 openssl s_client -connect "127.0.0.1:$PORT" -servername localhost -quiet \
    -CAfile "$W/ca.crt" -verify_return_error -ign_eof <chbad.req >chbad.out 2>chbad.err
  grep -q '^HTTP/1.1 400 ' chbad.out || { cat chbad.err; head -c 300 chbad.out; fail "chunked-bad-framing: no 400"; }
  end_conn chunked-bad-framing 1
  bad=$(metric_delta m.before.chunked-bad-framing m.after.chunked-bad-framing \
    'ktlb_http_parse_errors_total{listener="public",reason="bad_chunk"}')
  [ "$bad" -eq 1 ] || fail "chunked-bad-framing: parse_errors{bad_chunk} +$bad"
  note "chunked-bad-framing: 400 after a spliced chunk without its CRLF, bad_chunk +1"
fi

# First request bytes in the same read as the client Finished. A relay (busybox nc -e)
# holds the client's second flight back until it has the whole request record too, then
# forwards it cut at a chosen byte: everything (Finished + whole request record),
# Finished + 10 bytes of the request record (body partial), Finished + 3 bytes (record
# header partial). ktlb must finish the record it holds half of with exact reads and
# start kernel RX at record 1.
#
# The relay is driven by byte counts and ktlb's log, not by time: it reads the client's
# records whole (by their length fields), forwards the first part in one write, and the
# rest only once ktlb has logged its exact read for the held record (so the two parts can
# never arrive in one read). It logs every count to relay.log, printed with each case.
if want coalesce; then
  phase coalesce
  make_relay() { # make_relay CUT: CUT = all, or bytes of the request record in the first part
    cat >relay.sh <<EOF
#!/bin/sh
# stdin and stdout: the client's socket (nc -e). To ktlb: nc 127.0.0.1 $PORT.
exec 2>>$W/relay.err
. "\$KTLB_VM_LIB"
cd $W || exit 1
LOG=$W/relay.log
exact_before=\$(grep -c 'reading exactly' $W/ktlb.log)
# read_record FILE: appends one whole TLS record from the client to FILE; prints
# "TYPE LENGTH". dd iflag=fullblock reads exactly the count asked for, never more.
read_record() {
  out=\$1
  dd bs=5 count=1 iflag=fullblock of=relay.hdr 2>/dev/null <&3
  set -- \$(od -An -tu1 relay.hdr)
  [ \$# -eq 5 ] || return 1
  len=\$((\$4 * 256 + \$5))
  [ "\$len" -gt 0 ] || return 1
  cat relay.hdr >>"\$out"
  dd bs="\$len" count=1 iflag=fullblock 2>/dev/null <&3 >>"\$out"
  echo "\$1 \$len"
}
exact_logged() { [ "\$(grep -c 'reading exactly' $W/ktlb.log)" -gt "\$exact_before" ]; }
relay() {
  : >relay.hello
  r=\$(read_record relay.hello) || { echo "relay: no ClientHello" >>\$LOG; return 1; }
  echo "relay: client record (type len) \$r: ClientHello, forwarded" >>\$LOG
  dd if=relay.hello bs=65536 count=1 2>/dev/null
  # The client's second flight (ChangeCipherSpec, Finished) and the request: records up
  # to and including the second application_data (23) one.
  : >relay.second
  apps=0
  while [ "\$apps" -lt 2 ]; do
    r=\$(read_record relay.second) || { echo "relay: client closed after \$(wc -c <relay.second) bytes" >>\$LOG; return 1; }
    echo "relay: client record (type len) \$r" >>\$LOG
    set -- \$r
    [ "\$1" = 23 ] && apps=\$((apps + 1))
    last=\$((\$2 + 5))
  done
  total=\$(wc -c <relay.second)
  flight=\$((total - last))
  echo "\$flight \$last" >relay.sizes
  cut=$1
  if [ "\$cut" = all ]; then first=\$total; else first=\$((flight + cut)); fi
  dd if=relay.second bs="\$first" count=1 2>/dev/null
  echo "relay: forwarded \$first of \$total bytes in one write (second flight \$flight, request record \$last)" >>\$LOG
  if [ "\$first" -lt "\$total" ]; then
    if wait_until 60 exact_logged; then
      echo "relay: ktlb logged its exact read" >>\$LOG
    else
      echo "relay: ktlb logged no exact read within 60 s; forwarding anyway" >>\$LOG
    fi
    dd if=relay.second bs=65536 skip="\$first" iflag=skip_bytes count=1 2>/dev/null
    echo "relay: forwarded the remaining \$((total - first)) bytes in one write" >>\$LOG
  fi
  # Nothing more is expected from the client before it closes. exec: killing this
  # subshell kills the reader, so the client sees ktlb's close.
  exec cat <&3
}
exec 3<&0
rm -f relay.fifo
mkfifo relay.fifo
nc 127.0.0.1 $PORT <relay.fifo &
ncpid=\$!
relay >relay.fifo &
rpid=\$!
wait \$ncpid
echo "relay: ktlb closed the connection (nc exited)" >>\$LOG
kill \$rpid 2>/dev/null
EOF
    chmod +x relay.sh
  }
  printf 'GET /size/1234 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' >coalesce.req
  REQ_LEN=$(wc -c <coalesce.req)
  REQ_REC=$((REQ_LEN + 22)) # TLS 1.3 AES-GCM record: 5 header + 1 type + 16 tag
  for cut in all body header; do
    case $cut in
      all) make_relay all ;;
      body) make_relay 10 ;;
      header) make_relay 3 ;;
    esac
    rm -f relay.sizes
    : >relay.log
    begin_conn "finished+request-$cut"
    nc -l -p "$RELAY_PORT" -e "$W/relay.sh" &
    rpid=$!
    wait_for_listen "$RELAY_PORT" 60 || fail "relay did not listen"
    lines_before=$(wc -l <ktlb.log)
    timeout 60 openssl s_client -connect "127.0.0.1:$RELAY_PORT" -servername localhost \
      -CAfile "$W/ca.crt" -verify_return_error -tls1_3 -ciphersuites TLS_AES_128_GCM_SHA256 \
      -ign_eof <coalesce.req >"co.$cut.out" 2>"co.$cut.err"
    rc=$?
    kill "$rpid" 2>/dev/null
    wait "$rpid" 2>/dev/null
    cat relay.log
    tail -n +$((lines_before + 1)) ktlb.log | grep -E 'after Finished|reading exactly|kTLS RX on' >co.$cut.log
    cat co.$cut.log
    co_fail() {
      echo "--- s_client"; tail -5 "co.$cut.out"; cat "co.$cut.err"
      echo "--- ktlb.log since the case began"; tail -n +$((lines_before + 1)) ktlb.log | tail -30
      echo "--- relay errors"; cat relay.err 2>/dev/null
      metrics_save "m.fail.$CASE"
      echo "--- ktlb metrics"; grep -E '^ktlb_(connections_active|client_resets|timeouts|ktls_(rx|tx)|tls_handshake)' "m.fail.$CASE"
      fail "$CASE: $*"
    }
    [ "$rc" -eq 0 ] || co_fail "s_client exited $rc"
    [ "$(count_responses "co.$cut.out")" -eq 1 ] && grep -q "^Content-Length: 1234$CRLF" "co.$cut.out" ||
      co_fail "no response"
    [ -s relay.sizes ] || co_fail "the relay did not get the second flight and the request"
    read -r flight rec <relay.sizes
    [ "$flight" -gt 0 ] && [ "$rec" -eq "$REQ_REC" ] ||
      co_fail "relay saw a second flight of $flight bytes and a request record of $rec (want $REQ_REC)"
    case $cut in
      all) want='after Finished: 1 whole, 0 bytes missing' ;;
      body) want="after Finished: 0 whole, $((REQ_REC - 10)) bytes missing" ;;
      header) want='after Finished: 0 whole, 2 bytes missing' ;;
    esac
    grep -qF "$want" co.$cut.log || co_fail "expected ktlb to log \"$want\""
    grep -qF 'kTLS RX on at record 1' co.$cut.log ||
      co_fail "expected kernel RX to start at record 1"
    end_conn "finished+request-$cut" 1
  done
fi

# Resumption (session tickets): the abbreviated handshakes offer TX and (TLS 1.2) RX at
# other points of the flight; the result must be the same.
if want resume; then
  phase resume
  printf 'GET /size/2000 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' >close.req
  for v in 1_2 1_3; do
    rm -f "sess.$v.pem"
    begin_conn "resume-t$v-first"
    timeout 60 openssl s_client -connect "127.0.0.1:$PORT" -servername localhost \
      -CAfile "$W/ca.crt" -verify_return_error "-tls$v" -sess_out "sess.$v.pem" -ign_eof \
      <close.req >"rs1.$v.out" 2>"rs1.$v.err" || { cat "rs1.$v.err"; fail "resume-t$v: s_client failed"; }
    [ "$(count_responses "rs1.$v.out")" -eq 1 ] || fail "resume-t$v-first: no response"
    [ -s "sess.$v.pem" ] || fail "resume-t$v-first: no session saved"
    end_conn "resume-t$v-first" 1
    begin_conn "resume-t$v"
    timeout 60 openssl s_client -connect "127.0.0.1:$PORT" -servername localhost \
      -CAfile "$W/ca.crt" -verify_return_error "-tls$v" -sess_in "sess.$v.pem" -ign_eof \
      <close.req >"rs2.$v.out" 2>"rs2.$v.err" || { cat "rs2.$v.err"; fail "resume-t$v: s_client failed"; }
    [ "$(count_responses "rs2.$v.out")" -eq 1 ] || fail "resume-t$v: no response"
    grep -q '^Reused, ' "rs2.$v.out" || fail "resume-t$v: the session was not resumed"
    end_conn "resume-t$v" 1 0
    note "resume-t$v: ktlb_tls_handshakes_total{kind=resumed} +$(metric_delta "m.before.resume-t$v" \
      "m.after.resume-t$v" 'ktlb_tls_handshakes_total{listener="public",kind="resumed"}')"
  done
fi

# Close_notify from the client: s_client sends it when its input ends (no -ign_eof),
# here once the response is in.
if want close_notify; then
  phase close_notify
  begin_conn close_notify-client
  lines_before=$(wc -l <ktlb.log)
  rm -f cn.out
  { printf 'GET /size/100 HTTP/1.1\r\nHost: localhost\r\n\r\n'; wait_responses cn.out 1 60; } |
    timeout 60 openssl s_client -connect "127.0.0.1:$PORT" -servername localhost \
      -CAfile "$W/ca.crt" -verify_return_error -tls1_3 >cn.out 2>cn.err
  [ "$(count_responses cn.out)" -eq 1 ] || { cat cn.err; fail "close_notify-client: no response"; }
  grep -q '^DONE' cn.err || fail "close_notify-client: s_client did not end on its input's EOF"
  wait_curr_zero 60
  tail -n +$((lines_before + 1)) ktlb.log | grep -q 'close_notify from' ||
    { tail ktlb.log; fail "close_notify-client: ktlb did not see the client's close_notify"; }
  end_conn close_notify-client 1
fi

# KeyUpdate (TLS 1.3 "K" and "k" commands of s_client). A kernel that can rekey kTLS
# (~6.14+) gets the next keys and the connection serves the request after it; Linux 6.1
# cannot (a second TLS_RX is EBUSY), so ktlb must count it and close the connection
# cleanly — no spin, and keep serving. The client's input is fed step by step: the
# KeyUpdate command once the first response is in, the second request once s_client
# has sent the KeyUpdate; then its input stays open (s_client must end because ktlb
# closes, never because its input ended).
if want keyupdate; then
  phase keyupdate
  cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$KTLB_PID/stat"; }
  for k in K k; do
    begin_conn "keyupdate-$k"
    ku0=$(metric "m.before.keyupdate-$k" "$KU_M")
    rm -f ku.fifo ku.sent "ku.$k.out" "ku.$k.err"
    mkfifo ku.fifo
    { printf 'GET /size/100 HTTP/1.1\r\nHost: localhost\r\n\r\n'; wait_responses "ku.$k.out" 1 60
      echo "$k"; uptime_s >ku.sent; wait_for_file_text "ku.$k.err" KEYUPDATE 60
      printf 'GET /size/100 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n'; exec sleep 300; } >ku.fifo &
    wpid=$!
    timeout 120 openssl s_client -connect "127.0.0.1:$PORT" -servername localhost \
      -CAfile "$W/ca.crt" -verify_return_error -tls1_3 <ku.fifo >"ku.$k.out" 2>"ku.$k.err"
    [ -s ku.sent ] && took=$(elapsed "$(cat ku.sent)") || took=never
    kill "$wpid" 2>/dev/null
    wait "$wpid" 2>/dev/null
    responses=$(count_responses "ku.$k.out")
    [ "$responses" -ge 1 ] || { cat "ku.$k.err"; fail "keyupdate-$k: no response before the KeyUpdate"; }
    grep -q KEYUPDATE "ku.$k.err" || { cat "ku.$k.err"; fail "keyupdate-$k: s_client did not send a KeyUpdate"; }
    lt "$took" 25 || fail "keyupdate-$k: connection still open ${took}s after the KeyUpdate"
    wait_curr_zero 60
    c0=$(cpu_ticks)
    sleep 2
    c1=$(cpu_ticks)
    echo "keyupdate-$k: s_client ended ${took}s after the KeyUpdate; ktlb used $((c1 - c0)) ticks in the next 2 s"
    [ $((c1 - c0)) -lt 40 ] || fail "keyupdate-$k: ktlb busy after the KeyUpdate ($((c1 - c0)) ticks in 2 s)"
    end_conn "keyupdate-$k" 1
    ku1=$(metric "m.after.keyupdate-$k" "$KU_M")
    [ $((ku1 - ku0)) -eq 1 ] || fail "keyupdate-$k: ktlb_ktls_keyupdates_total moved by $((ku1 - ku0))"
    rekeys=$(metric_delta "m.before.keyupdate-$k" "m.after.keyupdate-$k" "$REKEY_M")
    cannot=$(metric_delta "m.before.keyupdate-$k" "m.after.keyupdate-$k" "$KU_CANNOT_M")
    if [ "$rekeys" -eq 1 ]; then
      [ "$responses" -eq 2 ] || fail "keyupdate-$k: rekeyed but $responses responses (want 2)"
      note "keyupdate-$k: kernel took the new key(s); request after it served; closed ${took}s after it"
    else
      [ "$cannot" -eq 1 ] || fail "keyupdate-$k: neither rekeyed nor closed as kernel_cannot_rekey"
      [ "$responses" -eq 1 ] || fail "keyupdate-$k: $responses responses on a connection that cannot rekey"
      note "keyupdate-$k: ktlb_ktls_keyupdates_total +1, kernel_cannot_rekey +1, closed ${took}s after it"
    fi
    # ...and ktlb still serves.
    begin_conn "after-keyupdate-$k"
    ccurl $T13 -o /dev/null -w '%{http_code}\n' "$URL/size/1000" >aku.out 2>aku.err ||
      { cat aku.err; fail "after-keyupdate-$k: curl failed"; }
    [ "$(cat aku.out)" = 200 ] || fail "after-keyupdate-$k: status $(cat aku.out)"
    end_conn "after-keyupdate-$k" 1
  done
fi

# TLS 1.2 renegotiation ("R"): the ClientHello arrives as a handshake record on the kTLS
# RX socket; ktlb (SSL_OP_NO_RENEGOTIATION) ends the connection and keeps serving.
if want renegotiate; then
  phase renegotiate
  begin_conn renegotiate-t12
  rm -f rn.fifo rn.sent rn.out
  mkfifo rn.fifo
  { printf 'GET /size/100 HTTP/1.1\r\nHost: localhost\r\n\r\n'; wait_responses rn.out 1 60
    echo R; uptime_s >rn.sent; exec sleep 300; } >rn.fifo &
  wpid=$!
  timeout 120 openssl s_client -connect "127.0.0.1:$PORT" -servername localhost \
    -CAfile "$W/ca.crt" -verify_return_error -tls1_2 <rn.fifo >rn.out 2>rn.err
  [ -s rn.sent ] && took=$(elapsed "$(cat rn.sent)") || took=never
  kill "$wpid" 2>/dev/null
  wait "$wpid" 2>/dev/null
  [ "$(count_responses rn.out)" -eq 1 ] || { cat rn.err; fail "renegotiate-t12: no response"; }
  grep -q RENEGOTIATING rn.err || fail "renegotiate-t12: s_client did not renegotiate"
  lt "$took" 25 || fail "renegotiate-t12: connection still open ${took}s after R"
  end_conn renegotiate-t12 1
fi

# --- totals ------------------------------------------------------------------------------------
phase totals
metrics_save m.after.all
echo "=== metrics (ktls and handshakes)"
grep -E '^ktlb_(ktls|tls_handshakes|connections|client_resets|spliced)' m.after.all
dtx=$(tls_stat_delta tls.before.all TlsTxSw)
drx=$(tls_stat_delta tls.before.all TlsRxSw)
# Both listeners (HTTP/1.1 and h2).
mtx=$(($(metric_delta m.before.all m.after.all "$TX_M") +
  $(metric_delta m.before.all m.after.all 'ktlb_ktls_tx_total{listener="h2"}')))
mrx=$(($(metric_delta m.before.all m.after.all "$RX_M") +
  $(metric_delta m.before.all m.after.all 'ktlb_ktls_rx_total{listener="h2"}')))
fb=$(awk '/^ktlb_ktls_fallbacks_total/ { s += $NF } END { print s + 0 }' m.after.all)
note "all connections: TlsTxSw +$dtx TlsRxSw +$drx TlsDecryptError +$(tls_stat_delta tls.before.all TlsDecryptError)" \
  "| ktlb_ktls_tx_total +$mtx ktlb_ktls_rx_total +$mrx fallbacks $fb"
[ "$dtx" -eq "$mtx" ] && [ "$drx" -eq "$mrx" ] || fail "ktlb metrics and tls_stat disagree"
[ "$fb" -eq 0 ] || fail "ktlb fell back to userspace TLS $fb times with kTLS available"
echo "=== ktlb's kTLS log (KTLB_KTLS_DEBUG): control records and RX switch points"
grep -E 'record type|KeyUpdate|after Finished: [1-9]|bytes missing|closing' ktlb.log | grep -v ': 0 whole, 0 bytes'
echo "=== (end of ktlb's kTLS log)"
[ -f "$F/ktlb_ktls.only" ] && { echo "=== ktlb.log (development run)"; cat ktlb.log; }
if grep -E 'failed|kTLS receive|spin' ktlb.log | grep -v 'handshake with' >unexpected.txt; then
  cat unexpected.txt
  fail "unexpected errors in ktlb's log"
fi

# max_fragment_length (s_client -maxfraglen 512): OpenSSL 3.0 does not offer TX keys for
# such a session, so the connection stays in userspace TLS for TX, counted as
# openssl_declined, and is served all the same. After the totals: it is a fallback.
# s_client (-ign_eof) ends when ktlb closes after the response (Connection: close).
if want maxfrag; then
  phase maxfrag
  echo "=== case maxfraglen"
  metrics_save m.mfl.before
  tls_stat_save tls.mfl.before
  printf 'GET /size/100000 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' |
    timeout 60 openssl s_client -connect "127.0.0.1:$PORT" -servername localhost -ign_eof \
      -CAfile "$W/ca.crt" -verify_return_error -tls1_2 -maxfraglen 512 >mfl.out 2>mfl.err
  rc=$?
  [ "$(count_responses mfl.out)" -eq 1 ] || { cat mfl.err; fail "maxfraglen: no response"; }
  [ "$rc" -eq 0 ] || { cat mfl.err; fail "maxfraglen: s_client exited $rc (ktlb did not close after Connection: close?)"; }
  wait_curr_zero 60 || fail "maxfraglen: kTLS sockets left open"
  metrics_save m.mfl.after
  mtx=$(tls_stat_delta tls.mfl.before TlsTxSw)
  mrx=$(tls_stat_delta tls.mfl.before TlsRxSw)
  declined=$(metric_delta m.mfl.before m.mfl.after 'ktlb_ktls_fallbacks_total{listener="public",reason="openssl_declined"}')
  note "maxfraglen 512: TlsTxSw +$mtx TlsRxSw +$mrx fallbacks{openssl_declined} +$declined, response served"
  [ "$mtx" -eq 0 ] || fail "maxfraglen: TX went to the kernel"
  [ "$declined" -eq 1 ] || fail "maxfraglen: expected one openssl_declined fallback, got $declined"
fi
stop_ktlb

# --- mTLS: the client certificate's identity outlives the SSL object ---------------------------
# With both directions in the kernel ktlb frees the SSL right after the handshake
# (ktlb_ktls_ssl_released); the X-Client-Cert-* fields of a request sent after that
# must still name the certificate (copied out at the handshake's end).
if want mtls; then
  phase mtls
  cp "$F/client.crt" "$F/client.key" "$W/"
  write_config mtls.toml auto
  awk -v ca="$W/ca.crt" '{ print } /^ktls = / && !done { print "client_auth = { ca = \"" ca "\" }"; done = 1 }' \
    mtls.toml >mtls.tmp && mv mtls.tmp mtls.toml
  grep -q '^client_auth' mtls.toml || fail "mtls: no client_auth in the config"
  start_ktlb mtls.toml ktlb-mtls.log
  want_fp=$(openssl x509 -in "$W/client.crt" -noout -fingerprint -sha256 | sed 's/.*=//; s/://g' |
    tr 'A-F' 'a-f')
  for v in t12 t13; do
    [ "$v" = t12 ] && tls="$T12" || tls="$T13"
    begin_conn "mtls-$v"
    # shellcheck disable=SC2086
    ccurl $tls --cert "$W/client.crt" --key "$W/client.key" -o mtls.$v.out "$URL/headers" \
      --next -sS --cacert "$W/ca.crt" --max-time 120 $tls --cert "$W/client.crt" \
      --key "$W/client.key" -o mtls.$v.2.out "$URL/headers" 2>mtls.$v.err ||
      { cat mtls.$v.err; tail -20 ktlb-mtls.log; fail "mtls-$v: curl failed"; }
    end_conn "mtls-$v" 1
    freed=$(metric_delta "m.before.mtls-$v" "m.after.mtls-$v" 'ktlb_ktls_ssl_released_total{listener="public"}')
    [ "$freed" -eq 1 ] || fail "mtls-$v: the SSL was not freed (ktlb_ktls_ssl_released_total +$freed)"
    for out in mtls.$v.out mtls.$v.2.out; do
      grep -qx 'X-Client-Cert-Verified: SUCCESS' "$out" || { cat "$out"; fail "mtls-$v: not verified"; }
      grep -qx 'X-Client-Cert-Subject: CN=test-client,O=ktlb test' "$out" ||
        { cat "$out"; fail "mtls-$v: wrong subject"; }
      grep -qx "X-Client-Cert-Fingerprint: $want_fp" "$out" ||
        { cat "$out"; fail "mtls-$v: wrong fingerprint (want $want_fp)"; }
    done
    note "mtls-$v: SSL freed after the handshake, identity still sent with both requests"
  done
  stop_ktlb
fi

if want nomodule; then
  # --- without the tls module --------------------------------------------------------------------
  # The module must be unavailable, not just unloaded (TCP_ULP would autoload it).
  phase nomodule
  echo "=== no tls module"
  rmmod_tls() { rmmod tls 2>rmmod.err; }
  wait_until 60 rmmod_tls || { cat rmmod.err; fail "cannot unload tls (still in use?)"; }
  echo /bin/false >/proc/sys/kernel/modprobe
  write_config require.toml require
  t0=$(now)
  timeout 30 ktlb --config require.toml >require.log 2>&1
  rc=$?
  cat require.log
  # Not 0, and not killed by timeout (busybox: 143): ktlb must refuse and exit on its own.
  [ "$rc" -ne 0 ] && [ "$rc" -lt 124 ] || fail "ktls = \"require\" without the tls module: ktlb exit status $rc, expected a refusal"
  grep -q 'ktls = "require"' require.log && grep -q 'no "tls" ULP' require.log ||
    fail "ktls = \"require\" without the tls module: no clear message"
  note "require without tls module: refused in $(elapsed "$t0")s: $(grep 'startup failed' require.log)"
  # "auto" without the module: userspace TLS, counted as a fallback.
  start_ktlb ktlb.toml ktlb-nomod.log
  grep -q 'kTLS unavailable' ktlb-nomod.log || { cat ktlb-nomod.log; fail "auto without module: no notice"; }
  metrics_save m.nomod.before
  ccurl $T13 -o down.bin "$URL/size/$BIG" || fail "auto without module: download failed"
  [ "$(sha256sum down.bin | cut -d' ' -f1)" = "$DOWN_SUM" ] || fail "auto without module: bad download"
  metrics_save m.nomod.after
  nm=$(metric_delta m.nomod.before m.nomod.after 'ktlb_ktls_fallbacks_total{listener="public",reason="no_tls_module"}')
  ntx=$(metric_delta m.nomod.before m.nomod.after "$TX_M")
  note "auto without tls module: fallbacks{no_tls_module} +$nm, ktls_tx +$ntx"
  [ "$nm" -eq 1 ] && [ "$ntx" -eq 0 ] || fail "auto without module: expected one no_tls_module fallback"
  stop_ktlb
fi

echo "=== summary"
cat summary.txt
phase_summary
echo "ktlb_ktls: all cases passed in $(elapsed "$T_START")s"
