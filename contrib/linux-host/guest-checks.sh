# Runs inside the guest as /tmp/work/test.sh; PORT and NQN are substituted by run-case.sh.
# Every step prints "STEP name seconds"; any failure exits with a code naming the step.
set -x
PORT=@PORT@ NQN=@NQN@ ADDR=10.0.2.2
T0=$(date +%s.%N)
step() { echo "STEP $1 $(awk "BEGIN{printf \"%.1f\", $(date +%s.%N) - $T0}")s"; }
opts="--ctrl-loss-tmo=5 --reconnect-delay=1 --keep-alive-tmo=5"
dev() { for i in $(seq 100); do d=$(ls /dev/nvme*n1 2>/dev/null | head -1); [ -b "$d" ] && { echo "$d"; return 0; }; sleep 0.1; done; return 1; }
gone() { for i in $(seq 100); do ls /dev/nvme*n1 >/dev/null 2>&1 || return 0; sleep 0.1; done; return 1; }

modprobe nvme-tcp || exit 10
timeout 30 nvme discover -t tcp -a $ADDR -s $PORT > /tmp/work/discover.txt || exit 11
cat /tmp/work/discover.txt
grep -q "$NQN" /tmp/work/discover.txt || exit 11
step discover

# 1: plain connect, identify, 32 MiB integrity, fio verify at 4K and 128K.
timeout 30 nvme connect -t tcp -a $ADDR -s $PORT -n $NQN $opts || exit 12
D=$(dev) || exit 12
step connect
nvme list-subsys || exit 13
nvme id-ctrl /dev/nvme0 -o json > /tmp/work/id-ctrl.json || exit 13
nvme id-ns $D -o json > /tmp/work/id-ns.json || exit 13
grep -q '"subnqn"' /tmp/work/id-ctrl.json || exit 13
head -c 32M /dev/urandom > /tmp/pattern
timeout 120 dd if=/tmp/pattern of=$D bs=128k oflag=direct conv=fsync status=none || exit 14
timeout 120 dd if=$D of=/tmp/readback bs=128k count=256 iflag=direct status=none || exit 15
cmp /tmp/pattern /tmp/readback || exit 16
echo "INTEGRITY-OK 32MiB"
step integrity
for bs in 4k 128k; do
  timeout 150 fio --name=verify-$bs --filename=$D --direct=1 --ioengine=libaio --rw=randwrite --bs=$bs \
      --iodepth=16 --size=16M --verify=crc32c --do_verify=1 --verify_fatal=1 \
      --output=/tmp/work/fio-verify-$bs.txt || exit 17
done
step fio-verify
timeout 30 nvme disconnect -n $NQN || exit 18
gone || exit 18
step disconnect

# 2: header and data digests, two I/O queues: integrity and a randread figure.
timeout 30 nvme connect -t tcp -a $ADDR -s $PORT -n $NQN $opts --hdr-digest --data-digest --nr-io-queues=2 || exit 20
D=$(dev) || exit 20
step connect-digests
timeout 120 dd if=/tmp/pattern of=$D bs=64k count=128 oflag=direct conv=fsync status=none || exit 21
timeout 120 dd if=$D of=/tmp/readback2 bs=64k count=128 iflag=direct status=none || exit 21
head -c 8M /tmp/pattern > /tmp/p8
cmp /tmp/p8 /tmp/readback2 || exit 22
echo "INTEGRITY-OK 8MiB digests"
timeout 60 fio --name=rr --filename=$D --direct=1 --ioengine=libaio --rw=randread --bs=4k --iodepth=32 \
    --numjobs=2 --group_reporting --runtime=5 --time_based --output-format=json --output=/tmp/work/fio-randread.json || exit 23
python3 -c "import json;j=json.load(open('/tmp/work/fio-randread.json'))['jobs'][0]['read'];print('FIO randread 4k qd32x2: %d IOPS, mean lat %.0f us'%(j['iops'],j['lat_ns']['mean']/1e3))"
step fio-randread
timeout 30 nvme disconnect -n $NQN || exit 24
step disconnect-digests

# 3: hot reload seen by the Linux host. The host side (run-case.sh) adds namespace 2 to the
# declaration when it sees reload-add, and removes it on reload-remove; the kernel must
# rescan by itself on the Namespace Attribute Changed event, and I/O on namespace 1 goes on.
timeout 30 nvme connect -t tcp -a $ADDR -s $PORT -n $NQN $opts || exit 30
D=$(dev) || exit 30
step connect-reload
touch /tmp/work/reload-add
ok=""; for i in $(seq 600); do ls /dev/nvme*n2 >/dev/null 2>&1 && { ok=1; break; }; sleep 0.1; done
[ -n "$ok" ] || exit 31
echo "RELOAD-OK namespace 2 appeared without reconnecting"
timeout 60 dd if=$D of=/tmp/readback3 bs=64k count=128 iflag=direct status=none || exit 32
cmp /tmp/p8 /tmp/readback3 || exit 32
step reload-add
touch /tmp/work/reload-remove
ok=""; for i in $(seq 600); do ls /dev/nvme*n2 >/dev/null 2>&1 || { ok=1; break; }; sleep 0.1; done
[ -n "$ok" ] || exit 33
timeout 60 dd if=$D of=/tmp/readback4 bs=64k count=128 iflag=direct status=none || exit 34
cmp /tmp/p8 /tmp/readback4 || exit 34
echo "RELOAD-OK namespace 2 went away, namespace 1 still serves"
step reload-remove
timeout 30 nvme disconnect -n $NQN || exit 35
step disconnect-reload
