#!/bin/bash
# Builds the Debian package and installs it where nothing else is: a fresh Debian 12 root
# (debootstrap, with systemd 252 and the package's libraries; built once and copied for each
# run), then checks what a user of the package relies on: `nvmf-tgt check` of the installed
# /etc/nvmf/target.toml, --version naming the commit, the schema, man pages and completions,
# the unit with the systemd-252 drop-in postinst chose, the conffile kept on remove and gone on
# purge. Run as root.
# usage: contrib/deb/test-package.sh     env: DEB_CHROOT (default /var/tmp/nvmf-tgt-deb-bookworm), MIRROR
set -euo pipefail
HERE=$(dirname "$(readlink -f "$0")")
TOP=$(cd "$HERE/../.." && pwd)
BASE=${DEB_CHROOT:-/var/tmp/nvmf-tgt-deb-bookworm}
LOG=/var/tmp/nvmf-tgt-deb-test.log
TAG=deb
# debian_mirror, remove_tree, need_debootstrap, inside, fail
# shellcheck source=contrib/lib/chroot.sh
. "$TOP/contrib/lib/chroot.sh"
[ "$(id -u)" = 0 ] || { echo "deb: run as root (debootstrap and chroot)" >&2; exit 1; }
: > "$LOG"

DEB=$("$HERE/build.sh" | tail -1)
[ -f "$DEB" ] || { echo "deb: build.sh gave no package ($DEB)" >&2; exit 1; }
echo "deb: built $DEB ($(du -h "$DEB" | cut -f1))"

if [ ! -x "$BASE/usr/bin/systemctl" ]; then
  MIRROR=$(debian_mirror)
  need_debootstrap
  T0=$(date +%s)
  echo "deb: building $BASE from $MIRROR (log: $LOG)"
  remove_tree "$BASE.new"
  inside timeout 900 debootstrap --variant=minbase --include=systemd,libibverbs1,librdmacm1 \
    bookworm "$BASE.new" "$MIRROR" || fail debootstrap
  remove_tree "$BASE"
  mv "$BASE.new" "$BASE"
  echo "deb: Debian 12 root ready in $(( $(date +%s) - T0 )) s"
fi

ROOT=$(mktemp -d /var/tmp/nvmf-tgt-deb-test.XXXXXX)
cleanup() { remove_tree "$ROOT"; }
trap cleanup EXIT
cp -a "$BASE/." "$ROOT/"
cp "$DEB" "$ROOT/tmp/nvmf-tgt.deb"
in_root() { unshare --mount --propagation private -- chroot "$ROOT" "$@"; }
problems=()
check() { local what=$1; shift; if "$@" >> "$LOG" 2>&1; then echo "deb: ok: $what"; else echo "deb: FAILED: $what"; problems+=("$what"); fi; }

check "dpkg -i" in_root dpkg -i /tmp/nvmf-tgt.deb
check "nvmf-tgt check -c /etc/nvmf/target.toml" in_root /bin/sh -c 'mount -t proc proc /proc && nvmf-tgt check -c /etc/nvmf/target.toml'
commit=$(git -C "$TOP" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
check "--version names commit $commit" in_root /bin/sh -c "nvmf-tgt --version | grep -qF 'commit $commit' && nvmf-perf --version | grep -qF 'commit $commit'"
check "the declaration's schema" test -s "$ROOT/usr/share/nvmf-tgt/target.schema.json"
check "man pages" test -s "$ROOT/usr/share/man/man1/nvmf-tgt.1.gz" -a -s "$ROOT/usr/share/man/man1/nvmf-tgt-check.1.gz" -a -s "$ROOT/usr/share/man/man1/nvmf-perf.1.gz"
check "completions" test -s "$ROOT/usr/share/bash-completion/completions/nvmf-tgt" -a -s "$ROOT/usr/share/zsh/vendor-completions/_nvmf-tgt" -a -s "$ROOT/usr/share/fish/vendor_completions.d/nvmf-perf.fish"
check "the conffile" in_root /bin/sh -c 'dpkg-query -W -f="\${Conffiles}" nvmf-tgt | grep -q /etc/nvmf/target.toml'
check "the unit" grep -q '^ExecStart=/usr/bin/nvmf-tgt run -c /etc/nvmf/target.toml' "$ROOT/lib/systemd/system/nvmf-tgt.service"
check "the systemd 252 drop-in (Type=notify)" grep -q '^Type=notify$' "$ROOT/lib/systemd/system/nvmf-tgt.service.d/systemd-before-253.conf"
check "systemd accepts the unit" in_root systemd-analyze verify --man=no /lib/systemd/system/nvmf-tgt.service
check "dpkg -r keeps the declaration" in_root /bin/sh -c 'dpkg -r nvmf-tgt && test -f /etc/nvmf/target.toml && ! test -e /usr/bin/nvmf-tgt && ! test -e /lib/systemd/system/nvmf-tgt.service.d'
check "dpkg -P removes it" in_root /bin/sh -c 'dpkg -P nvmf-tgt && ! test -e /etc/nvmf/target.toml'

if [ ${#problems[@]} -eq 0 ]; then
  echo "PASS deb: $(basename "$DEB") installs into Debian 12 and checks its declaration"
else
  echo "FAIL deb: ${problems[*]} (see $LOG)"
  tail -30 "$LOG"
  exit 1
fi
