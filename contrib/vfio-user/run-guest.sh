#!/bin/bash
# Boots Debian's kernel (the host's own, as contrib/linux-host does) under TCG with the chroot's
# QEMU (setup-qemu.sh), a vfio-user-pci device on SOCKET, the host root read-only over 9p and
# WORKDIR at /tmp/work; the guest runs WORKDIR/test.sh and leaves rc and test.log in WORKDIR,
# the console goes to WORKDIR/console.log. Exit 0 when the guest's test exited 0.
# SOCKET "none" boots without the device; "qemu-nvme" gives the guest QEMU's own emulated NVMe
# controller instead (on WORKDIR/qemu-nvme.img, 128 MiB, serial QEMU-NVME-0001), to try the
# guest checks against a controller known to work. Run as root.
# usage: run-guest.sh WORKDIR SOCKET [timeout_s]
#   env: SMP (default 1), MEM in MiB (default 1024), QEMU_CHROOT, KV, INITRD, APPEND (kernel
#   command line extras), VFU_MSG_TIMEOUT (ms QEMU waits for a vfio-user reply; QEMU's default 5000)
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: run-guest.sh WORKDIR SOCKET [timeout_s]" >&2; exit 2; }
WORK=$(readlink -f "$1"); SOCKET=$2; TMO=${3:-300}
HERE=$(dirname "$(readlink -f "$0")")
ROOT=${QEMU_CHROOT:-/var/tmp/nvmf-tgt-qemu-trixie}
KV=${KV:-$(find /lib/modules -mindepth 1 -maxdepth 1 -name '*-amd64' -printf '%f\n' 2>/dev/null | sort -V | tail -1 || true)}
INITRD=${INITRD:-/var/tmp/nvmf-tgt-linux-host-initramfs.cpio.gz}
MEM=${MEM:-1024}
[ -d "$WORK" ] || { echo "run-guest: $1 is not a directory" >&2; exit 2; }
[ -f "/boot/vmlinuz-${KV:-none}" ] || { echo "run-guest: no Debian kernel in /boot (contrib/linux-host/install-deps.sh installs it)" >&2; exit 2; }
[ -x "$ROOT/usr/bin/qemu-system-x86_64" ] || { echo "run-guest: no QEMU in $ROOT; run contrib/vfio-user/setup-qemu.sh" >&2; exit 2; }
if [ "$SOCKET" != none ] && [ "$SOCKET" != qemu-nvme ]; then
  SOCKET=$(readlink -f "$SOCKET")
  [ -S "$SOCKET" ] || { echo "run-guest: $SOCKET is not a socket" >&2; exit 2; }
fi

# Everything below runs in a private mount namespace: the mounts are torn down by the trap,
# and would vanish with the namespace even if this script were killed.
if [ -z "${NVMF_VFU_PRIVATE_NS:-}" ]; then
  exec env NVMF_VFU_PRIVATE_NS=1 unshare --mount --propagation private -- "$0" "$@"
fi

# The initramfs (9p modules for KV, then WORKDIR/guest-init.sh) is contrib/linux-host's.
[ -s "$INITRD" ] || "$HERE/../linux-host/mkinitramfs.sh" "$INITRD" >/dev/null
cp "$HERE/../linux-host/guest-init.sh" "$WORK/guest-init.sh"
rm -f "$WORK/rc" "$WORK/test.log"

# Inside the chroot: /run (a tmpfs) holds host/ (the host root, read-only, no submounts),
# work/ (WORKDIR), sock/ (SOCKET's directory), boot/ (kernel and initramfs copies).
R=$ROOT
mounted=()
mnt() { mount "$@"; mounted+=("${*: -1}"); }
teardown() {
  local i left
  for (( i = ${#mounted[@]} - 1; i >= 0; i-- )); do
    umount "${mounted[i]}" 2>/dev/null || umount -l "${mounted[i]}" ||
      echo "run-guest: cannot unmount ${mounted[i]}" >&2
  done
  mounted=()
  left=$(findmnt -rn -o TARGET | grep -F "$R/" || true)
  [ -z "$left" ] || echo "run-guest: still mounted: $left" >&2
}
qpid=""
trap teardown EXIT
trap '[ -z "$qpid" ] || kill -TERM "$qpid" 2>/dev/null; exit 143' TERM INT HUP

mnt -t tmpfs -o mode=0755,size=64m nvmf-tgt-run "$R/run"
mkdir -p "$R/run/host" "$R/run/work" "$R/run/sock" "$R/run/boot"
mnt --bind / "$R/run/host"
mount -o remount,bind,ro "$R/run/host"
mnt --bind "$WORK" "$R/run/work"
mnt -t proc proc "$R/proc"
mnt -t sysfs sysfs "$R/sys"
mnt --bind /dev "$R/dev"
cp "/boot/vmlinuz-$KV" "$R/run/boot/vmlinuz"
cp "$INITRD" "$R/run/boot/initrd"
device=()
if [ "$SOCKET" = qemu-nvme ]; then
  [ -f "$WORK/qemu-nvme.img" ] || truncate -s 128M "$WORK/qemu-nvme.img"
  device=(-drive "file=/run/work/qemu-nvme.img,if=none,id=nvm,format=raw,cache=none"
          -device "nvme,drive=nvm,serial=QEMU-NVME-0001")
elif [ "$SOCKET" != none ]; then
  mnt --bind "$(dirname "$SOCKET")" "$R/run/sock"
  opts=""
  [ -z "${VFU_MSG_TIMEOUT:-}" ] || opts=",\"x-msg-timeout\":$VFU_MSG_TIMEOUT"
  device=(-device "{\"driver\":\"vfio-user-pci\",\"socket\":{\"path\":\"/run/sock/$(basename "$SOCKET")\",\"type\":\"unix\"}$opts}")
fi

# Guest RAM is a shared memfd: the vfio-user server maps it from the fds of DMA_MAP.
T0=$(date +%s.%N)
qrc=0
timeout -k 5 "$TMO" chroot "$R" /usr/bin/qemu-system-x86_64 \
  -accel tcg,thread=multi,tb-size=512 -cpu max -smp "${SMP:-1}" -m "$MEM" \
  -object memory-backend-memfd,id=mem,size="${MEM}M",share=on -machine q35,memory-backend=mem \
  -nodefaults -nographic -no-reboot -monitor none -serial stdio \
  -kernel /run/boot/vmlinuz -initrd /run/boot/initrd \
  -append "console=ttyS0 quiet loglevel=4 panic=-1 mitigations=off nokaslr tsc=reliable ${APPEND:-}" \
  -fsdev local,id=r,path=/run/host,security_model=none,readonly=on,multidevs=remap -device virtio-9p-pci,fsdev=r,mount_tag=hostroot \
  -fsdev local,id=w,path=/run/work,security_model=none,multidevs=remap -device virtio-9p-pci,fsdev=w,mount_tag=work \
  "${device[@]}" < /dev/null > "$WORK/console.log" 2>&1 &
qpid=$!
wait "$qpid" || qrc=$?
qpid=""
secs=$(awk -v t0="$T0" -v t1="$(date +%s.%N)" 'BEGIN { printf "%.1f", t1 - t0 }')
rc=$(cat "$WORK/rc" 2>/dev/null || echo none)
case $qrc in
  0) echo "run-guest: guest ran ${secs}s, test exit $rc";;
  124|137) echo "run-guest: guest killed after ${TMO}s (timeout), test exit $rc; see $WORK/console.log";;
  *) echo "run-guest: qemu exited $qrc after ${secs}s, test exit $rc; see $WORK/console.log";;
esac
[ "$rc" = 0 ]
