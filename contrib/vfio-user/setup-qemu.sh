#!/bin/bash
# Makes the QEMU that has a vfio-user client (`-device vfio-user-pci`, QEMU >= 10.1): a Debian
# trixie chroot with qemu-system-x86 from trixie-backports (Debian 12's qemu 7.2 has none).
# Idempotent: a chroot whose QEMU is new enough is reused as it is. Run as root.
# usage: setup-qemu.sh          env: QEMU_CHROOT (default /var/tmp/nvmf-tgt-qemu-trixie), MIRROR
set -euo pipefail
ROOT=${QEMU_CHROOT:-/var/tmp/nvmf-tgt-qemu-trixie}
LOG=$ROOT.log
NEW=$ROOT.new

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
# Never delete a tree that still has something mounted in it (a bind of / would go with it).
remove_tree() {
  local dir=$1
  [ -e "$dir" ] || return 0
  if findmnt -rn -o TARGET | awk -v d="$dir" '$0 == d || index($0, d "/") == 1 { found = 1 } END { exit !found }'; then
    echo "setup-qemu: $dir has mounts in it; unmount them first:" >&2
    findmnt -rn -o TARGET | grep -F "$dir" >&2
    exit 1
  fi
  rm -rf --one-file-system "$dir"
}
report() { echo "setup-qemu: $ROOT: $(chroot "$ROOT" /usr/bin/qemu-system-x86_64 --version | head -1)"; }

if v=$(qemu_version "$ROOT") && new_enough "$v"; then
  report
  exit 0
fi
[ "$(id -u)" = 0 ] || { echo "setup-qemu: run as root (debootstrap and chroot)" >&2; exit 1; }

# The mirror this machine's apt already uses (deb822 sources first, then sources.list).
if [ -z "${MIRROR:-}" ]; then
  MIRROR=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/*.sources 2>/dev/null | tr ' ' '\n' | grep -v -m1 -e security -e '^$' || true)
fi
if [ -z "${MIRROR:-}" ]; then
  MIRROR=$(awk '$1 == "deb" && $2 !~ /security/ { print $2; exit }' /etc/apt/sources.list 2>/dev/null || true)
fi
[ -n "${MIRROR:-}" ] || { echo "setup-qemu: no Debian mirror found in apt's sources; set MIRROR" >&2; exit 1; }

if ! command -v debootstrap >/dev/null; then
  echo "setup-qemu: installing debootstrap"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -qq debootstrap >/dev/null
fi

T0=$(date +%s)
echo "setup-qemu: building $ROOT from $MIRROR (log: $LOG)"
: > "$LOG"
remove_tree "$NEW"
fail() {
  echo "setup-qemu: $1 failed; the last lines of $LOG:" >&2
  tail -20 "$LOG" >&2
  exit 1
}
# debootstrap and apt inside the chroot run in a private mount namespace: whatever they mount
# (/proc, /sys) goes away with them, even when a timeout kills them.
inside() { unshare --mount --propagation private -- "$@" >> "$LOG" 2>&1; }
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
