#!/bin/sh
# kTLS guest scenario: proves the guest kernel does TLS record crypto, without ktlb.
# Run with: tools/ktls-vm/run.sh --scenario tests/ktls/openssl_ktls.sh
#
# OpenSSL 3.0's s_server/s_client have no -ktls flag; SSL_OP_ENABLE_KTLS is switched on
# through the config file instead (ssl_conf "Options = KTLS", applied to every SSL_CTX).
# Each case: s_server -WWW serves a file over loopback to s_client, and the case passes
# only if the payload arrives intact, s_client reports kernel TLS, and the kernel's
# /proc/net/tls_stat counters moved by the expected amounts (both ends are in this guest,
# so one connection counts twice).
#
# ktls-vm-bin: /usr/bin/openssl
set -u
# shellcheck source=tools/ktls-vm/guest-lib.sh
. "$KTLB_VM_LIB"

cd "$KTLB_WORK_DIR" || exit 1
phase setup
cat >ktls.cnf <<'EOF'
openssl_conf = openssl_init
[openssl_init]
ssl_conf = ssl_module
[ssl_module]
system_default = ktls_defaults
[ktls_defaults]
Options = KTLS
EOF
export OPENSSL_CONF="$KTLB_WORK_DIR/ktls.cnf"

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout key.pem -out cert.pem -days 2 -subj /CN=localhost 2>req.err ||
  { cat req.err; fail "cannot make a certificate"; }

# ~300 KB of numbered lines: many full 16 KB records.
lines=6000
awk -v n="$lines" 'BEGIN { for (i = 1; i <= n; i++)
  printf "ktlb-payload line %06d abcdefghijklmnopqrstuvwxyz0123456789\n", i }' >payload.txt
printf 'GET /payload.txt HTTP/1.0\r\n\r\n' >request.txt

tls_stat_show boot
port=4430

# run_case NAME PROTO_FLAG CIPHER_FLAG CIPHER TX RX [SERVER_EXTRA]
#   TX/RX: expected TlsTxSw/TlsRxSw increase for the connection (client + server).
run_case() {
  name=$1 proto=$2 cflag=$3 cipher=$4 want_tx=$5 want_rx=$6 extra=${7:-}
  port=$((port + 1))
  phase "$name"
  echo "=== case $name ($proto $cipher $extra)"
  tls_stat_save "before.$name"
  # shellcheck disable=SC2086
  openssl s_server -accept "127.0.0.1:$port" -cert cert.pem -key key.pem \
    "$proto" "$cflag" "$cipher" -naccept 1 -WWW $extra \
    </dev/null >"server.$name.out" 2>"server.$name.err" &
  spid=$!
  wait_for_file_text "server.$name.out" ACCEPT 60 || {
    cat "server.$name.out" "server.$name.err"; fail "$name: s_server did not start"; }
  openssl s_client -connect "127.0.0.1:$port" -servername localhost "$proto" "$cflag" "$cipher" \
    -ign_eof <request.txt >"client.$name.out" 2>"client.$name.err"
  crc=$?
  wait "$spid"
  src=$?
  grep -E '^(Using Kernel TLS|KTLS SENDFILE|Warning: sendfile)' "client.$name.err" "server.$name.err"
  grep -E '^ *(Protocol|Cipher) *:' "client.$name.out" | sed 's/^ */client: /'
  tls_stat_show "after-$name"
  got=$(grep -c '^ktlb-payload line ' "client.$name.out")
  [ "$crc" -eq 0 ] || { cat "client.$name.err"; fail "$name: s_client exited $crc"; }
  [ "$src" -eq 0 ] || { cat "server.$name.err"; fail "$name: s_server exited $src"; }
  [ "$got" -eq "$lines" ] || fail "$name: client got $got of $lines payload lines"
  grep -q "ktlb-payload line $(printf '%06d' "$lines") " "client.$name.out" ||
    fail "$name: last payload line missing"
  grep -q '^Using Kernel TLS for sending' "client.$name.err" ||
    fail "$name: s_client did not use kernel TLS for sending"
  if [ "$want_rx" -gt 0 ]; then
    grep -q '^Using Kernel TLS for receiving' "client.$name.err" ||
      fail "$name: s_client did not use kernel TLS for receiving"
  fi
  case $extra in
    *-sendfile*) grep -q '^KTLS SENDFILE' "server.$name.err" ||
      fail "$name: s_server did not send the file with SSL_sendfile" ;;
  esac
  expect_delta "before.$name" TlsTxSw -eq "$want_tx"
  expect_delta "before.$name" TlsRxSw -eq "$want_rx"
  expect_delta "before.$name" TlsDecryptError -eq 0
  echo "=== case $name: ok"
}

tls_stat_save before.all
# TLS 1.2: OpenSSL 3.0 offloads TX and RX on both ends.
run_case t12-aes128gcm -tls1_2 -cipher ECDHE-ECDSA-AES128-GCM-SHA256 2 2
run_case t12-aes256gcm-sendfile -tls1_2 -cipher ECDHE-ECDSA-AES256-GCM-SHA384 2 2 -sendfile
run_case t12-chacha20 -tls1_2 -cipher ECDHE-ECDSA-CHACHA20-POLY1305 2 2
run_case t12-aes128ccm -tls1_2 -cipher ECDHE-ECDSA-AES128-CCM 2 2
# TLS 1.3: OpenSSL 3.0 offloads TX only.
run_case t13-aes128gcm -tls1_3 -ciphersuites TLS_AES_128_GCM_SHA256 2 0
run_case t13-aes256gcm -tls1_3 -ciphersuites TLS_AES_256_GCM_SHA384 2 0
run_case t13-chacha20 -tls1_3 -ciphersuites TLS_CHACHA20_POLY1305_SHA256 2 0 -sendfile

phase summary
echo "=== summary"
tls_stat_show end
expect_delta before.all TlsTxSw -eq 14
expect_delta before.all TlsRxSw -eq 8
[ "$(tls_stat TlsCurrTxSw)" -eq 0 ] || fail "TlsCurrTxSw $(tls_stat TlsCurrTxSw) after all sockets closed"
[ "$(tls_stat TlsCurrRxSw)" -eq 0 ] || fail "TlsCurrRxSw $(tls_stat TlsCurrRxSw) after all sockets closed"
phase_summary
echo "openssl_ktls: all cases passed"
