#!/bin/sh
# /init of the kTLS guest (PID 1, busybox sh). Installed by run.sh; not run on the host.
# Sets up the minimal system, loads tls.ko and the AEAD modules, runs the scenario under a
# timeout, prints exactly one "KTLB-VM-RESULT: ..." line and powers the VM off.

/bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null
# The kernel may have started us without stdio if /dev/console was missing from the cpio.
exec </dev/console >/dev/console 2>&1
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s /bin
/bin/busybox --install -s /sbin   # request_module() runs /sbin/modprobe
export PATH=/opt/ktlb/bin:/bin:/sbin:/usr/bin:/usr/sbin
export HOME=/root

finish() { # finish RESULT...
  echo "KTLB-VM-RESULT: $*"
  sync
  poweroff -f
  sleep 5 # poweroff -f does not return; if it did, let the kernel panic (panic=-1 -> exit)
  exit 1
}

mount -t sysfs sysfs /sys
mount -t tmpfs -o mode=1777 tmpfs /tmp
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
hostname ktlb-vm
ip link set lo up || finish "FAIL setup-lo"

# shellcheck source=/dev/null  # written by run.sh
. /etc/ktlb-vm.env
echo "ktls-vm: kernel $(uname -r) ($KTLB_VM_KERNEL_PKG), $(nproc) cpu(s)"
for m in $KTLB_VM_MODULES; do
  if ! modprobe "$m"; then
    [ "$m" = tls ] && finish "FAIL setup-modprobe-tls"
    echo "ktls-vm: warning: modprobe $m failed"
  fi
done
[ -r /proc/net/tls_stat ] || finish "FAIL setup-no-tls_stat"
echo "ktls-vm: modules: $(cut -d' ' -f1 /proc/modules | tr '\n' ' ')"

export KTLB_VM=1
export KTLB_BIN_DIR=/opt/ktlb/bin
export KTLB_FILES_DIR=/opt/ktlb/files
export KTLB_VM_LIB=/opt/ktlb/lib/guest-lib.sh
export KTLB_TLS_STAT=/proc/net/tls_stat
export KTLB_WORK_DIR=/tmp/ktlb-work
export KTLB_SCENARIO_TIMEOUT
mkdir -p "$KTLB_WORK_DIR"
cd "$KTLB_WORK_DIR" || finish "FAIL setup-workdir"

t0=$(cut -d' ' -f1 /proc/uptime)
echo "ktls-vm: scenario $KTLB_VM_SCENARIO start (uptime ${t0}s)"
echo "phase guest-boot: $t0 s"
timeout "$KTLB_SCENARIO_TIMEOUT" sh "$KTLB_VM_SCENARIO"
rc=$?
t1=$(cut -d' ' -f1 /proc/uptime)
echo "ktls-vm: scenario end rc=$rc (uptime ${t1}s)"
echo "phase guest-scenario: $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s"
if [ "$rc" -eq 0 ]; then
  finish PASS
else
  finish "FAIL $rc"
fi
