# The Linux NVMe-oF host's checks against one subsystem, run inside the guest with sh (copied
# into /tmp/work by contrib/linux-host/run-case.sh and contrib/rdma/run-case.sh).
# env: TRANSPORT  tcp (default) or rdma: nvme-cli's -t and the host module nvme-TRANSPORT
#      ADDR       the target's address (default 10.0.2.2: the host, as qemu user networking shows it)
#      PORT NQN   the target's port and the subsystem under test
# Every step prints "STEP name seconds"; a failure prints "FAILED name (exit N)" and exits with
# N, a code naming the step (10-18 first connect, 20-24 two I/O queues, 30-35 reload).
set -x
TRANSPORT=${TRANSPORT:-tcp} ADDR=${ADDR:-10.0.2.2} PORT=${PORT:?} NQN=${NQN:?}
T0=$(date +%s.%N)
step() { echo "STEP $1 $(awk "BEGIN{printf \"%.1f\", $(date +%s.%N) - $T0}")s"; }
fail() { echo "FAILED $2 (exit $1)"; exit "$1"; }
opts="--ctrl-loss-tmo=5 --reconnect-delay=1 --keep-alive-tmo=5"
# Header and data digests are NVMe/TCP's; RDMA has none (its links check their own frames).
digests=""; [ "$TRANSPORT" = tcp ] && digests="--hdr-digest --data-digest"
dev() { for i in $(seq 100); do d=$(ls /dev/nvme*n1 2>/dev/null | head -1); [ -b "$d" ] && { echo "$d"; return 0; }; sleep 0.1; done; return 1; }
gone() { for i in $(seq 100); do ls /dev/nvme*n1 >/dev/null 2>&1 || return 0; sleep 0.1; done; return 1; }
connect() { timeout 30 nvme connect -t "$TRANSPORT" -a "$ADDR" -s "$PORT" -n "$NQN" $opts "$@"; }
cd /tmp || exit 1   # fio may write verify state files in the current directory; / is read-only

modprobe "nvme-$TRANSPORT" || fail 10 "modprobe nvme-$TRANSPORT"
timeout 30 nvme discover -t "$TRANSPORT" -a "$ADDR" -s "$PORT" > /tmp/work/discover.txt || fail 11 discover
cat /tmp/work/discover.txt
grep -q "$NQN" /tmp/work/discover.txt || fail 11 "discover: $NQN not in the log"
step discover

# 1: plain connect, identify, 32 MiB integrity, fio verify at 4K and 128K.
connect || fail 12 connect
D=$(dev) || fail 12 "connect: no namespace block device"
step connect
nvme list-subsys || fail 13 list-subsys
nvme id-ctrl /dev/nvme0 -o json > /tmp/work/id-ctrl.json || fail 13 id-ctrl
nvme id-ns $D -o json > /tmp/work/id-ns.json || fail 13 id-ns
grep -q '"subnqn"' /tmp/work/id-ctrl.json || fail 13 "id-ctrl: no subnqn"
head -c 32M /dev/urandom > /tmp/pattern
timeout 120 dd if=/tmp/pattern of=$D bs=128k oflag=direct conv=fsync status=none || fail 14 "dd write"
timeout 120 dd if=$D of=/tmp/readback bs=128k count=256 iflag=direct status=none || fail 15 "dd read"
cmp /tmp/pattern /tmp/readback || fail 16 "cmp: 32 MiB read back differ"
echo "INTEGRITY-OK 32MiB"
step integrity
for bs in 4k 128k; do
  timeout 150 fio --name=verify-$bs --filename=$D --direct=1 --ioengine=libaio --rw=randwrite --bs=$bs \
      --iodepth=16 --size=16M --verify=crc32c --do_verify=1 --verify_fatal=1 \
      --output=/tmp/work/fio-verify-$bs.txt || fail 17 "fio verify $bs"
done
step fio-verify
timeout 30 nvme disconnect -n $NQN || fail 18 disconnect
gone || fail 18 "disconnect: block device still there"
step disconnect

# 2: two I/O queues (with header and data digests on TCP): integrity and a randread figure.
connect $digests --nr-io-queues=2 || fail 20 "connect --nr-io-queues=2 $digests"
D=$(dev) || fail 20 "connect --nr-io-queues=2: no namespace block device"
step connect-2q${digests:+-digests}
timeout 120 dd if=/tmp/pattern of=$D bs=64k count=128 oflag=direct conv=fsync status=none || fail 21 "dd write (2 queues)"
timeout 120 dd if=$D of=/tmp/readback2 bs=64k count=128 iflag=direct status=none || fail 21 "dd read (2 queues)"
head -c 8M /tmp/pattern > /tmp/p8
cmp /tmp/p8 /tmp/readback2 || fail 22 "cmp: 8 MiB read back differ (2 queues)"
echo "INTEGRITY-OK 8MiB 2 queues${digests:+ digests}"
timeout 60 fio --name=rr --filename=$D --direct=1 --ioengine=libaio --rw=randread --bs=4k --iodepth=32 \
    --numjobs=2 --group_reporting --runtime=5 --time_based --output-format=json --output=/tmp/work/fio-randread.json || fail 23 "fio randread"
python3 -c "import json;j=json.load(open('/tmp/work/fio-randread.json'))['jobs'][0]['read'];print('FIO randread 4k qd32x2: %d IOPS, mean lat %.0f us'%(j['iops'],j['lat_ns']['mean']/1e3))"
step fio-randread
timeout 30 nvme disconnect -n $NQN || fail 24 "disconnect (2 queues)"
gone || fail 24 "disconnect (2 queues): block device still there"
step disconnect-2q

# 3: hot reload seen by the Linux host. Whoever runs the target (ns-reload.sh) adds namespace 2
# when it sees reload-add and removes it on reload-remove; the kernel must rescan by itself on
# the Namespace Attribute Changed event, and I/O on namespace 1 goes on.
connect || fail 30 "connect (reload)"
D=$(dev) || fail 30 "connect (reload): no namespace block device"
step connect-reload
touch /tmp/work/reload-add
ok=""; for i in $(seq 600); do ls /dev/nvme*n2 >/dev/null 2>&1 && { ok=1; break; }; sleep 0.1; done
[ -n "$ok" ] || fail 31 "reload: namespace 2 did not appear within 60s"
echo "RELOAD-OK namespace 2 appeared without reconnecting"
timeout 60 dd if=$D of=/tmp/readback3 bs=64k count=128 iflag=direct status=none || fail 32 "dd read after adding namespace 2"
cmp /tmp/p8 /tmp/readback3 || fail 32 "cmp after adding namespace 2"
step reload-add
touch /tmp/work/reload-remove
ok=""; for i in $(seq 600); do ls /dev/nvme*n2 >/dev/null 2>&1 || { ok=1; break; }; sleep 0.1; done
[ -n "$ok" ] || fail 33 "reload: namespace 2 still there after 60s"
timeout 60 dd if=$D of=/tmp/readback4 bs=64k count=128 iflag=direct status=none || fail 34 "dd read after removing namespace 2"
cmp /tmp/p8 /tmp/readback4 || fail 34 "cmp after removing namespace 2"
echo "RELOAD-OK namespace 2 went away, namespace 1 still serves"
step reload-remove
timeout 30 nvme disconnect -n $NQN || fail 35 "disconnect (reload)"
step disconnect-reload
