#!/bin/bash
# Boots Debian's kernel under qemu (TCG) with the host root read-only over 9p and WORKDIR at
# /tmp/work; the guest runs WORKDIR/test.sh. Exit 0 when the guest's test exited 0.
# usage: run-guest.sh WORKDIR [timeout_s]
#   env: SMP (default 1), MEM (MiB, default 1024), DISK (a raw image the guest sees as virtio
#   disk /dev/vda; none by default)
set -u
WORK=$(readlink -f "$1"); TMO=${2:-300}
HERE=$(dirname "$(readlink -f "$0")")
KV=${KV:-$(ls /lib/modules | grep -m1 -- '-amd64$')}
INITRD=${INITRD:-/var/tmp/nvmf-tgt-linux-host-initramfs.cpio.gz}
[ -s "$INITRD" ] || "$HERE/mkinitramfs.sh" "$INITRD" >/dev/null
cp "$HERE/guest-init.sh" "$WORK/guest-init.sh"; rm -f "$WORK/rc" "$WORK/test.log"
disk=()
[ -z "${DISK:-}" ] || disk=(-drive "file=$(readlink -f "$DISK"),if=virtio,format=raw")
timeout --foreground -k 5 "$TMO" qemu-system-x86_64 -accel tcg,thread=multi,tb-size=512 -cpu max \
  -smp "${SMP:-1}" -m "${MEM:-1024}" -nographic -no-reboot -monitor none -serial stdio \
  -kernel "/boot/vmlinuz-$KV" -initrd "$INITRD" \
  -append "console=ttyS0 quiet loglevel=4 panic=-1 mitigations=off nokaslr tsc=reliable" \
  -fsdev local,id=r,path=/,security_model=none,readonly=on,multidevs=remap -device virtio-9p-pci,fsdev=r,mount_tag=hostroot \
  -fsdev local,id=w,path="$WORK",security_model=none,multidevs=remap -device virtio-9p-pci,fsdev=w,mount_tag=work \
  -netdev user,id=n0 -device virtio-net-pci,netdev=n0,romfile= "${disk[@]}" < /dev/null > "$WORK/console.log" 2>&1
[ "$(cat "$WORK/rc" 2>/dev/null)" = 0 ]
