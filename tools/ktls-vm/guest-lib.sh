# Helpers for kTLS guest scenarios (busybox sh). Source with: . "$KTLB_VM_LIB"
# Every helper works with busybox applets only.

# tls_stat NAME: current value of one /proc/net/tls_stat counter (e.g. TlsTxSw).
tls_stat() {
  awk -v k="$1" '$1 == k { print $2; found = 1 } END { if (!found) print 0 }' /proc/net/tls_stat
}

# tls_stat_save FILE: snapshot all counters.
tls_stat_save() { cat /proc/net/tls_stat >"$1"; }

# tls_stat_delta FILE NAME: counter NAME now minus its value in snapshot FILE.
tls_stat_delta() {
  before=$(awk -v k="$2" '$1 == k { print $2; found = 1 } END { if (!found) print 0 }' "$1")
  echo $(( $(tls_stat "$2") - before ))
}

# tls_stat_show LABEL: print the counters, each line prefixed with LABEL.
tls_stat_show() { sed "s/^/tls_stat[$1] /" /proc/net/tls_stat; }

# fail MESSAGE: print and exit 1 (the harness reports FAIL 1).
fail() { echo "FAIL: $*"; exit 1; }

# expect_delta FILE NAME OP N: assert that tls_stat_delta FILE NAME satisfies OP N
# (OP is a test(1) operator: -eq, -ge, ...).
expect_delta() {
  d=$(tls_stat_delta "$1" "$2")
  if test "$d" "$3" "$4"; then
    echo "ok: $2 delta $d $3 $4"
  else
    fail "$2 delta $d, expected $3 $4"
  fi
}

# wait_for_file_text FILE TEXT SECS: wait until FILE contains TEXT (fixed string).
wait_for_file_text() {
  i=0
  while ! grep -qF "$2" "$1" 2>/dev/null; do
    i=$((i + 1))
    [ "$i" -gt $(($3 * 10)) ] && return 1
    usleep 100000
  done
}

# wait_for_listen PORT SECS: wait until a TCP socket listens on PORT.
wait_for_listen() {
  i=0
  while ! netstat -ltn 2>/dev/null | grep -q ":$1 "; do
    i=$((i + 1))
    [ "$i" -gt $(($2 * 10)) ] && return 1
    usleep 100000
  done
}
