# Helpers for kTLS guest scenarios (busybox sh). Source with: . "$KTLB_VM_LIB"
# Every helper works with busybox applets only.
#
# Waiting: scenarios wait for a condition (a port, a file's text, a metric, a count)
# with a generous deadline, never for a fixed time: the emulated guest may run many
# times slower on a loaded or slower host. Deadlines are measured on the guest's clock
# (/proc/uptime), not by counting polls, so a slow poll does not stretch them.

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

# fail MESSAGE: print and exit 1 (the harness reports FAIL 1). The phases timed so far
# are printed too, so a failure on a slow host shows where the time went.
fail() {
  echo "FAIL: $*"
  [ -n "${PHASE_NAME:-}" ] && echo "(during phase $PHASE_NAME, $(secs_since "$PHASE_T0") s in)"
  [ -s "${PHASE_LOG:-/nonexistent}" ] && { echo "== phases so far"; cat "$PHASE_LOG"; }
  exit 1
}

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

# --- time ---------------------------------------------------------------------------------

# uptime_s: seconds since boot with hundredths (e.g. 123.45).
uptime_s() { cut -d' ' -f1 /proc/uptime; }

# secs_since T0: seconds (one decimal) from T0 (an uptime_s value) to now.
secs_since() { awk -v a="$1" -v b="$(uptime_s)" 'BEGIN { printf "%.1f", b - a }'; }

# phase NAME: ends the current phase, printing "phase <current>: 12.3 s" (also to
# $PHASE_LOG), and starts NAME. `phase` without NAME only ends the current one.
# phase_summary prints every phase timed so far.
PHASE_NAME=""
PHASE_T0=""
PHASE_LOG=${PHASE_LOG:-${KTLB_WORK_DIR:-/tmp}/phases.txt}
phase() {
  if [ -n "$PHASE_NAME" ]; then
    echo "phase $PHASE_NAME: $(secs_since "$PHASE_T0") s" | tee -a "$PHASE_LOG"
  fi
  PHASE_NAME=${1:-}
  PHASE_T0=$(uptime_s)
}
phase_summary() {
  phase
  echo "== phases (guest seconds)"
  cat "$PHASE_LOG" 2>/dev/null
}

# --- waiting ------------------------------------------------------------------------------

# wait_until SECS COMMAND...: run COMMAND every 0.1 s until it succeeds (return 0) or
# SECS seconds have passed on the guest's clock (return 1).
wait_until() {
  local secs=$1 end
  shift
  end=$(awk -v t="$(uptime_s)" -v s="$secs" 'BEGIN { printf "%d", (t + s) * 100 }')
  while ! "$@"; do
    [ "$(awk '{ printf "%d", $1 * 100 }' /proc/uptime)" -ge "$end" ] && return 1
    usleep 100000
  done
  return 0
}

# wait_for_file_text FILE TEXT SECS: wait until FILE contains TEXT (fixed string).
wait_for_file_text() { wait_until "$3" grep -qF "$2" "$1" 2>/dev/null; }

_listening() { netstat -ltn 2>/dev/null | grep -q ":$1 "; }
# wait_for_listen PORT SECS: wait until a TCP socket listens on PORT.
wait_for_listen() { wait_until "$2" _listening "$1"; }

# wait_for_progress FILE TEXT STALL_SECS [show]: wait until FILE contains TEXT, for as
# long as FILE keeps growing; give up (return 1) once it has not grown for STALL_SECS.
# For tools that report progress (ktlb-tlshold prints a line per batch of connections),
# so a slow but steady run is never cut off while a stuck one fails in STALL_SECS.
# With "show", each new last line of FILE is echoed as it comes.
wait_for_progress() {
  local size last
  last=-1
  while ! grep -qF "$2" "$1" 2>/dev/null; do
    size=$(wc -c <"$1" 2>/dev/null || echo 0)
    [ "$size" = "$last" ] && return 1
    [ "${4:-}" = show ] && [ "$size" -gt 0 ] && tail -n 1 "$1"
    last=$size
    wait_until "$3" _grown "$1" "$size" "$2" || true
  done
  return 0
}
_grown() { [ "$(wc -c <"$1" 2>/dev/null || echo 0)" != "$2" ] || grep -qF "$3" "$1" 2>/dev/null; }
