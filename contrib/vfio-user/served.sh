#!/bin/bash
# Tells whether an nvmf-tgt binary serves vfio-user: runs it on a declaration with a vfiouser
# listener. Exit 0: it made the listener's socket (DIR/cntrl). Exit 1: it refused the listener
# as a transport this build does not serve. Exit 2: anything else (the reason is printed).
# usage: served.sh [NVMF_TGT]        (default target/release/nvmf-tgt)
set -euo pipefail
BIN=${1:-target/release/nvmf-tgt}
[ -x "$BIN" ] || { echo "served: no nvmf-tgt binary at $BIN" >&2; exit 2; }
D=$(mktemp -d /var/tmp/nvmf-tgt-vfio-user-served.XXXXXX)
pid=""
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
  if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$D"
}
trap cleanup EXIT
mkdir "$D/ctrl"
cat > "$D/target.toml" <<EOT
[target]
interrupt_mode = true
core_mask = "0x1"
control_socket = "$D/ctl.sock"

[transport.vfiouser]
disable_mappable_bar0 = true

[[subsystem]]
nqn = "nqn.2026-11.io.nvmf-tgt:vfio-user-served"
allow_any_host = true

[[subsystem.listener]]
transport = "vfiouser"
path = "$D/ctrl"

[[subsystem.namespace]]
nsid = 1
ram = { size = "1MiB" }
EOT
"$BIN" run -c "$D/target.toml" > "$D/log" 2>&1 &
pid=$!
for _ in $(seq 100); do
  [ -S "$D/ctrl/cntrl" ] && exit 0
  if ! kill -0 "$pid" 2>/dev/null; then
    wait "$pid" 2>/dev/null || true
    pid=""
    # "this transport is not served by this build" (at listen) or the declaration check's
    # "this build serves NVMe/TCP only; the vfiouser listener is refused at run".
    if grep -q -e 'not served by this build' -e 'vfiouser listener is refused at run' "$D/log"; then
      exit 1
    fi
    echo "served: nvmf-tgt exited without serving the vfiouser listener:" >&2
    sed 's/^/  /' "$D/log" >&2
    exit 2
  fi
  sleep 0.1
done
echo "served: nvmf-tgt runs but made no socket $D/ctrl/cntrl in 10 s:" >&2
sed 's/^/  /' "$D/log" >&2
exit 2
