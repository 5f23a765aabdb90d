#!/bin/bash
# Builds a small initramfs: static busybox and the modules that mount the host's root over
# virtio-9p. Everything else the guest runs (nvme-cli, fio, the nvme-tcp module) comes from the
# host's own filesystem through 9p.
set -euo pipefail
KV=${KV:-$(ls /lib/modules | grep -m1 -- '-amd64$')}
OUT=${1:?usage: mkinitramfs.sh OUTPUT}
D=$(mktemp -d)
trap 'rm -rf "$D"' EXIT
mkdir -p "$D"/{bin,mods,proc,sys,dev,newroot}
cp /bin/busybox "$D/bin/busybox"
for a in sh mount mkdir insmod switch_root echo cat sleep poweroff; do ln -s busybox "$D/bin/$a"; done
: > "$D/mods/order"
for m in virtio_pci 9pnet_virtio 9p; do
  modprobe -S "$KV" --show-depends "$m" | awk '$1=="insmod"{print $2}'
done | awk '!seen[$0]++' | while read -r ko; do
  cp "$ko" "$D/mods/"; basename "$ko" >> "$D/mods/order"
done
cat > "$D/init" <<'EOI'
#!/bin/sh
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(cat /mods/order); do insmod /mods/$m || echo "insmod $m failed"; done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose hostroot /newroot || { echo "9p root mount failed"; poweroff -f; }
mount -t tmpfs -o mode=1777 tmp /newroot/tmp
mount -t tmpfs run /newroot/run
mount -t tmpfs vartmp /newroot/var/tmp
mkdir -p /newroot/tmp/work
mount -t 9p -o trans=virtio,version=9p2000.L,rw,msize=262144 work /newroot/tmp/work || echo "work share not mounted"
mount --move /proc /newroot/proc; mount --move /sys /newroot/sys; mount --move /dev /newroot/dev
exec switch_root /newroot /bin/sh /tmp/work/guest-init.sh
EOI
chmod +x "$D/init"
(cd "$D" && find . | cpio -o -H newc --quiet | gzip -1) > "$OUT"
echo "built $OUT for $KV"
