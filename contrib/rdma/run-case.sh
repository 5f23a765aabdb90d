#!/bin/bash
# One NVMe/RDMA harness case. The host has no RDMA and qemu's user networking carries no
# RoCE, so everything runs in one guest (contrib/linux-host's boot: Debian's kernel under TCG,
# the host root read-only over 9p): soft-RoCE rxe0 on eth0 (10.0.2.15), user-space verbs
# checks (ibv_rc_pingpong, rping), the target listening on rdma 10.0.2.15:PORT, and the guest's
# nvme-rdma host running contrib/linux-host's checks against it (guest-rdma.sh).
# After the host's checks, a connected host doing nothing (guest-rdma.sh's idle check) must cost
# nvmf-tgt in interrupt mode < 0.5% of a core over 30 s; the PASS line shows that figure and the
# reactors' wake-ups per second (poll mode: 5 s, shown, not judged).
# The target is nvmf-tgt in MODE (interrupt|poll) with a BACKEND (ram|file|null) namespace, or with
# TARGET=nvmet Linux's nvmet-rdma on the same BACKEND (a brd RAM disk or a file; MODE is
# nvmf-tgt's only), the reference the checks must pass against. BACKEND=file gives the guest a
# disk with an ext4 filesystem for the namespace's file (O_DIRECT, which tmpfs refuses).
# usage: run-case.sh MODE BACKEND [RESULTS_DIR]
#   env: TARGET (nvmf-tgt|nvmet, default nvmf-tgt), NVMF_TGT (binary; copied into the guest's
#   work share), PORT (default 4420), VM_TIMEOUT (s, default 900), CHECKS (guest-rdma.sh's),
#   SMP (default 2: target and host share the guest), MEM (MiB, default 1536), RUST_LOG,
#   TRANSPORT (rdma, default; tcp runs the same target and checks over NVMe/TCP in the guest),
#   IDLE_SECONDS (the idle check's window; default 30 in interrupt mode, 5 in poll mode),
#   EXTRA_CHECKS (a bash file defining more check_NAME functions for CHECKS, e.g.
#   contrib/bench/rdma-guest-run.sh), GUEST_ENV (names of more variables to pass to the guest),
#   NO_SRQ (1: nvmf-tgt's `no_srq = true`, each QP with its own receive queue; default: the
#   device's shared receive queue)
set -uo pipefail
usage="usage: run-case.sh MODE BACKEND [RESULTS_DIR]"
MODE=${1:?$usage}; BACKEND=${2:?$usage}
HERE=$(dirname "$(readlink -f "$0")")
TOP=$(cd "$HERE/../.." && pwd)
LH=$TOP/contrib/linux-host
TARGET=${TARGET:-nvmf-tgt}
TRANSPORT=${TRANSPORT:-rdma}
BIN=${NVMF_TGT:-$TOP/target/release/nvmf-tgt}
OUT=${3:-/var/tmp/nvmf-tgt-rdma/$TARGET-$MODE-$BACKEND$([ "$TRANSPORT" = rdma ] || echo "-$TRANSPORT")}
PORT=${PORT:-4420}
VM_TIMEOUT=${VM_TIMEOUT:-900}
# guest-init.sh gives eth0 this address; rxe0 sits on eth0, so it is the target's too.
ADDR=10.0.2.15
NQN="nqn.2026-11.io.nvmf-tgt:rdma-$MODE-$BACKEND"
NO_SRQ=${NO_SRQ:-0}
TRANSPORT_KEYS=""
[ "$NO_SRQ" = 1 ] && [ "$TRANSPORT" = rdma ] && TRANSPORT_KEYS="no_srq = true"
NAME="$TRANSPORT $TARGET $MODE $BACKEND${TRANSPORT_KEYS:+ ($TRANSPORT_KEYS)}"
case "$MODE" in
  interrupt) INTERRUPT=true;;
  poll) INTERRUPT=false;;
  *) echo "run-case: unknown mode $MODE (interrupt|poll)" >&2; exit 2;;
esac
case "$TARGET" in
  nvmf-tgt) [ -x "$BIN" ] || { echo "FAIL $NAME: no nvmf-tgt binary at $BIN (cargo build --release, or set NVMF_TGT)"; exit 1; };;
  nvmet) ;;
  *) echo "run-case: unknown TARGET $TARGET (nvmf-tgt|nvmet)" >&2; exit 2;;
esac
case "$TRANSPORT" in rdma|tcp) ;; *) echo "run-case: unknown TRANSPORT $TRANSPORT (rdma|tcp)" >&2; exit 2;; esac
rm -rf "$OUT"; mkdir -p "$OUT"

# The declaration names guest paths: the guest reads it from /tmp/work and runs from its copy.
case "$BACKEND" in
  ram)  NS='ram = { size = "128MiB" }'; DISK="";;
  null) NS='null = { size = "1GiB" }'; DISK="";;
  file) NS='file = { path = "/var/tmp/nsfs/ns.img", direct = true }'; DISK=$OUT/disk.img
        truncate -s 192M "$DISK" && mkfs.ext4 -q -F -L nvmf-ns "$DISK" ||
          { echo "FAIL $NAME: cannot make the ext4 disk $DISK (mkfs.ext4 from e2fsprogs)"; exit 1; };;
  *) echo "run-case: unknown backend $BACKEND (ram|file|null)" >&2; exit 2;;
esac
cat > "$OUT/target.toml" <<EOT
[target]
interrupt_mode = $INTERRUPT
core_mask = "0x1"
control_socket = "/tmp/tgt/ctl.sock"

[transport.$TRANSPORT]
$TRANSPORT_KEYS

[[subsystem]]
nqn = "$NQN"
allow_any_host = true

[[subsystem.listener]]
transport = "$TRANSPORT"
address = "$ADDR"
port = $PORT

[[subsystem.namespace]]
nsid = 1
$NS
EOT
# A copy, not the build's own file: a rebuild during the run must not change the guest's binary,
# and a tree under /tmp or /var/tmp is not in the guest's view of the host root.
[ "$TARGET" != nvmf-tgt ] || cp "$BIN" "$OUT/nvmf-tgt"
cp "$HERE/guest-rdma.sh" "$HERE/nvmet.sh" "$LH/guest-checks.sh" "$LH/ns-reload.sh" "$TOP/contrib/lib/target-cpu.sh" "$OUT/"
if [ -n "${EXTRA_CHECKS:-}" ]; then
  cp "$EXTRA_CHECKS" "$OUT/checks-extra.sh" || { echo "FAIL $NAME: cannot copy EXTRA_CHECKS=$EXTRA_CHECKS"; exit 1; }
fi
{
  echo "# Written by run-case.sh; guest-init.sh runs it with sh."
  echo "export TARGET=$TARGET MODE=$MODE TRANSPORT=$TRANSPORT BACKEND=$BACKEND ADDR=$ADDR PORT=$PORT NQN=$NQN RUST_LOG=${RUST_LOG:-info}"
  echo "export CHECKS=\"${CHECKS:-}\" IDLE_SECONDS=${IDLE_SECONDS:-}"
  for v in ${GUEST_ENV:-}; do printf 'export %s=%q\n' "$v" "${!v:-}"; done
  echo "exec bash /tmp/work/guest-rdma.sh"
} > "$OUT/test.sh"

START=$(date +%s)
GRC=0
SMP=${SMP:-2} MEM=${MEM:-1536} DISK=$DISK "$LH/run-guest.sh" "$OUT" "$VM_TIMEOUT" || GRC=$?
WALL=$(( $(date +%s) - START ))

# The checks' outcomes and times (the whole story is in test.log, printed when a case fails).
grep -E '^(CHECK|STEP|guest: [0-9]|    (STEP|INTEGRITY|FIO|RELOAD|FAILED))|pings answered|usec/iter|GID index|limits:|idle host for|RDMA device in use' \
    "$OUT/test.log" 2>/dev/null | sed "s/^ */  [$TARGET-$MODE-$BACKEND] /"
# guest-rdma.sh's idle check: "idle host for Ns: target P% of a core, W wakeups/s".
IDLE=$(cat "$OUT/idle.txt" 2>/dev/null)
if [ $GRC = 0 ]; then
  echo "PASS $NAME (${WALL}s${IDLE:+; $IDLE}; logs in $OUT)"
  exit 0
fi
if [ ! -e "$OUT/rc" ]; then
  why="the guest did not finish (timeout ${VM_TIMEOUT}s or a crash)"
else
  why=$(cat "$OUT/why" 2>/dev/null)
  [ -n "$why" ] || why="guest checks exited $(cat "$OUT/rc")"
fi
echo "FAIL $NAME: $why"
tail -40 "$OUT/test.log" 2>/dev/null | sed 's/^/    | /'
echo "    after ${WALL}s; see $OUT/test.log, $OUT/console.log$([ "$TARGET" = nvmf-tgt ] && echo ", $OUT/target.log")"
exit 1
