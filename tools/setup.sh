#!/usr/bin/env bash
# Installs every Debian package ktlb's build, tests and benchmarks need.
# Idempotent: packages already present are skipped, apt-get update runs at most once.
set -euo pipefail

PKGS=(
  build-essential cmake pkg-config ninja-build clang libclang-rt-14-dev
  libssl-dev openssl liburing-dev node-llhttp libabsl-dev libnghttp2-dev libbpf-dev
  libtomlplusplus-dev libsystemd-dev libgtest-dev libgmock-dev libbenchmark-dev
  curl wrk nghttp2-client nginx-light libnginx-mod-stream haproxy h2o procps iproute2 python3 util-linux
  # adversarial HTTP/2 and WebSocket clients for the integration tests
  python3-h2 python3-websockets
  # the namespace fleet test's L4 balancer (DNAT + numgen map in a router namespace)
  nftables
  # kTLS guest harness
  qemu-system-x86 busybox-static cpio kmod
)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  [[ $(id -u) -ne 0 ]] && SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The distro's nginx/haproxy services are not ours to run; the bench starts its own.
  for svc in nginx haproxy h2o; do
    $SUDO systemctl disable --now "$svc" >/dev/null 2>&1 || true
    $SUDO service "$svc" stop >/dev/null 2>&1 || true
  done
fi
echo "setup: all packages present"
