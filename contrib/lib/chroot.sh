# shellcheck shell=bash
# Debian chroots the harnesses build (sourced by bash, as root): the mirror this machine's apt
# uses, removing a tree only when nothing is mounted in it, and running debootstrap or apt in
# a private mount namespace. Used by contrib/vfio-user/setup-qemu.sh (the QEMU 11 chroot) and
# contrib/deb/test-package.sh (a Debian 12 root the package is installed into). Each caller
# sets LOG (where the commands' output goes) and TAG (its name in messages) first.

# The mirror this machine's apt already uses (deb822 sources first, then sources.list), or
# $MIRROR when set.
debian_mirror() {
  local m=${MIRROR:-}
  if [ -z "$m" ]; then
    m=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/*.sources 2>/dev/null | tr ' ' '\n' | grep -v -m1 -e security -e '^$' || true)
  fi
  if [ -z "$m" ]; then
    m=$(awk '$1 == "deb" && $2 !~ /security/ { print $2; exit }' /etc/apt/sources.list 2>/dev/null || true)
  fi
  [ -n "$m" ] || { echo "$TAG: no Debian mirror found in apt's sources; set MIRROR" >&2; return 1; }
  echo "$m"
}

# Never delete a tree that still has something mounted in it (a bind of / would go with it).
remove_tree() {
  local dir=$1
  [ -e "$dir" ] || return 0
  if findmnt -rn -o TARGET | awk -v d="$dir" '$0 == d || index($0, d "/") == 1 { found = 1 } END { exit !found }'; then
    echo "$TAG: $dir has mounts in it; unmount them first:" >&2
    findmnt -rn -o TARGET | grep -F "$dir" >&2
    exit 1
  fi
  rm -rf --one-file-system "$dir"
}

# Installs debootstrap when it is missing.
need_debootstrap() {
  command -v debootstrap >/dev/null && return 0
  echo "$TAG: installing debootstrap"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -qq debootstrap >/dev/null
}

# Runs a command in a private mount namespace, output to $LOG: whatever it mounts (/proc,
# /sys) goes away with it, even when a timeout kills it.
inside() { unshare --mount --propagation private -- "$@" >> "$LOG" 2>&1; }

# Says what failed and shows the end of $LOG, then exits.
fail() {
  echo "$TAG: $1 failed; the last lines of $LOG:" >&2
  tail -20 "$LOG" >&2
  exit 1
}
