#!/usr/bin/env bash
# Fetches Debian's stock amd64 kernel (which, unlike many CI kernels, ships net/tls/tls.ko)
# and unpacks it into a cache directory for the kTLS guest harness (run.sh).
#
# Usage: fetch-kernel.sh [CACHE_DIR]
#   CACHE_DIR defaults to $KTLB_VM_CACHE, else <repo>/build-ktls-vm.
#   KTLB_VM_KERNEL_PKG overrides the package (e.g. linux-image-6.1.0-56-amd64).
#
# Result: CACHE_DIR/kernel/<pkg>_<version>/root holds the extracted package (with a
# generated modules.dep), <pkg>_<version>/info its name, version and kernel release, and
# CACHE_DIR/kernel/current is a symlink to it. Idempotent: nothing is downloaded or
# extracted when that directory is already complete. Prints the extracted root on stdout.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${1:-${KTLB_VM_CACHE:-$repo/build-ktls-vm}}
mkdir -p "$cache/kernel"
cache=$(cd "$cache" && pwd)
# The cache (~480 MB) must never be committed, wherever it lives.
[[ -e $cache/.gitignore ]] || echo '*' >"$cache/.gitignore"

log() { echo "fetch-kernel: $*" >&2; }

# The meta package's dependency names the ABI-versioned image, e.g. linux-image-6.1.0-56-amd64.
resolve_pkg() {
  apt-cache depends linux-image-amd64 2>/dev/null |
    sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-amd64\)$/\1/p' | head -n1
}

apt_updated=0
apt_update() {
  ((apt_updated)) && return 0
  apt_updated=1
  log "running apt-get update"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
}

candidate() {
  apt-cache policy "$1" 2>/dev/null | sed -n 's/^ *Candidate: //p' | grep -v '^(none)$' || true
}

# Offline fallback: if apt cannot name a kernel, reuse the last one fetched.
use_cached_or_die() {
  if [[ -f $cache/kernel/current/.complete ]]; then
    log "warning: $1; using the cached $(readlink "$cache/kernel/current")"
    echo "$cache/kernel/current/root"
    exit 0
  fi
  log "$1"
  exit 1
}

pkg=${KTLB_VM_KERNEL_PKG:-$(resolve_pkg)}
version=""
[[ -n $pkg ]] && version=$(candidate "$pkg")
if [[ -z $pkg || -z $version ]]; then
  apt_update || use_cached_or_die "apt-get update failed"
  pkg=${KTLB_VM_KERNEL_PKG:-$(resolve_pkg)}
  [[ -n $pkg ]] || use_cached_or_die "cannot resolve linux-image-amd64's kernel package"
  version=$(candidate "$pkg")
  [[ -n $version ]] || use_cached_or_die "no candidate version for $pkg"
fi

dest="$cache/kernel/${pkg}_${version}"
# Parallel runs (ctest -j) share the cache: one fetches, the others wait.
exec 9>"$cache/kernel/.lock"
flock 9
if [[ -f $dest/.complete ]]; then
  ln -sfn "$(basename "$dest")" "$cache/kernel/current"
  log "cached: $pkg $version"
  echo "$dest/root"
  exit 0
fi

dl="$cache/kernel/debs"
mkdir -p "$dl"
deb="$dl/${pkg}_${version//:/%3a}_amd64.deb"   # apt-get download's name for it
if [[ ! -f $deb ]]; then
  log "downloading $pkg=$version"
  # apt-get download writes into the working directory. As root, apt would drop to the
  # _apt user, which cannot write there, and warn; say up front that root downloads.
  apt_opts=(-q)
  [[ $(id -u) -eq 0 ]] && apt_opts+=(-o APT::Sandbox::User=root)
  if ! (cd "$dl" && apt-get download "${apt_opts[@]}" "$pkg=$version" >&2); then
    apt_update || true
    (cd "$dl" && apt-get download "${apt_opts[@]}" "$pkg=$version" >&2)
  fi
  [[ -f $deb ]] || { log "apt-get download did not produce $deb"; exit 1; }
fi

rm -rf "$dest"
mkdir -p "$dest"
log "extracting $(basename "$deb")"
dpkg-deb -x "$deb" "$dest/root"
kver=$(find "$dest/root/lib/modules" -mindepth 1 -maxdepth 1 -printf '%f\n' | head -n1)
[[ -f $dest/root/boot/vmlinuz-$kver ]] || { log "no vmlinuz-$kver in $deb"; exit 1; }
[[ -n $(find "$dest/root/lib/modules/$kver/kernel/net/tls" -name 'tls.ko*' 2>/dev/null) ]] ||
  { log "$deb has no net/tls/tls.ko"; exit 1; }
# The .deb ships no modules.dep (its postinst runs depmod); run.sh resolves dependencies
# from it, so generate it here once.
depmod -b "$dest/root" "$kver"
printf 'pkg=%s\nversion=%s\nkver=%s\n' "$pkg" "$version" "$kver" >"$dest/info"
touch "$dest/.complete"
rm -f "$deb"   # the extracted tree is the cache; the 70 MB .deb is not needed again
ln -sfn "$(basename "$dest")" "$cache/kernel/current"
log "ready: $pkg $version (kernel $kver)"
echo "$dest/root"
