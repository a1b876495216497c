#!/usr/bin/env bash
# Boots Debian's stock kernel (which has net/tls/tls.ko) in qemu with a busybox initramfs
# and runs one test scenario inside it, so kTLS can be tested on hosts whose kernel has no
# CONFIG_TLS. See README.md in this directory for the scenario contract.
#
# Usage: run.sh --scenario SCRIPT [--bin PATH]... [--file PATH]... [options]
#   --scenario SCRIPT   busybox-sh script run inside the guest (required)
#   --bin PATH          executable to put in the guest's $KTLB_BIN_DIR (on PATH), with all
#                       its shared libraries and the dynamic loader; repeatable. Lines
#                       "# ktls-vm-bin: PATH" in the scenario add binaries the same way.
#   --file PATH         data file copied to the guest's $KTLB_FILES_DIR; repeatable. Lines
#                       "# ktls-vm-certs: NAME..." in the scenario add files of the test PKI
#                       (tools/gen-certs.sh, generated once into CACHE/certs)
#   --timeout SECS      hard limit for the whole qemu run (default 600)
#   --scenario-timeout SECS  limit for the scenario inside the guest (default: timeout-120)
#   --log FILE          serial console log (default: CACHE/logs/<scenario>.log)
#   --cache DIR         kernel/initramfs cache (default $KTLB_VM_CACHE or <repo>/build-ktls-vm)
#   --smp N, --mem MB   guest CPUs (default 2) and memory (default 1024)
#   --accel ACCEL       qemu accelerator (default $KTLB_VM_ACCEL or tcg)
#   --cpu MODEL         qemu CPU model (default max)
#   --quiet             do not stream the console; print it only on failure
#   --keep              keep the initramfs staging directory
#
# Exit status: 0 PASS, 1 scenario FAIL, 2 usage or setup error, 3 guest gave no result
# (timeout, kernel panic, init crash).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)

die() { echo "ktls-vm: $*" >&2; exit 2; }
log() { echo "ktls-vm: $*" >&2; }

scenario="" cache=${KTLB_VM_CACHE:-$repo/build-ktls-vm} logfile="" timeout_s=600
scenario_timeout="" smp=2 mem=1024 accel=${KTLB_VM_ACCEL:-tcg} cpu="" quiet=0 keep=0
bins=() files=()
while (($#)); do
  case $1 in
    --scenario) scenario=${2:?}; shift 2 ;;
    --bin) bins+=("${2:?}"); shift 2 ;;
    --file) files+=("${2:?}"); shift 2 ;;
    --timeout) timeout_s=${2:?}; shift 2 ;;
    --scenario-timeout) scenario_timeout=${2:?}; shift 2 ;;
    --log) logfile=${2:?}; shift 2 ;;
    --cache) cache=${2:?}; shift 2 ;;
    --smp) smp=${2:?}; shift 2 ;;
    --mem) mem=${2:?}; shift 2 ;;
    --accel) accel=${2:?}; shift 2 ;;
    --cpu) cpu=${2:?}; shift 2 ;;
    --quiet) quiet=1; shift ;;
    --keep) keep=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done
[[ -n $scenario ]] || die "--scenario is required"
[[ -f $scenario ]] || die "scenario not found: $scenario"
[[ $timeout_s =~ ^[0-9]+$ ]] || die "--timeout must be seconds"
if [[ -z $scenario_timeout ]]; then
  scenario_timeout=$((timeout_s > 240 ? timeout_s - 120 : timeout_s / 2))
fi
for tool in qemu-system-x86_64 cpio gzip depmod timeout; do
  command -v "$tool" >/dev/null || die "missing $tool (run tools/setup.sh)"
done
busybox=$(command -v busybox || true)
[[ -n $busybox ]] || die "missing busybox (package busybox-static)"
if ldd "$busybox" >/dev/null 2>&1; then
  die "$busybox is dynamically linked; install busybox-static"
fi

mkdir -p "$cache"
cache=$(cd "$cache" && pwd)
t_setup=$(date +%s.%N)

# --- kernel ------------------------------------------------------------------------------
kroot=$("$here/fetch-kernel.sh" "$cache" | tail -n1)
kinfo="$(dirname "$kroot")/info"
kver=$(sed -n 's/^kver=//p' "$kinfo")
kpkg=$(sed -n 's/^pkg=//p' "$kinfo")
kpkgver=$(sed -n 's/^version=//p' "$kinfo")
vmlinuz="$kroot/boot/vmlinuz-$kver"
kmods="$kroot/lib/modules/$kver"
[[ -s $kmods/modules.dep ]] || die "no modules.dep in $kmods; remove $(dirname "$kroot") and retry"

# --- staging tree --------------------------------------------------------------------------
mkdir -p "$cache/work"
stage=$(mktemp -d "$cache/work/initramfs.XXXXXX")
# shellcheck disable=SC2317  # called from the EXIT trap
cleanup() { ((keep)) || rm -rf "$stage"; }
trap cleanup EXIT
log "staging initramfs in $stage"

# Merged-/usr layout as on Debian 12, so the paths ldd reports are valid in the guest.
mkdir -p "$stage"/{bin,sbin,dev,proc,sys,tmp,run,root,etc,usr/bin,usr/sbin,usr/lib,usr/lib64}
mkdir -p "$stage"/opt/ktlb/{bin,files,scenario,lib}
ln -s usr/lib "$stage/lib"
ln -s usr/lib64 "$stage/lib64"
chmod 1777 "$stage/tmp"
cp "$busybox" "$stage/bin/busybox"
ln -s busybox "$stage/bin/sh"   # for /init's #!; the rest comes from `busybox --install -s`
# A console node lets the kernel give /init its stdio; /init falls back to devtmpfs.
mknod -m 600 "$stage/dev/console" c 5 1 2>/dev/null || true
mknod -m 666 "$stage/dev/null" c 1 3 2>/dev/null || true

cat >"$stage/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat >"$stage/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
EOF
cat >"$stage/etc/hosts" <<'EOF'
127.0.0.1 localhost ktlb-vm
::1 localhost ip6-localhost ip6-loopback
EOF
echo "hosts: files" >"$stage/etc/nsswitch.conf"
# OpenSSL reads OPENSSLDIR/openssl.cnf (Debian: /usr/lib/ssl -> /etc/ssl) at startup.
if [[ -f /etc/ssl/openssl.cnf ]]; then
  mkdir -p "$stage/etc/ssl" "$stage/usr/lib/ssl"
  cp /etc/ssl/openssl.cnf "$stage/etc/ssl/openssl.cnf"
  ln -s /etc/ssl/openssl.cnf "$stage/usr/lib/ssl/openssl.cnf"
fi

# --- kernel modules ------------------------------------------------------------------------
# Module names as files (dashes) or names (underscores); `tls` is required, the rest are
# the AEADs kTLS can use (AES-GCM, AES-CCM, ChaCha20-Poly1305) in generic and x86 forms.
want_modules=(tls gcm ghash-generic ghash-clmulni-intel aesni-intel ctr ccm
  chacha20poly1305 chacha_generic chacha-x86_64 poly1305_generic poly1305-x86_64 seqiv)
# norm NAME: module name of a path or name, dashes as underscores, in $REPLY. No
# command substitution: this runs for each of modules.dep's ~4000 lines, and a fork
# per line took minutes on a loaded host.
norm() { local n=${1##*/}; n=${n%%.ko*}; REPLY=${n//-/_}; }
declare -A depline=()
while IFS= read -r line; do
  key=${line%%:*}
  norm "$key"
  depline[$REPLY]=$line
done <"$kmods/modules.dep"
declare -A picked=()
load_list=()
for m in "${want_modules[@]}"; do
  norm "$m"
  n=$REPLY
  if [[ -z ${depline[$n]:-} ]]; then
    if grep -q "/${m//_/[-_]}\.ko" "$kmods/modules.builtin" 2>/dev/null; then continue; fi
    [[ $n == tls ]] && die "kernel $kver has no tls module"
    log "note: module $m not in kernel $kver, skipped"
    continue
  fi
  load_list+=("$n")
  line=${depline[$n]}
  for f in ${line%%:*} ${line#*:}; do picked[$f]=1; done
done
smod="$stage/lib/modules/$kver"
mkdir -p "$smod"
for f in "${!picked[@]}"; do
  mkdir -p "$smod/$(dirname "$f")"
  case $f in
    # busybox modprobe cannot be relied on to decompress; store plain .ko files.
    *.ko.xz) xz -dc "$kmods/$f" >"$smod/${f%.xz}" ;;
    *.ko.zst) zstd -qdc "$kmods/$f" >"$smod/${f%.zst}" ;;
    *.ko.gz) gzip -dc "$kmods/$f" >"$smod/${f%.gz}" ;;
    *) cp "$kmods/$f" "$smod/$f" ;;
  esac
done
for f in modules.order modules.builtin modules.builtin.modinfo; do
  [[ -f $kmods/$f ]] && cp "$kmods/$f" "$smod/$f"
done
depmod -b "$stage" "$kver"

# --- binaries and their shared libraries ---------------------------------------------------
while IFS= read -r b; do bins+=("$b"); done < <(
  sed -n 's/^#[[:space:]]*ktls-vm-bin:[[:space:]]*\([^[:space:]]*\).*/\1/p' "$scenario")

copy_lib() { # copy_lib PATH: the file PATH resolves to, stored at PATH in the guest
  local p=$1
  [[ -e $stage$p ]] && return 0
  mkdir -p "$stage$(dirname "$p")"
  cp -L "$p" "$stage$p"
}
declare -A seen_bin=()
for b in "${bins[@]}"; do
  [[ $b == */* ]] || b=$(command -v "$b" || echo "$b")
  [[ -f $b ]] || die "--bin not found: $b"
  name=$(basename "$b")
  if [[ -n ${seen_bin[$name]:-} ]]; then
    [[ ${seen_bin[$name]} == "$b" ]] && continue
    die "two binaries named $name: ${seen_bin[$name]} and $b"
  fi
  seen_bin[$name]=$b
  cp -L "$b" "$stage/opt/ktlb/bin/$name"
  chmod +x "$stage/opt/ktlb/bin/$name"
  if [[ $(head -c4 "$b" | od -An -c | tr -d ' ') != '177ELF' ]]; then
    log "note: $b is not ELF; it must run with busybox's sh"
    continue
  fi
  ldd_out=$(ldd "$b" 2>&1) || true
  if grep -q 'not a dynamic executable\|statically linked' <<<"$ldd_out"; then continue; fi
  if grep -q 'not found' <<<"$ldd_out"; then die "unresolved libraries for $b:"$'\n'"$ldd_out"; fi
  while read -r lib; do copy_lib "$lib"; done < <(
    sed -n -e 's/^.*=> \(\/[^ ]*\) (0x.*$/\1/p' -e 's/^[[:space:]]*\(\/[^ ]*\) (0x.*$/\1/p' <<<"$ldd_out")
done

# Test PKI: a line "# ktls-vm-certs: NAME..." asks for files made by tools/gen-certs.sh
# (e.g. ca.crt site.crt site.key); they are generated once into CACHE/certs and added to
# the --file list. flock: parallel runs must not mix two PKIs.
cert_names=$(sed -n 's/^#[[:space:]]*ktls-vm-certs:[[:space:]]*//p' "$scenario" | tr '\n' ' ')
if [[ -n ${cert_names// /} ]]; then
  certdir="$cache/certs"
  mkdir -p "$certdir"
  (flock 9 && "$repo/tools/gen-certs.sh" "$certdir" >/dev/null) 9>"$cache/certs.lock" ||
    die "tools/gen-certs.sh $certdir failed"
  for c in $cert_names; do files+=("$certdir/$c"); done
fi

for f in "${files[@]}"; do
  [[ -f $f ]] || die "--file not found: $f"
  cp -L "$f" "$stage/opt/ktlb/files/"
done
sname=$(basename "$scenario")
cp "$scenario" "$stage/opt/ktlb/scenario/$sname"
cp "$here/guest-lib.sh" "$stage/opt/ktlb/lib/guest-lib.sh"

cat >"$stage/etc/ktlb-vm.env" <<EOF
KTLB_VM_MODULES='${load_list[*]}'
KTLB_VM_SCENARIO=/opt/ktlb/scenario/$sname
KTLB_SCENARIO_TIMEOUT=$scenario_timeout
KTLB_VM_KERNEL_PKG='$kpkg $kpkgver'
EOF
cp "$here/init.sh" "$stage/init"
chmod 755 "$stage/init"

initrd="$cache/work/initrd-$$.cpio.gz"
(cd "$stage" && find . -print0 | LC_ALL=C sort -z |
  cpio --null -o -H newc --owner=0:0 --quiet | gzip -1) >"$initrd"
trap 'cleanup; rm -f "$initrd"' EXIT
log "initramfs $(du -h "$initrd" | cut -f1), kernel $kpkg $kpkgver ($kver)"
log "phase host-setup (kernel cache check, initramfs): $(awk -v s="$t_setup" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }') s"

# --- boot ----------------------------------------------------------------------------------
if [[ -z $logfile ]]; then
  mkdir -p "$cache/logs"
  logfile="$cache/logs/${sname%.sh}.log"
fi
mkdir -p "$(dirname "$logfile")"
accel_args=(-accel "$accel")
[[ -n $cpu ]] || cpu=max   # TCG's "max" emulates AES-NI, PCLMULQDQ and AVX2
qemu=(qemu-system-x86_64 "${accel_args[@]}" -cpu "$cpu" -m "$mem" -smp "$smp"
  -nodefaults -display none -monitor none -serial stdio -no-reboot
  -kernel "$vmlinuz" -initrd "$initrd"
  -append "console=ttyS0 panic=-1 quiet")
log "booting (hard timeout ${timeout_s}s, scenario timeout ${scenario_timeout}s): $sname"
start=$(date +%s.%N)
set +e
if ((quiet)); then
  timeout -k 10 "$timeout_s" "${qemu[@]}" </dev/null >"$logfile" 2>&1
else
  timeout -k 10 "$timeout_s" "${qemu[@]}" </dev/null 2>&1 | tee "$logfile"
fi
qrc=${PIPESTATUS[0]}
set -e
elapsed=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')

result=$(tr -d '\r' <"$logfile" | sed -n 's/^KTLB-VM-RESULT: //p' | tail -n1)
case $result in
  PASS) log "PASS $sname in ${elapsed}s (log: $logfile)"; exit 0 ;;
  FAIL*)
    ((quiet)) && cat "$logfile"
    log "FAIL $sname (${result#FAIL }) in ${elapsed}s (log: $logfile)"; exit 1 ;;
  *)
    ((quiet)) && cat "$logfile"
    if ((qrc == 124 || qrc == 137)); then
      log "NO RESULT: qemu killed after ${timeout_s}s (log: $logfile)"
    else
      log "NO RESULT: qemu exited $qrc after ${elapsed}s without a result line (log: $logfile)"
    fi
    exit 3 ;;
esac
