#!/bin/bash
# Runs in the guest (run-case.sh's WORKDIR/test.sh execs it from /tmp/work): soft-RoCE on
# eth0, user-space verbs over it, an NVMe/RDMA target on the guest's own address and the
# guest's Linux nvme-rdma host running contrib/linux-host's checks against it.
# Every check prints "CHECK name: ok" or "CHECK name: FAILED" and "STEP name seconds"; the
# first failure's reason goes to /tmp/work/why (one line, for run-case.sh). Exit 0 when every
# check passed.
# env: TARGET   nvmf-tgt (/tmp/work/nvmf-tgt run -c /tmp/work/target.toml) or nvmet (Linux's)
#      BACKEND  ram|file: namespace 1's storage (nvmet: a brd RAM disk or a file; nvmf-tgt: as
#               the TOML says); file lives on an ext4 filesystem on /dev/vda (run-case.sh's disk)
#      ADDR PORT NQN  where the target listens (ADDR must be eth0's) and the subsystem
#      TRANSPORT rdma (default) or tcp: the same target and host checks over NVMe/TCP inside
#               the guest, to compare with and to try the in-guest plumbing without RDMA
#      MODE     interrupt|poll, as the TOML says (the idle check's limit and window)
#      CHECKS   checks to run, in order (default: link verbs pingpong srq rping target stranger host
#               listener idle stop); W/checks-extra.sh (run-case.sh's EXTRA_CHECKS) may define more
#      IDLE_SECONDS  the idle check's window (default 30 in interrupt mode, 5 in poll mode)
#      RDMA_DEV the rxe device to make (default rxe0)
set -uo pipefail
W=/tmp/work
TARGET=${TARGET:-nvmf-tgt} BACKEND=${BACKEND:-ram} TRANSPORT=${TRANSPORT:-rdma}
ADDR=${ADDR:-10.0.2.15} PORT=${PORT:-4420} NQN=${NQN:?}
DEV=${RDMA_DEV:-rxe0}
MODE=${MODE:-interrupt}
CHECKS=${CHECKS:-link verbs pingpong srq rping target stranger host listener idle stop}
TOML=/tmp/tgt/target.toml
NSFS=/var/tmp/nsfs
TGT_PID="" RELOAD_PID="" GID=""
passed=0 failed=0
: > "$W/why"
# proc_ticks, cpu_pct, idle_ok, status_wakeups: contrib/lib/target-cpu.sh, shared with
# contrib/vfio-user and contrib/bench.
. "$W/target-cpu.sh" || exit 1

now() { date +%s.%N; }
since() { awk -v t0="$1" -v t1="$(now)" 'BEGIN { printf "%.1f", t1 - t0 }'; }
# wait_until SECONDS COMMAND...: polls every 0.1 s until COMMAND succeeds or SECONDS pass.
wait_until() {
  local end=$(( SECONDS + $1 )); shift
  until "$@"; do
    [ "$SECONDS" -lt "$end" ] || return 1
    sleep 0.1
  done
}
say() { echo "  $*"; }
# why REASON: says it and keeps the first one for run-case.sh's FAIL line.
why() { say "$*"; [ -s "$W/why" ] || echo "$*" > "$W/why"; }
attr() { local v=""; read -r v < "$1" 2>/dev/null; printf '%s' "$v"; }

# An RDMA CM id listening on ADDR:PORT, the target's or rping's, kernel or user space.
# (grep without -q: it reads all of rdma's output, or pipefail would see rdma die of SIGPIPE.)
cm_listening() { rdma resource show cm_id 2>/dev/null | grep "state LISTEN .*src-addr $1:$2 " > /dev/null; }
tcp_listening() { [ -n "$(ss -Hltn "sport = :$1")" ]; }
# The target under test listens on ADDR:PORT.
listening_on() { if [ "$TRANSPORT" = rdma ]; then cm_listening "$ADDR" "$1"; else tcp_listening "$1"; fi; }
listening() { listening_on "$PORT"; }
port_active() { [ "$(attr "/sys/class/infiniband/$DEV/ports/1/state")" = "4: ACTIVE" ]; }
char_dev() { [ -c "$1" ]; }
# The index of the RoCE v2 GID that carries ADDR (::ffff:a.b.c.d), for ibv_rc_pingpong -g.
gid_index() {
  local want f a b c d
  IFS=. read -r a b c d <<< "$ADDR"
  want=$(printf '0000:0000:0000:0000:0000:ffff:%02x%02x:%02x%02x' "$a" "$b" "$c" "$d")
  for f in "/sys/class/infiniband/$DEV/ports/1/gids/"*; do
    [ "$(attr "$f")" = "$want" ] || continue
    [ "$(attr "/sys/class/infiniband/$DEV/ports/1/gid_attrs/types/${f##*/}")" = "RoCE v2" ] || continue
    echo "${f##*/}"; return 0
  done
  return 1
}

# rdma_rxe on eth0; the verbs device nodes devtmpfs makes when ib_uverbs and rdma_ucm load
# (nothing loads them by itself: no udev in the guest).
check_link() {
  local m
  ip -4 -o addr show dev eth0 | grep " $ADDR/" > /dev/null || { why "eth0 does not have $ADDR: $(ip -4 -o addr show dev eth0)"; return 1; }
  for m in rdma_rxe ib_uverbs rdma_ucm; do modprobe "$m" || { why "modprobe $m failed"; return 1; }; done
  rdma link add "$DEV" type rxe netdev eth0 || { why "rdma link add $DEV type rxe netdev eth0 failed"; return 1; }
  wait_until 15 port_active || { why "$DEV port 1 is '$(attr "/sys/class/infiniband/$DEV/ports/1/state")', not ACTIVE"; return 1; }
  rdma link show | sed 's/^/    /'
  say "modules: $(lsmod | awk '/^(rdma|ib_|iw_|nvme)/ { printf "%s ", $1 }')"
}

# What a user-space target needs: the device nodes, the rxe provider (found through the host's
# /etc/libibverbs.d over 9p), a GID for ADDR and locked memory for its registrations.
check_verbs() {
  local n rc=0
  for n in /dev/infiniband/uverbs0 /dev/infiniband/rdma_cm; do
    wait_until 5 char_dev "$n" || { why "no $n (ib_uverbs / rdma_ucm loaded? devtmpfs on /dev?)"; rc=1; }
  done
  ls -l /dev/infiniband | sed 's/^/    /'
  say "locked memory limit: $(ulimit -l) (root also has CAP_IPC_LOCK)"
  ibv_devices 2>&1 | sed 's/^/    /'
  if ! ibv_devinfo -d "$DEV" > "$W/ibv_devinfo.txt" 2>&1; then
    why "ibv_devinfo cannot open $DEV (rxe provider: /etc/libibverbs.d/rxe.driver, librxe-rdmav*.so from ibverbs-providers): $(head -1 "$W/ibv_devinfo.txt")"
    rc=1
  fi
  grep -E 'hca_id|transport|state|active_mtu|link_layer' "$W/ibv_devinfo.txt" | sed 's/^/    /'
  # The limits a target sizes its queues, SGLs and SRQ by.
  ibv_devinfo -v -d "$DEV" > "$W/ibv_devinfo-v.txt" 2>&1
  say "limits: $(grep -E '^\s+(max_qp|max_qp_wr|max_sge|max_cqe|max_mr|max_pd|max_qp_rd_atom|max_srq|max_srq_wr|max_srq_sge):' \
      "$W/ibv_devinfo-v.txt" | tr -s ' \t' ' ' | tr '\n' ',')"
  if GID=$(gid_index); then
    say "GID index $GID is RoCE v2 $ADDR ($(attr "/sys/class/infiniband/$DEV/ports/1/gids/$GID"))"
  else
    why "no RoCE v2 GID for $ADDR on $DEV"; GID=1; rc=1
  fi
  return $rc
}

# pingpong NAME PROGRAM ARGS...: a server and a client of an ibverbs-utils pingpong in this
# guest (they swap QP numbers over TCP port 18515, then talk over rxe0); both must exit 0.
pingpong() {
  local name=$1 s=$W/$1-server.txt c=$W/$1-client.txt spid src=0 crc=0; shift
  [ -n "$GID" ] || GID=$(gid_index) || GID=1
  timeout 120 "$@" > "$s" 2>&1 & spid=$!
  wait_until 30 tcp_listening 18515 || { why "$name: the server did not listen: $(tail -1 "$s")"; kill $spid 2>/dev/null; return 1; }
  timeout 90 "$@" 127.0.0.1 > "$c" 2>&1 || crc=$?
  wait $spid || src=$?
  grep -v -E 'local address|remote address' "$c" | tail -2 | sed "s/^/    $name client: /"
  [ $crc = 0 ] && [ $src = 0 ] || { why "$name ($*) failed (client exit $crc, server exit $src): $(tail -1 "$c")"; return 1; }
}
# RC SENDs between two user-space processes, with the receiver's buffer checked: polled, then
# asleep on the completion channel (-e: req_notify_cq, get_cq_event, ack; interrupt mode's way).
check_pingpong() {
  pingpong rc-poll ibv_rc_pingpong -d "$DEV" -g "$GID" -n 100 -c &&
    pingpong rc-events ibv_rc_pingpong -d "$DEV" -g "$GID" -n 100 -c -e
}
# Receives from one shared receive queue for 16 QPs, asleep on CQ events (a target's SRQ).
check_srq() {
  pingpong srq-events ibv_srq_pingpong -d "$DEV" -g "$GID" -q 16 -n 20 -e
}

# rdma_cm connection setup (what nvme-rdma and a target use), then 10 RDMA READ/WRITE pings.
check_rping() {
  local s=$W/rping-server.txt c=$W/rping-client.txt spid src=0 crc=0 pings
  timeout 90 rping -s -a "$ADDR" -C 10 > "$s" 2>&1 & spid=$!
  wait_until 30 cm_listening "$ADDR" 7174 || { why "rping -s did not listen on $ADDR:7174: $(tail -1 "$s")"; kill $spid 2>/dev/null; return 1; }
  timeout 60 rping -c -a "$ADDR" -C 10 -v > "$c" 2>&1 || crc=$?
  wait $spid || src=$?
  pings=$(grep -c '^ping data: ' "$c")
  head -3 "$c" | sed 's/^/    client: /'; tail -3 "$s" | sed 's/^/    server: /'
  say "$pings pings answered"
  [ $crc = 0 ] && [ $src = 0 ] && [ "$pings" = 10 ] || { why "rping failed (client exit $crc, server exit $src, $pings of 10 pings): $(tail -1 "$c")"; return 1; }
}

# A stranger on the target's port: rping (user space, rdma_cm, no NVMe/RDMA private data)
# connects and SENDs a 16-byte message, less than an SQE. The target must reject or drop it
# (nvmet: "capsule size less than 64 bytes", then disconnect) within 30 s, and still listen.
# It also shows a user-space peer and the target meeting on rxe0 through the CM.
check_stranger() {
  local c=$W/stranger-client.txt rc=0
  [ "$TRANSPORT" = rdma ] || { say "nothing to do over $TRANSPORT"; return 0; }
  timeout 30 rping -c -a "$ADDR" -p "$PORT" -C 1 -v > "$c" 2>&1 || rc=$?
  sed 's/^/    rping: /' "$c"
  [ $rc != 124 ] || { why "the target left a client that sent 16 bytes hanging for 30s"; return 1; }
  grep -q -E 'REJECTED|DISCONNECT' "$c" || { why "rping to $ADDR:$PORT was neither rejected nor disconnected: $(tail -1 "$c")"; return 1; }
  listening || { why "the target stopped listening after a client sent 16 bytes"; return 1; }
  # nvmet says why in the kernel log; nvmf-tgt rejects at the CM (no NVMe/RDMA private data).
  dmesg | grep -E 'nvmet_rdma: .*(capsule|private data|reject)' | sed 's/^/    dmesg: /' || true
}

# BACKEND=file: namespace 1 is a file on ext4 (run-case.sh made the filesystem on the disk), so
# O_DIRECT works as it does on the host (tmpfs refuses it).
mount_nsfs() {
  modprobe virtio_blk && modprobe ext4 || { why "modprobe virtio_blk/ext4 failed"; return 1; }
  wait_until 10 test -b /dev/vda || { why "no /dev/vda (run-case.sh gives BACKEND=file a disk)"; return 1; }
  mkdir -p "$NSFS" && mount -t ext4 /dev/vda "$NSFS" || { why "cannot mount /dev/vda on $NSFS"; return 1; }
  truncate -s 128M "$NSFS/ns.img"
}

listening_or_exit() {
  listening && return 0
  [ -z "$TGT_PID" ] || kill -0 "$TGT_PID" 2>/dev/null || return 0
  return 1
}
start_nvmf_tgt() {
  local rc=0 hint="" err
  [ -x "$W/nvmf-tgt" ] || { why "no $W/nvmf-tgt"; return 1; }
  mkdir -p /tmp/tgt && cp "$W/target.toml" "$TOML" || return 1
  "$W/nvmf-tgt" check -c "$TOML" > "$W/check.txt" 2>&1 || { why "nvmf-tgt check refused the declaration: $(grep -m1 -i error "$W/check.txt")"; return 1; }
  sed 's/^/    check: /' "$W/check.txt"
  RUST_LOG=${RUST_LOG:-info} "$W/nvmf-tgt" run -c "$TOML" > "$W/target.log" 2>&1 &
  TGT_PID=$!
  wait_until 60 listening_or_exit
  if listening; then
    say "nvmf-tgt (pid $TGT_PID) listens on $TRANSPORT $ADDR:$PORT"
    "$W/ns-reload.sh" "$W" "$TOML" > "$W/ns-reload.log" 2>&1 & RELOAD_PID=$!
    return 0
  fi
  # The first error the target gave (run's declaration errors and its log's ERROR lines alike).
  err=$(grep -m1 -i -E '(^|[ :])error' "$W/target.log" || tail -1 "$W/target.log")
  ! grep -q -E 'not served by this build|serves NVMe/TCP and vfio-user only' "$W/target.log" ||
    hint=" (this build does not serve NVMe/RDMA yet: issue 13)"
  if kill -0 "$TGT_PID" 2>/dev/null; then
    why "nvmf-tgt runs but does not listen on $TRANSPORT $ADDR:$PORT after 60s$hint: $err"
  else
    wait "$TGT_PID" || rc=$?
    TGT_PID=""
    why "nvmf-tgt exited $rc before listening on $TRANSPORT $ADDR:$PORT$hint: $err"
  fi
  tail -5 "$W/target.log" | sed 's/^/    target.log: /'
  return 1
}
start_nvmet() {
  local dev
  case "$BACKEND" in
    ram) modprobe brd rd_nr=1 rd_size=131072 && wait_until 10 test -b /dev/ram0 || { why "no brd RAM disk /dev/ram0"; return 1; }
         dev=/dev/ram0;;
    file) dev=$NSFS/ns.img;;
  esac
  truncate -s 16M /tmp/ns2.img
  bash "$W/nvmet.sh" start "$TRANSPORT" "$ADDR" "$PORT" "$NQN" "$dev" > "$W/target.log" 2>&1 || { why "nvmet setup failed: $(tail -1 "$W/target.log")"; return 1; }
  wait_until 30 listening || { why "nvmet-$TRANSPORT does not listen on $ADDR:$PORT"; return 1; }
  say "nvmet-$TRANSPORT listens on $ADDR:$PORT, namespace 1 on $dev"
  "$W/ns-reload.sh" "$W" --run "bash $W/nvmet.sh ns-add $NQN 2 /tmp/ns2.img" "bash $W/nvmet.sh ns-remove $NQN 2" \
      > "$W/ns-reload.log" 2>&1 & RELOAD_PID=$!
}
check_target() {
  if [ "$BACKEND" = file ]; then mount_nsfs || return 1; fi
  case "$TARGET" in
    nvmf-tgt) start_nvmf_tgt;;
    nvmet) start_nvmet;;
    *) why "unknown TARGET $TARGET (nvmf-tgt|nvmet)"; return 1;;
  esac
}

# contrib/linux-host's checks with the nvme-rdma host: discover, connect, identify, 32 MiB
# integrity, fio verify 4K and 128K, two I/O queues, namespace 2 added and removed, disconnect.
check_host() {
  local rc=0 failed_step
  TRANSPORT=$TRANSPORT ADDR=$ADDR PORT=$PORT NQN=$NQN sh "$W/guest-checks.sh" > "$W/host-checks.log" 2>&1 || rc=$?
  grep -E '^(STEP|INTEGRITY|FIO|RELOAD|FAILED)' "$W/host-checks.log" | sed 's/^/    /'
  [ $rc = 0 ] && return 0
  failed_step=$(grep -m1 '^FAILED' "$W/host-checks.log" || echo "FAILED (exit $rc)")
  case $rc in
    11|12|20|30) why "nvme-$TRANSPORT host: $failed_step against $TARGET on $ADDR:$PORT; the kernel's nvme_$TRANSPORT messages are in console.log and dmesg.txt";;
    *) why "nvme-$TRANSPORT host: $failed_step";;
  esac
  return 1
}

# Listeners by hot reload (nvmf-tgt only): with a host connected through PORT and reading, a
# second listener on PORT+1 is declared by editing the file (rename, as an operator's editor
# does); the target must listen there, and a second controller connects through it and answers
# Identify; the listener is removed again by editing the file and must stop listening; the host
# on PORT must notice none of it (its reads run on without an error, its controller stays live).
check_listener() {
  local port2=$((PORT + 1)) d="" ctrl="" ctrl2="" c reader rc=0
  [ "$TARGET" = nvmf-tgt ] || { say "nothing to do: nvmet's ports are not declared in a file"; return 0; }
  modprobe "nvme-$TRANSPORT" || { why "modprobe nvme-$TRANSPORT failed"; return 1; }
  timeout 30 nvme connect -t "$TRANSPORT" -a "$ADDR" -s "$PORT" -n "$NQN" > "$W/listener-connect.txt" 2>&1 ||
    { why "listener: nvme connect through $PORT failed: $(tail -1 "$W/listener-connect.txt")"; return 1; }
  wait_until 10 eval 'd=$(ls /dev/nvme*n1 2>/dev/null | head -1); [ -b "$d" ]' ||
    { why "listener: connected through $PORT, but no namespace block device"; nvme disconnect -n "$NQN" > /dev/null 2>&1; return 1; }
  for c in /sys/class/nvme/nvme*; do [ "$(attr "$c/subsysnqn")" = "$NQN" ] && ctrl=${c##*/}; done
  # Reads through PORT for the whole check: a reload that touched this listener would fail them.
  rm -f "$W/listener-stop" "$W/listener-read-failed"
  ( while [ ! -e "$W/listener-stop" ]; do
      dd if="$d" of=/dev/null bs=64k count=64 iflag=direct 2>> "$W/listener-dd.txt" ||
        { touch "$W/listener-read-failed"; exit 1; }
    done ) & reader=$!
  cp "$TOML" "$W/listener-orig.toml"
  { cat "$W/listener-orig.toml"; printf '\n[[subsystem.listener]]\ntransport = "%s"\naddress = "%s"\nport = %d\n' "$TRANSPORT" "$ADDR" "$port2"; } > "$TOML.new"
  mv "$TOML.new" "$TOML"
  if ! wait_until 30 listening_on "$port2"; then
    why "listener: declared $ADDR:$port2 by editing the file; the target does not listen there after 30s"; rc=1
  else
    say "a listener on $ADDR:$port2 added by editing the file"
    timeout 30 nvme discover -t "$TRANSPORT" -a "$ADDR" -s "$port2" > "$W/listener-discover.txt" 2>&1 &&
      grep -q "trsvcid: *$port2" "$W/listener-discover.txt" ||
      { why "listener: discovery through $port2 does not list $port2: $(tail -1 "$W/listener-discover.txt")"; rc=1; }
  fi
  if [ $rc = 0 ]; then
    # A second controller of the same subsystem, through the new listener (a multipath host
    # shows both behind one block device: the controller itself is what is checked).
    timeout 30 nvme connect -t "$TRANSPORT" -a "$ADDR" -s "$port2" -n "$NQN" > "$W/listener-connect2.txt" 2>&1 ||
      { why "listener: nvme connect through $port2 failed: $(tail -1 "$W/listener-connect2.txt")"; rc=1; }
  fi
  if [ $rc = 0 ]; then
    for c in /sys/class/nvme/nvme*; do
      [ "$(attr "$c/subsysnqn")" = "$NQN" ] && case "$(attr "$c/address")" in *"trsvcid=$port2"*) ctrl2=${c##*/};; esac
    done
    if [ -z "$ctrl2" ] || ! wait_until 10 eval '[ "$(attr "/sys/class/nvme/$ctrl2/state")" = live ]'; then
      why "listener: no live controller through $port2 after connecting (${ctrl2:-none})"; rc=1
    elif ! timeout 30 nvme id-ctrl "/dev/$ctrl2" > "$W/listener-id-ctrl.txt" 2>&1; then
      why "listener: nvme id-ctrl through $port2 ($ctrl2) failed: $(tail -1 "$W/listener-id-ctrl.txt")"; rc=1
    else
      say "controller $ctrl2 connected through $port2 and answered Identify"
    fi
  fi
  cp "$W/listener-orig.toml" "$TOML.new" && mv "$TOML.new" "$TOML"
  if ! wait_until 30 eval '! listening_on "$port2"'; then
    why "listener: removed $ADDR:$port2 from the file; the target still listens there after 30s"; rc=1
  else
    say "the listener on $ADDR:$port2 removed by editing the file"
  fi
  listening || { why "listener: the target stopped listening on $PORT, which the edits left alone"; rc=1; }
  sleep 2
  touch "$W/listener-stop"; wait $reader
  [ ! -e "$W/listener-read-failed" ] ||
    { why "listener: reads through $PORT failed during the reloads: $(tail -1 "$W/listener-dd.txt")"; rc=1; }
  [ "$(attr "/sys/class/nvme/$ctrl/state")" = live ] ||
    { why "listener: the controller through $PORT ($ctrl) is '$(attr "/sys/class/nvme/$ctrl/state")' after the reloads, not live"; rc=1; }
  say "the host through $PORT read on through both reloads ($ctrl $(attr "/sys/class/nvme/$ctrl/state"))"
  timeout 30 nvme disconnect -n "$NQN" > /dev/null || { why "listener: nvme disconnect failed"; rc=1; }
  wait_until 10 eval '! ls /dev/nvme*n1 > /dev/null 2>&1'
  return $rc
}

# A connected host doing nothing (namespace present, no I/O; keep-alives only): the target's
# CPU (utime + stime from /proc/PID/stat) over IDLE_SECONDS, which in interrupt mode must stay
# under IDLE_LIMIT_PCT of a core (poll mode spins: shown, not judged), and its reactors'
# wake-ups per second from `nvmf-tgt status`. The figures go to W/idle.txt for the PASS line.
check_idle() {
  local secs sock=/tmp/tgt/ctl.sock t0 t1 c0 c1 w0 w1 pct wps d c ctrl=none rc=0
  [ "$TARGET" = nvmf-tgt ] || { say "nothing to measure: $TARGET's work is the kernel's"; return 0; }
  [ -n "$TGT_PID" ] && kill -0 "$TGT_PID" 2>/dev/null || { why "idle: no nvmf-tgt running"; return 1; }
  secs=${IDLE_SECONDS:-$(idle_seconds "$MODE")}
  modprobe "nvme-$TRANSPORT" || { why "modprobe nvme-$TRANSPORT failed"; return 1; }
  timeout 30 nvme connect -t "$TRANSPORT" -a "$ADDR" -s "$PORT" -n "$NQN" --keep-alive-tmo=5 > "$W/idle-connect.txt" 2>&1 ||
    { why "idle: nvme connect -t $TRANSPORT failed: $(tail -1 "$W/idle-connect.txt")"; return 1; }
  if ! wait_until 10 eval 'd=$(ls /dev/nvme*n1 2>/dev/null | head -1); [ -b "$d" ]'; then
    why "idle: connected, but no namespace block device"; nvme disconnect -n "$NQN" > /dev/null 2>&1; return 1
  fi
  for c in /sys/class/nvme/nvme*; do [ "$(attr "$c/subsysnqn")" = "$NQN" ] && ctrl=${c##*/}; done
  # Let the connect's own work (identify, namespace scan, partition read) finish first.
  sleep 2
  w0=$(status_wakeups "$W/nvmf-tgt" "$sock") || w0=""
  t0=$(now_ns); c0=$(proc_ticks "$TGT_PID")
  sleep "$secs"
  t1=$(now_ns); c1=$(proc_ticks "$TGT_PID")
  w1=$(status_wakeups "$W/nvmf-tgt" "$sock") || w1=""
  pct=$(cpu_pct $((c1 - c0)) $((t1 - t0)))
  if [ -n "$w0" ] && [ -n "$w1" ]; then wps=$(per_second $((w1 - w0)) $((t1 - t0))); else wps=none; fi
  echo "idle host for ${secs}s: target ${pct}% of a core, $wps wakeups/s" | tee "$W/idle.txt" | sed 's/^/  /'
  say "($((c1 - c0)) ticks at $(getconf CLK_TCK)/s; wake-ups $w0 -> $w1; $d on $ctrl: $(attr "/sys/class/nvme/$ctrl/state"))"
  [ "$(attr "/sys/class/nvme/$ctrl/state")" = live ] || { why "idle: the host's controller $ctrl is '$(attr "/sys/class/nvme/$ctrl/state")' after ${secs}s idle, not live"; rc=1; }
  idle_ok "$MODE" "$pct" || { why "an idle connected host cost the target ${pct}% of a core over ${secs}s (limit ${IDLE_LIMIT_PCT}%)"; rc=1; }
  timeout 30 nvme disconnect -n "$NQN" > /dev/null || { why "idle: nvme disconnect failed"; rc=1; }
  return $rc
}

check_stop() {
  local rc=0
  [ -z "$RELOAD_PID" ] || kill "$RELOAD_PID" 2>/dev/null
  case "$TARGET" in
    nvmf-tgt)
      [ -n "$TGT_PID" ] || { why "no nvmf-tgt to stop"; return 1; }
      "$W/nvmf-tgt" status --socket /tmp/tgt/ctl.sock > "$W/status.txt" 2>&1 || say "status failed: $(tail -1 "$W/status.txt")"
      kill -TERM "$TGT_PID"; wait "$TGT_PID" || rc=$?
      TGT_PID=""
      cp "$TOML" "$W/target.toml.final" 2>/dev/null
      ! grep -q panicked "$W/target.log" || { why "nvmf-tgt panicked; see target.log"; return 1; }
      grep -m1 'RDMA device in use' "$W/target.log" | sed 's/^.*RDMA device in use/  RDMA device in use/'
      [ $rc = 0 ] || { why "nvmf-tgt exited $rc after SIGTERM; see target.log"; return 1; }
      say "nvmf-tgt stopped (exit 0)";;
    nvmet)
      bash "$W/nvmet.sh" stop "$NQN" >> "$W/target.log" 2>&1 || { why "nvmet teardown failed: $(tail -1 "$W/target.log")"; return 1; }
      say "nvmet stopped";;
  esac
}

# More checks (run-case.sh's EXTRA_CHECKS), with everything above at hand.
if [ -f "$W/checks-extra.sh" ]; then . "$W/checks-extra.sh" || exit 1; fi

echo "guest: kernel $(uname -r), $(nproc) CPUs, up $(cut -d' ' -f1 /proc/uptime)s at the start of the checks"
echo "guest: target $TARGET, backend $BACKEND, $TRANSPORT $ADDR:$PORT $NQN; checks: $CHECKS"
cd /tmp || exit 1
# Verbs registrations lock memory; root could anyway (CAP_IPC_LOCK), a target run otherwise could not.
ulimit -l unlimited
T0=$(now)
for c in $CHECKS; do
  t=$(now)
  echo "--- $c"
  if "check_$c"; then
    echo "CHECK $c: ok"; passed=$((passed + 1))
    echo "STEP $c $(since "$t")s"
  else
    echo "CHECK $c: FAILED"; failed=$((failed + 1))
    dmesg | grep -v 'speed is unknown' | tail -15 | sed 's/^/  dmesg: /'
    echo "STEP $c $(since "$t")s"
    # Without the link nothing can run; without a listening target the host has nothing to reach.
    if [ "$c" = link ] || [ "$c" = target ]; then echo "guest: stopping after $c"; break; fi
  fi
done
[ -z "$TGT_PID" ] || kill -TERM "$TGT_PID" 2>/dev/null
[ -z "$RELOAD_PID" ] || kill "$RELOAD_PID" 2>/dev/null
dmesg > "$W/dmesg.txt"
echo "guest: $passed checks ok, $failed failed in $(since "$T0")s"
[ "$failed" = 0 ] && [ "$passed" != 0 ]
