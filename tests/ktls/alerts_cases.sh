# Fatal TLS errors after the handshake, on kTLS connections: ktlb must send the alert
# before it closes (RFC 8446 §5.2 and §6). A snippet for kTLS guest scenarios (busybox
# sh), not a scenario of its own:
#
#   . "$KTLB_BIN_DIR/alerts_cases.sh"     # shipped with --bin tests/ktls/alerts_cases.sh
#   run_alert_cases 127.0.0.1 8443        # ktlb listening there, ktls = "auto"
#
# Needs in the guest: ktlb-tlsrogue and curl on PATH (--bin build/ktlb-tlsrogue,
# --bin /usr/bin/curl), the test CA (default $KTLB_FILES_DIR/ca.crt, or set ALERT_CA;
# "# ktls-vm-certs: ca.crt ..." in the scenario), and guest-lib.sh sourced (fail,
# tls_stat_save, tls_stat_delta). ktlb must serve "localhost" with the test certificate.
# With ALERT_KTLB_LOG=FILE (ktlb's log), the lines ktlb logged during each rogue
# connection are printed under the case (with KTLB_KTLS_DEBUG=1: the record types and
# receive errors it met).
#
# Every case runs twice per TLS version: --delay-ms 0 sends the crafted record right
# behind the client Finished (ktlb may still be reading with OpenSSL when it arrives, or
# may already have moved RX to the kernel: either path may handle it), --delay-ms 500
# sends it once ktlb's RX is in the kernel, so the error comes from the kernel's recvmsg
# (EBADMSG, EMSGSIZE) or from a control record ktlb reads itself. Each case checks the
# alert code, that a new connection is still served afterwards, and (bad-mac, kernel
# path) that the kernel counted the decryption error (TlsDecryptError +1).
#
# Expected codes: what OpenSSL 3.0 sends in userspace (nginx and openssl s_server
# agree), with the alternatives a kernel path can justify:
#   garbage-type, TLS 1.3: the kernel authenticates every 1.3 record with type 23 in the
#     AAD, whatever the outer type says, so a record sealed under its real header (0x42)
#     fails with EBADMSG: bad_record_mac (20) is all ktlb can know; OpenSSL checks the
#     outer type first: unexpected_message (10).
#   all-padding, TLS 1.3: the kernel reports a plaintext without a content type as
#     EBADMSG too (20); OpenSSL says unexpected_message (10).
#   bad-keyupdate (18 00 00 02 00 00): OpenSSL refuses the length before parsing,
#     illegal_parameter (47); ktlb's own KeyUpdate parser may say decode_error (50).
# Format of a case: NAME:CODE[|CODE...]

ALERT_CASES_T13="bad-mac:20 oversized:22 oversized-plaintext:22 bad-version:50 empty-alert:10
  bad-keyupdate:47|50 keyupdate-empty:50 keyupdate-bad-value:47 unexpected:10
  garbage-type:10|20 garbage-inner-type:10 all-padding:10|20"
ALERT_CASES_T12="bad-mac:20 oversized:22 oversized-plaintext:22 bad-version:70 empty-alert:10
  unexpected:10 garbage-type:10"
# Controls (the tool's own record crypto, and zero-length records that are not errors):
# answered with the response and close_notify.
ALERT_CONTROLS="valid:0 empty-appdata:0"

# alert_code_ok CODE WANT: is CODE one of WANT's |-separated codes?
alert_code_ok() {
  echo "|$2|" | grep -q "|$1|"
}

# run_alert_cases HOST PORT: runs every case; fails (guest-lib's fail) at the end if any
# case got another answer. Prints one line per case.
run_alert_cases() {
  ar_host=$1
  ar_port=$2
  ar_ca=${ALERT_CA:-$KTLB_FILES_DIR/ca.crt}
  ar_failed=0
  ar_total=0
  for ar_delay in 0 500; do
    for ar_v in 13 12; do
      if [ "$ar_v" = 13 ]; then
        ar_flag="" ar_cases="$ALERT_CONTROLS $ALERT_CASES_T13" ar_curl=--tlsv1.3
      else
        ar_flag=--tls12 ar_cases="$ALERT_CONTROLS $ALERT_CASES_T12" ar_curl="--tlsv1.2 --tls-max 1.2"
      fi
      for ar_entry in $ar_cases; do
        ar_case=${ar_entry%%:*}
        ar_want=${ar_entry#*:}
        ar_total=$((ar_total + 1))
        ar_label="t$ar_v delay=$ar_delay $ar_case"
        tls_stat_save alert.tls.before
        ar_log_lines=0
        [ -n "${ALERT_KTLB_LOG:-}" ] && ar_log_lines=$(wc -l <"$ALERT_KTLB_LOG")
        # shellcheck disable=SC2086
        ar_out=$(ktlb-tlsrogue --case "$ar_case" $ar_flag --delay-ms "$ar_delay" --timeout-ms 10000 \
          --ca "$ar_ca" --sni localhost --verbose "$ar_host:$ar_port" 2>alert.err)
        ar_rc=$?
        ar_dec=$(tls_stat_delta alert.tls.before TlsDecryptError)
        # Before the curl below adds its own lines (ktlb logs the close a moment later).
        [ -n "${ALERT_KTLB_LOG:-}" ] && usleep 500000 &&
          tail -n +$((ar_log_lines + 1)) "$ALERT_KTLB_LOG" >alert.ktlb.log
        ar_code=$(echo "$ar_out" | awk '$1 == "alert" { print $2 }')
        ar_problem=""
        if [ "$ar_rc" -ne 0 ]; then
          ar_problem="ktlb-tlsrogue exited $ar_rc"
        elif [ -z "$ar_code" ] || ! alert_code_ok "$ar_code" "$ar_want"; then
          ar_problem="expected alert $ar_want"
        elif [ "$ar_case" = bad-mac ] && [ "$ar_delay" != 0 ] && [ "$ar_dec" -ne 1 ]; then
          ar_problem="TlsDecryptError moved by $ar_dec (the kernel did not see the record?)"
        fi
        # shellcheck disable=SC2086
        ar_status=$(curl -sS --max-time 30 --cacert "$ar_ca" $ar_curl \
          --resolve "localhost:$ar_port:$ar_host" -o /dev/null -w '%{http_code}' \
          "https://localhost:$ar_port/" 2>alert.curl.err)
        if [ "$ar_status" != 200 ]; then
          ar_problem="${ar_problem:+$ar_problem; }next connection not served (status '$ar_status': $(cat alert.curl.err))"
        fi
        if [ -z "$ar_problem" ]; then
          echo "alert-case $ar_label: $ar_out (TlsDecryptError +$ar_dec) ok"
        else
          ar_failed=$((ar_failed + 1))
          echo "alert-case $ar_label: FAILED: got '$ar_out', $ar_problem (TlsDecryptError +$ar_dec)"
          sed 's/^/    /' alert.err
        fi
        [ -n "${ALERT_KTLB_LOG:-}" ] && sed 's/^/    ktlb| /' alert.ktlb.log
      done
    done
  done
  echo "alert cases: $((ar_total - ar_failed)) of $ar_total passed"
  [ "$ar_failed" -eq 0 ] || fail "run_alert_cases: $ar_failed of $ar_total cases failed"
}
