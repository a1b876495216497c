#!/usr/bin/env bash
# Kernel settings for a ktlb edge host, with the reason for each.
#
# Usage: tools/sysctl-tuning.sh [--check | --apply | --write FILE]
#   --check  (default) show each setting's current value against the recommendation;
#            exit 0 always (a report, not a gate)
#   --apply  set the recommended values now (root; lost at reboot)
#   --write FILE  write them as a sysctl.d file (e.g. /etc/sysctl.d/90-ktlb.conf) plus
#            the kTLS module to /etc/modules-load.d/ktlb-tls.conf when FILE is under /etc
#
# Only raises limits and turns on behaviour an edge proxy wants; nothing here trades
# safety for speed. The open-file limit is not a sysctl: give the service a hard
# RLIMIT_NOFILE (systemd LimitNOFILE=1048576); ktlb raises its soft limit to it.
set -euo pipefail

# key|kind|recommended|why. kind: min = at least this (every field, for triples),
# max = at most this, exact = this value. A setting already better is left alone.
settings=(
  "net.core.somaxconn|min|65535|listen backlog cap: ktlb asks for 4096 per worker socket; bursts of new connections are refused beyond it"
  "net.ipv4.tcp_max_syn_backlog|min|65535|half-open connections held during a SYN burst"
  "net.core.netdev_max_backlog|min|16384|packets queued per CPU before the stack drops them (loopback and fast NICs)"
  "net.ipv4.ip_local_port_range|exact|10000 65535|ephemeral ports for upstream connections: the pool reuses them, but each backend address still needs one per concurrent request"
  "net.ipv4.tcp_tw_reuse|exact|1|reuse TIME_WAIT ports for new upstream connections (outgoing only; safe with timestamps)"
  "net.ipv4.tcp_fin_timeout|max|15|release closed connections' FIN_WAIT_2 state sooner"
  "net.ipv4.tcp_slow_start_after_idle|exact|0|keep-alive connections keep their congestion window between requests"
  "net.ipv4.tcp_notsent_lowat|max|131072|bound unsent bytes per socket: less memory per slow client, backpressure reaches ktlb sooner"
  "net.core.rmem_max|min|16777216|allow socket receive buffers to autotune up to 16 MiB (1 MiB bodies, long fat networks)"
  "net.core.wmem_max|min|16777216|allow socket send buffers to autotune up to 16 MiB"
  "net.ipv4.tcp_rmem|min|4096 131072 16777216|TCP receive buffer min/default/max"
  "net.ipv4.tcp_wmem|min|4096 65536 16777216|TCP send buffer min/default/max"
  "fs.file-max|min|2097152|system-wide open files: two per proxied connection, four while splicing"
  "fs.nr_open|min|2097152|ceiling for a process's RLIMIT_NOFILE"
  "fs.pipe-user-pages-soft|exact|0|ktlb splices bodies through 256 KiB pipes; past this per-user page budget new pipes shrink to one page (0 = no soft limit)"
  "kernel.io_uring_disabled|exact|0|ktlb drives all socket I/O with io_uring (the key exists from Linux 6.6)"
)

mode=check out=""
case ${1:-} in
  ""|--check) mode=check ;;
  --apply) mode=apply ;;
  --write) mode=write; out=${2:?--write needs a file} ;;
  -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  *) echo "sysctl-tuning: unknown argument $1 (see --help)" >&2; exit 2 ;;
esac

current() { sysctl -n "$1" 2>/dev/null | tr '\t' ' ' | tr -s ' '; }

# satisfies KIND CURRENT WANT: field by field for "min"/"max" (tcp_rmem has three).
satisfies() {
  local kind=$1 i
  local -a cur want
  read -r -a cur <<<"$2"
  read -r -a want <<<"$3"
  [[ $kind == exact ]] && { [[ "${cur[*]}" == "${want[*]}" ]]; return; }
  ((${#cur[@]} == ${#want[@]})) || return 1
  for i in "${!want[@]}"; do
    if [[ $kind == min ]]; then ((cur[i] >= want[i])) || return 1; fi
    if [[ $kind == max ]]; then ((cur[i] <= want[i])) || return 1; fi
  done
}

if [[ $mode == write ]]; then
  {
    echo "# ktlb edge host settings (tools/sysctl-tuning.sh)"
    for s in "${settings[@]}"; do
      IFS='|' read -r key kind want why <<<"$s"
      cur=$(current "$key")
      # Never write a value worse than what this host already has.
      [[ -n $cur ]] && satisfies "$kind" "$cur" "$want" && want=$cur
      echo "# $why ($kind)"
      echo "$key = $want"
    done
  } >"$out"
  echo "wrote $out (load with: sysctl --system)"
  if [[ $out == /etc/* ]]; then
    echo tls >/etc/modules-load.d/ktlb-tls.conf
    echo "wrote /etc/modules-load.d/ktlb-tls.conf (kernel TLS module at boot)"
  fi
  exit 0
fi

printf '%-36s %-24s %-24s %s\n' KEY CURRENT RECOMMENDED ""
for s in "${settings[@]}"; do
  IFS='|' read -r key kind want why <<<"$s"
  cur=$(current "$key")
  if [[ -z $cur ]]; then
    printf '%-36s %-24s %-24s %s\n' "$key" "(absent)" "$want" "skip: not in this kernel"
    continue
  fi
  mark=ok
  satisfies "$kind" "$cur" "$want" || mark=differs
  if [[ $mode == apply && $mark == differs ]]; then
    if sysctl -q -w "$key=$want" >/dev/null 2>&1; then mark=applied; else mark="apply failed"; fi
  fi
  printf '%-36s %-24s %-24s %s\n' "$key" "$cur" "$want" "$mark"
done

# Kernel TLS: the module must be loadable for record crypto to move to the kernel.
if [[ -e /sys/module/tls ]]; then
  echo "tls module: loaded (kTLS available)"
elif modprobe -n tls >/dev/null 2>&1; then
  echo "tls module: not loaded, loadable (ktlb's first TCP_ULP loads it; or: modprobe tls)"
else
  echo "tls module: not available in this kernel (CONFIG_TLS off): ktlb uses userspace TLS"
fi
echo "open files (this shell): soft $(ulimit -Sn), hard $(ulimit -Hn); ktlb raises soft to hard"
