#!/bin/bash
# Makes the QEMU that has a vfio-user client (`-device vfio-user-pci`, QEMU >= 10.1): a Debian
# trixie chroot with qemu-system-x86 from trixie-backports (Debian 12's qemu 7.2 has none).
# Idempotent: a chroot whose QEMU is new enough is reused as it is. Run as root.
# usage: setup-qemu.sh          env: QEMU_CHROOT (default /var/tmp/nvmf-tgt-qemu-trixie), MIRROR
set -euo pipefail
ROOT=${QEMU_CHROOT:-/var/tmp/nvmf-tgt-qemu-trixie}
LOG=$ROOT.log
NEW=$ROOT.new
TAG=setup-qemu
# debian_mirror, remove_tree, need_debootstrap, inside, fail
# shellcheck source=contrib/lib/chroot.sh
. "$(dirname "$(readlink -f "$0")")/../lib/chroot.sh"

# "QEMU emulator version 11.1.3 (Debian ...)" -> 11.1; nothing when there is no usable QEMU.
qemu_version() {
  [ -x "$1/usr/bin/qemu-system-x86_64" ] || return 1
  chroot "$1" /usr/bin/qemu-system-x86_64 --version 2>/dev/null |
    sed -n '1s/^QEMU emulator version \([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p'
}
new_enough() {
  local major=${1%%.*} minor=${1#*.}
  [ -n "$1" ] && { [ "$major" -gt 10 ] || { [ "$major" -eq 10 ] && [ "$minor" -ge 1 ]; }; }
}
report() { echo "setup-qemu: $ROOT: $(chroot "$ROOT" /usr/bin/qemu-system-x86_64 --version | head -1)"; }

if v=$(qemu_version "$ROOT") && new_enough "$v"; then
  report
  exit 0
fi
[ "$(id -u)" = 0 ] || { echo "setup-qemu: run as root (debootstrap and chroot)" >&2; exit 1; }

MIRROR=$(debian_mirror)
need_debootstrap

T0=$(date +%s)
echo "setup-qemu: building $ROOT from $MIRROR (log: $LOG)"
: > "$LOG"
remove_tree "$NEW"
inside timeout 900 debootstrap --variant=minbase trixie "$NEW" "$MIRROR" || fail debootstrap
echo "setup-qemu: debootstrap done in $(( $(date +%s) - T0 )) s"
echo "deb $MIRROR trixie-backports main" > "$NEW/etc/apt/sources.list.d/trixie-backports.list"
printf '#!/bin/sh\nexit 101\n' > "$NEW/usr/sbin/policy-rc.d"
chmod +x "$NEW/usr/sbin/policy-rc.d"
# shellcheck disable=SC2016 # expanded inside the chroot
apt_in_chroot='mount -t proc proc /proc && export DEBIAN_FRONTEND=noninteractive &&
  timeout 300 apt-get update &&
  timeout 900 apt-get install -y --no-install-recommends -t trixie-backports qemu-system-x86 &&
  apt-get clean'
inside chroot "$NEW" /bin/sh -c "$apt_in_chroot" || fail "apt-get install qemu-system-x86 in the chroot"
v=$(qemu_version "$NEW") || fail "qemu-system-x86_64 --version in the chroot"
new_enough "$v" || { echo "setup-qemu: trixie-backports gave QEMU $v, older than 10.1" >&2; exit 1; }
remove_tree "$ROOT"
mv "$NEW" "$ROOT"
echo "setup-qemu: chroot ready in $(( $(date +%s) - T0 )) s, $(du -sh --one-file-system "$ROOT" | cut -f1)"
report
