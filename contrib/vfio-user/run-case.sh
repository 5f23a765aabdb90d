#!/bin/bash
# One vfio-user harness case: nvmf-tgt on the host serving an emulated NVMe PCI controller in
# MODE (interrupt: trapped doorbells, disable_mappable_bar0; poll: BAR0 mapped by QEMU) with a
# BACKEND (ram|file) namespace, and a QEMU guest whose Linux nvme driver runs guest-checks.sh
# on it. Run as root, after setup-qemu.sh.
# usage: run-case.sh MODE BACKEND [RESULTS_DIR]
#   env: NVMF_TGT (binary), VM_TIMEOUT (s, default 600), NS_HOTPLUG (default 1), and
#   run-guest.sh's (SMP, MEM, QEMU_CHROOT, VFU_MSG_TIMEOUT)
set -euo pipefail
MODE=${1:?usage: run-case.sh MODE BACKEND [RESULTS_DIR]}; BACKEND=${2:?usage: run-case.sh MODE BACKEND [RESULTS_DIR]}
HERE=$(dirname "$(readlink -f "$0")")
TOP=$(cd "$HERE/../.." && pwd)
BIN=${NVMF_TGT:-$TOP/target/release/nvmf-tgt}
OUT=${3:-/var/tmp/nvmf-tgt-vfio-user/$MODE-$BACKEND}
VM_TIMEOUT=${VM_TIMEOUT:-600}
NS_HOTPLUG=${NS_HOTPLUG:-1}
# A booted, idle VM: 30 s in interrupt mode, where it must cost the target < 0.5% of a core;
# 5 s in poll mode, where the reactor spins (shown, not judged). contrib/rdma does the same.
# shellcheck source=contrib/lib/target-cpu.sh
. "$TOP/contrib/lib/target-cpu.sh"
NQN="nqn.2026-11.io.nvmf-tgt:vfio-user-$MODE-$BACKEND"
SN="VFU-HARNESS-0001"
MN="nvmf-tgt vfio-user harness"
case "$MODE" in
  interrupt) INTERRUPT=true; NOMAP=true;;
  poll) INTERRUPT=false; NOMAP=false;;
  *) echo "run-case: unknown mode $MODE (interrupt|poll)" >&2; exit 2;;
esac
IDLE_SECONDS=${IDLE_SECONDS:-$(idle_seconds "$MODE")}
[ -x "$BIN" ] || { echo "run-case: no nvmf-tgt binary at $BIN" >&2; exit 2; }
rm -rf "$OUT"; mkdir -p "$OUT/ctrl"
case "$BACKEND" in
  ram)  NS='ram = { size = "128MiB" }';;
  file) truncate -s 128M "$OUT/ns.img"; NS="file = { path = \"$OUT/ns.img\", direct = true }";;
  *) echo "run-case: unknown backend $BACKEND (ram|file)" >&2; exit 2;;
esac
SOCK=$OUT/ctrl/cntrl
cat > "$OUT/target.toml" <<EOT
[target]
interrupt_mode = $INTERRUPT
core_mask = "0x1"
control_socket = "$OUT/ctl.sock"

[transport.vfiouser]
disable_mappable_bar0 = $NOMAP

[[subsystem]]
nqn = "$NQN"
serial = "$SN"
model = "$MN"
allow_any_host = true

[[subsystem.listener]]
transport = "vfiouser"
path = "$OUT/ctrl"

[[subsystem.namespace]]
nsid = 1
$NS
EOT
cp "$OUT/target.toml" "$OUT/target.toml.orig"

result() {
  if [ "$1" = PASS ]; then echo "PASS vfio-user $MODE $BACKEND ($2)"; else echo "FAIL vfio-user $MODE $BACKEND: $2"; fi
}
if ! "$BIN" check -c "$OUT/target.toml" > "$OUT/check.txt" 2>&1; then
  result FAIL "nvmf-tgt check refused the declaration; see $OUT/check.txt"
  sed 's/^/    /' "$OUT/check.txt"
  exit 1
fi

RUST_LOG=${RUST_LOG:-info} "$BIN" run -c "$OUT/target.toml" > "$OUT/target.log" 2>&1 &
TPID=$!
EDITOR_PID="" IDLE_PID=""
stop_all() {
  [ -z "$EDITOR_PID" ] || kill "$EDITOR_PID" 2>/dev/null || true
  [ -z "$IDLE_PID" ] || kill "$IDLE_PID" 2>/dev/null || true
  if [ -n "$TPID" ]; then kill -TERM "$TPID" 2>/dev/null || true; wait "$TPID" 2>/dev/null || true; fi
}
trap stop_all EXIT
for _ in $(seq 100); do
  [ -S "$SOCK" ] && break
  kill -0 "$TPID" 2>/dev/null || break
  sleep 0.1
done
if [ ! -S "$SOCK" ]; then
  result FAIL "nvmf-tgt made no socket $SOCK; see $OUT/target.log"
  tail -5 "$OUT/target.log" | sed 's/^/    /'
  exit 1
fi

cp "$HERE/guest-checks.sh" "$OUT/guest-checks.sh"
cat > "$OUT/test.sh" <<EOT
# Written by run-case.sh; guest-init.sh runs it with sh.
export EXPECT_SN="$SN" EXPECT_MN="$MN" EXPECT_NS_BYTES=134217728 NS_HOTPLUG=$NS_HOTPLUG IDLE_SECONDS=$IDLE_SECONDS
exec bash /tmp/work/guest-checks.sh
EOT

# The namespace step, host side: namespace 2 is declared when the guest says ns-ready and the
# declaration is put back when it says ns-seen (the target follows the file).
marker() { for _ in $(seq $((VM_TIMEOUT * 10))); do [ -e "$OUT/$1" ] && return 0; sleep 0.1; done; return 1; }
(
  marker ns-ready || exit 0
  { cat "$OUT/target.toml.orig"; printf '\n[[subsystem.namespace]]\nnsid = 2\nram = { size = "16MiB" }\n'; } > "$OUT/target.toml.new"
  mv "$OUT/target.toml.new" "$OUT/target.toml"
  echo "host: namespace 2 declared"
  marker ns-seen || exit 0
  cp "$OUT/target.toml.orig" "$OUT/target.toml.new"
  mv "$OUT/target.toml.new" "$OUT/target.toml"
  echo "host: namespace 2 removed"
) > "$OUT/host-ns.log" 2>&1 &
EDITOR_PID=$!

# The idle step, host side: the target's CPU time (utime + stime, /proc/PID/stat) between the
# guest's idle-start and idle-end markers, and the reactors' wake-ups per second over it.
(
  marker idle-start || exit 0
  w0=$(status_wakeups "$BIN" "$OUT/ctl.sock") || w0=""
  t0=$(now_ns); c0=$(proc_ticks "$TPID")
  marker idle-end || exit 0
  t1=$(now_ns); c1=$(proc_ticks "$TPID")
  w1=$(status_wakeups "$BIN" "$OUT/ctl.sock") || w1=""
  cpu_pct $((c1 - c0)) $((t1 - t0)) > "$OUT/idle-pct"
  if [ -n "$w0" ] && [ -n "$w1" ]; then per_second $((w1 - w0)) $((t1 - t0)); else echo none; fi > "$OUT/idle-wakeups"
  touch "$OUT/idle-measured"
) > "$OUT/host-idle.log" 2>&1 &
IDLE_PID=$!

START=$(date +%s)
GRC=0
"$HERE/run-guest.sh" "$OUT" "$SOCK" "$VM_TIMEOUT" > "$OUT/run-guest.log" 2>&1 || GRC=$?
WALL=$(( $(date +%s) - START ))
kill "$EDITOR_PID" "$IDLE_PID" 2>/dev/null || true; EDITOR_PID="" IDLE_PID=""
"$BIN" status --socket "$OUT/ctl.sock" > "$OUT/status.txt" 2>&1 || true
kill -TERM "$TPID" 2>/dev/null || true
TRC=0; wait "$TPID" || TRC=$?
TPID=""

sed "s/^/  [$MODE-$BACKEND] /" "$OUT/run-guest.log"
grep -E '^(CHECK|STEP)' "$OUT/test.log" 2>/dev/null | sed "s/^/  [$MODE-$BACKEND] /" || true
FAIL=""
[ $GRC = 0 ] || FAIL="guest checks failed (exit $(cat "$OUT/rc" 2>/dev/null || echo none)); see $OUT/test.log and $OUT/console.log"
[ $TRC = 0 ] || FAIL="${FAIL:+$FAIL; }target exited $TRC after SIGTERM; see $OUT/target.log"
! grep -q panicked "$OUT/target.log" || FAIL="${FAIL:+$FAIL; }target panicked; see $OUT/target.log"
IDLE=""
if [ "$IDLE_SECONDS" != 0 ]; then
  pct=$(cat "$OUT/idle-pct" 2>/dev/null || echo none)
  IDLE="; idle VM for ${IDLE_SECONDS}s: target ${pct}% of a core, $(cat "$OUT/idle-wakeups" 2>/dev/null || echo none) wakeups/s"
  if ! idle_ok "$MODE" "$pct"; then
    FAIL="${FAIL:+$FAIL; }an idle VM cost the target ${pct}% of a core (limit ${IDLE_LIMIT_PCT}%)"
  fi
fi
if [ -z "$FAIL" ]; then
  result PASS "${WALL}s$IDLE; logs in $OUT"
else
  result FAIL "$FAIL"
  tail -20 "$OUT/test.log" 2>/dev/null | sed 's/^/    /' || true
  exit 1
fi
