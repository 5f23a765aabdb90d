#!/bin/sh
# PID 1 in the guest: network up, run /tmp/work/test.sh, record its exit code, power off.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
mkdir -p /dev/shm /dev/pts; mount -t tmpfs shm /dev/shm; mount -t devpts devpts /dev/pts
ip link set lo up
modprobe virtio_net && sleep 0.2
ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2
rc=99
[ -f /tmp/work/test.sh ] && { sh /tmp/work/test.sh > /tmp/work/test.log 2>&1; rc=$?; }
echo $rc > /tmp/work/rc
sync
/bin/busybox poweroff -f
