#!/bin/bash
# One harness case: nvmf-tgt on the host in MODE (interrupt|poll) with a BACKEND (ram|file)
# namespace, and the Linux NVMe/TCP host in a qemu guest running guest-checks.sh against it.
# usage: run-case.sh MODE BACKEND [RESULTS_DIR]       env: NVMF_TGT (binary), PORT
set -u
MODE=${1:?mode}; BACKEND=${2:?backend}
HERE=$(dirname "$(readlink -f "$0")")
TOP=$(cd "$HERE/../.." && pwd)
BIN=${NVMF_TGT:-$TOP/target/release/nvmf-tgt}
OUT=${3:-/var/tmp/nvmf-tgt-linux-host/$MODE-$BACKEND}
PORT=${PORT:-4420}
# The ram cases use a configfs-style name, as nvmet setups do (blktests' "blktests-subsystem-1"):
# not an NQN by the naming rules, served with a warning, and Linux connects to it all the same.
case "$BACKEND" in
  ram) NQN="harness-$MODE-$BACKEND";;
  *) NQN="nqn.2026-11.io.nvmf-tgt:harness-$MODE-$BACKEND";;
esac
rm -rf "$OUT"; mkdir -p "$OUT"
case "$BACKEND" in
  ram)  NS='ram = { size = "128MiB" }';;
  file) truncate -s 128M "$OUT/ns.img"; NS="file = { path = \"$OUT/ns.img\", direct = true, engine = \"uring\" }";;
  *) echo "unknown backend $BACKEND"; exit 2;;
esac
INTERRUPT=$([ "$MODE" = interrupt ] && echo true || echo false)
cat > "$OUT/target.toml" <<EOT
[target]
interrupt_mode = $INTERRUPT
core_mask = "0x1"
control_socket = "$OUT/ctl.sock"

[transport.tcp]

[[subsystem]]
nqn = "$NQN"
allow_any_host = true

[[subsystem.listener]]
transport = "tcp"
address = "127.0.0.1"
port = $PORT

[[subsystem.namespace]]
nsid = 1
$NS
EOT
RUST_LOG=info "$BIN" run -c "$OUT/target.toml" > "$OUT/target.log" 2>&1 &
TPID=$!
for _ in $(seq 100); do
  (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break
  kill -0 $TPID 2>/dev/null || break
  sleep 0.1
done
cp "$HERE/guest-checks.sh" "$OUT/guest-checks.sh"
cat > "$OUT/test.sh" <<EOT
# Written by run-case.sh; guest-init.sh runs it with sh.
export TRANSPORT=tcp ADDR=10.0.2.2 PORT=$PORT NQN=$NQN
exec sh /tmp/work/guest-checks.sh
EOT
# The reload step: edit the declaration when the guest asks (markers in the shared dir).
"$HERE/ns-reload.sh" "$OUT" "$OUT/target.toml" > "$OUT/ns-reload.log" 2>&1 &
EDITOR_PID=$!
START=$(date +%s)
"$HERE/run-guest.sh" "$OUT" "${VM_TIMEOUT:-400}"; GRC=$?
kill $EDITOR_PID 2>/dev/null
WALL=$(( $(date +%s) - START ))
"$BIN" status --socket "$OUT/ctl.sock" > "$OUT/status.txt" 2>&1
kill -TERM $TPID 2>/dev/null; wait $TPID; TRC=$?
grep -E '^(STEP|INTEGRITY|FIO|RELOAD|FAILED)' "$OUT/test.log" 2>/dev/null | sed "s/^/  [$MODE-$BACKEND] /"
FAIL=""
[ $GRC = 0 ] || FAIL="guest checks failed (exit $(cat "$OUT/rc" 2>/dev/null || echo none)); see $OUT/test.log and $OUT/console.log"
[ $TRC = 0 ] || FAIL="${FAIL:+$FAIL; }target exited $TRC after SIGTERM; see $OUT/target.log"
grep -q panicked "$OUT/target.log" && FAIL="${FAIL:+$FAIL; }target panicked"
if [ "$BACKEND" = ram ] && ! grep -q 'subsystem NQN "harness-.*must start with' "$OUT/target.log"; then
  FAIL="${FAIL:+$FAIL; }no warning for the configfs-style subsystem name (see $OUT/target.log)"
fi
# The file case is meant for the io_uring engine: the target says which one serves.
if [ "$BACKEND" = file ] && ! grep -q "file namespaces run on each reactor's io_uring" "$OUT/target.log"; then
  FAIL="${FAIL:+$FAIL; }the file namespace was not served by io_uring (see $OUT/target.log)"
fi
if [ -z "$FAIL" ]; then
  echo "PASS linux-host $MODE $BACKEND (${WALL}s)"
else
  echo "FAIL linux-host $MODE $BACKEND: $FAIL"
  tail -20 "$OUT/test.log" 2>/dev/null | sed 's/^/    /'
  exit 1
fi
