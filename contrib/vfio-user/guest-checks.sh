#!/bin/bash
# Runs in the guest (run-case.sh's WORKDIR/test.sh execs it from /tmp/work): the Linux `nvme`
# PCI driver against the vfio-user controller. Every check prints "CHECK name: ok" or
# "CHECK name: FAILED" and "STEP name seconds"; the exit code is 0 when every check passed.
# env: CHECKS      checks to run, in order (default: device driver identify integrity fio reset
#                  rebind, nshotplug when NS_HOTPLUG=1, idle when IDLE_SECONDS > 0)
#      PCI_CLASS   the device to wait for (default 0x010802, NVMe); PCI_ID=vvvv:dddd instead
#                  matches vendor and device IDs (the device check reports every PCI function)
#      DEVICE_WAIT seconds to wait for it (default 30)
#      EXPECT_SN, EXPECT_MN, EXPECT_NS_BYTES  what Identify must report (checked when set)
#      FIO_OFFSET  where fio works on the namespace (default 64M; integrity uses the first 32 MiB)
set -uo pipefail
W=/tmp/work
PCI_CLASS=${PCI_CLASS:-0x010802}
PCI_ID=${PCI_ID:-}
DEVICE_WAIT=${DEVICE_WAIT:-30}
FIO_OFFSET=${FIO_OFFSET:-64M}
if [ -z "${CHECKS:-}" ]; then
  CHECKS="device driver identify integrity fio reset rebind"
  [ "${NS_HOTPLUG:-0}" != 1 ] || CHECKS="$CHECKS nshotplug"
  [ "${IDLE_SECONDS:-0}" = 0 ] || CHECKS="$CHECKS idle"
fi
BDF="" CTRL="" D="" PATTERN_OK=""
passed=0 failed=0

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
no() { ! "$@"; }
say() { echo "  $*"; }

# sysfs attributes are read with the read builtin: forks are slow under TCG.
attr() { local v=""; read -r v < "$1" 2>/dev/null; printf '%s' "$v"; }
pci_list() {
  local d drv
  for d in /sys/bus/pci/devices/*; do
    drv=$(readlink "$d/driver" 2>/dev/null) || drv=none
    say "${d##*/} $(attr "$d/vendor"):$(attr "$d/device") class=$(attr "$d/class") subsystem=$(attr "$d/subsystem_vendor"):$(attr "$d/subsystem_device") driver=${drv##*/}"
  done
}
# The first PCI function that is the device we wait for, in BDF.
found_device() {
  local d v dv c
  for d in /sys/bus/pci/devices/*; do
    read -r c < "$d/class" 2>/dev/null || continue
    if [ -n "$PCI_ID" ]; then
      read -r v < "$d/vendor"; read -r dv < "$d/device"
      [ "${v#0x}:${dv#0x}" = "${PCI_ID,,}" ] || continue
    else
      [ "$c" = "$PCI_CLASS" ] || continue
    fi
    BDF=${d##*/}
    return 0
  done
  return 1
}
check_device() {
  local want=${PCI_ID:-class $PCI_CLASS} d
  wait_until "$DEVICE_WAIT" found_device
  echo "PCI functions in /sys/bus/pci/devices:"
  pci_list
  [ -n "$BDF" ] || { say "no PCI function with $want after ${DEVICE_WAIT}s"; return 1; }
  d=/sys/bus/pci/devices/$BDF
  say "found $want at $BDF: vendor $(attr "$d/vendor") device $(attr "$d/device") class $(attr "$d/class") irq $(attr "$d/irq")"
  say "resources (start end flags), BAR0..5 then ROM:"
  head -7 "$d/resource" | sed 's/^/    /'
  if command -v lspci >/dev/null; then lspci -vv -nn -s "$BDF" | sed 's/^/    /'; fi
  return 0
}

ctrl_of() { local c; for c in "/sys/bus/pci/devices/$BDF/nvme/"nvme*; do [ -e "$c" ] && { basename "$c"; return 0; }; done; return 1; }
found_ctrl() { CTRL=$(ctrl_of); }
live() { local s=""; read -r s < "/sys/class/nvme/$CTRL/state" 2>/dev/null; [ "$s" = live ]; }
block() { [ -b "$1" ]; }
# Waits for the controller under BDF to be live with namespace 1 as a block device.
attached() {
  wait_until 60 found_ctrl || { say "no nvme controller under $BDF"; return 1; }
  wait_until 60 live || { say "$CTRL state: $(attr "/sys/class/nvme/$CTRL/state")"; return 1; }
  D=/dev/${CTRL}n1
  wait_until 60 block "$D" || { say "no $D"; return 1; }
  say "$BDF: $CTRL $(attr "/sys/class/nvme/$CTRL/state"), $D $(blockdev --getsize64 "$D") bytes"
}
check_driver() {
  modprobe nvme || { say "modprobe nvme failed"; return 1; }
  attached || return 1
  dmesg | grep -E "nvme[0-9]* ?[0-9:.]*: " | sed 's/^/  dmesg: /'
}

check_identify() {
  timeout 30 nvme list > "$W/nvme-list.txt" || { say "nvme list failed"; return 1; }
  sed 's/^/    /' "$W/nvme-list.txt"
  timeout 30 nvme id-ctrl "/dev/$CTRL" -o json > "$W/id-ctrl.json" || { say "nvme id-ctrl failed"; return 1; }
  timeout 30 nvme id-ns "$D" -o json > "$W/id-ns.json" || { say "nvme id-ns failed"; return 1; }
  python3 - "$W/id-ctrl.json" "$W/id-ns.json" <<'EOF'
import json, os, sys
ctrl = json.load(open(sys.argv[1]))
ns = json.load(open(sys.argv[2]))
lbads = ns["lbafs"][ns["flbas"] & 0xF]["ds"]
size = ns["nsze"] << lbads
print("  id-ctrl: vid 0x%04x ssvid 0x%04x sn %r mn %r fr %r ver 0x%x mdts %d nn %d sqes 0x%x cqes 0x%x"
      % (ctrl["vid"], ctrl["ssvid"], ctrl["sn"].strip(), ctrl["mn"].strip(), ctrl["fr"].strip(),
         ctrl["ver"], ctrl["mdts"], ctrl["nn"], ctrl["sqes"], ctrl["cqes"]))
print("  id-ns: nsze %d ncap %d nuse %d flbas %d lba %d bytes: %d bytes" %
      (ns["nsze"], ns["ncap"], ns["nuse"], ns["flbas"], 1 << lbads, size))
bad = []
for key, field in (("EXPECT_SN", "sn"), ("EXPECT_MN", "mn")):
    want = os.environ.get(key)
    if want and ctrl[field].strip() != want:
        bad.append("%s %r, expected %r" % (field, ctrl[field].strip(), want))
want = os.environ.get("EXPECT_NS_BYTES")
if want and size != int(want):
    bad.append("namespace 1 has %d bytes, expected %s" % (size, want))
if ctrl["sqes"] & 0xF != 6 or ctrl["cqes"] & 0xF != 4:
    bad.append("SQES/CQES minimum is not 64/16 bytes")
for b in bad:
    print("  identify: " + b)
sys.exit(1 if bad else 0)
EOF
}

check_integrity() {
  head -c 32M /dev/urandom > /tmp/pattern || return 1
  timeout 120 dd if=/tmp/pattern of="$D" bs=128k oflag=direct conv=fsync status=none || { say "write failed"; return 1; }
  timeout 120 dd if="$D" of=/tmp/readback bs=128k count=256 iflag=direct status=none || { say "read failed"; return 1; }
  cmp /tmp/pattern /tmp/readback || return 1
  head -c 8M /tmp/pattern > /tmp/pattern8
  PATTERN_OK=1
  say "32 MiB written, read back and compared"
}
# Reads the first 8 MiB of namespace 1 and, when integrity wrote the pattern, compares it.
read_back() {
  timeout 60 dd if="$D" of=/tmp/readback8 bs=64k count=128 iflag=direct status=none || { say "read of $D failed"; return 1; }
  if [ -n "$PATTERN_OK" ]; then
    cmp /tmp/pattern8 /tmp/readback8 || return 1
    say "8 MiB read from $D match what integrity wrote"
  fi
}

check_fio() {
  local bs size rc=0
  for bs in 4k 128k; do
    size=$([ "$bs" = 4k ] && echo 8M || echo 32M)
    timeout 180 fio --name="verify-$bs" --filename="$D" --offset="$FIO_OFFSET" --size="$size" \
        --direct=1 --ioengine=libaio --iodepth=16 --rw=randwrite --bs="$bs" \
        --verify=crc32c --do_verify=1 --verify_fatal=1 --output="$W/fio-verify-$bs.txt" || {
      say "fio $bs failed:"; tail -15 "$W/fio-verify-$bs.txt" | sed 's/^/    /'; rc=1; continue; }
    say "fio $bs verify ($size at $FIO_OFFSET):$(grep -m2 -E '^ +(write|read):' "$W/fio-verify-$bs.txt" | sed 's/,.*//' | tr -s ' ' | tr '\n' ';')"
  done
  return $rc
}

check_reset() {
  timeout 60 sh -c "echo 1 > /sys/class/nvme/$CTRL/reset_controller" || { say "reset_controller failed"; return 1; }
  wait_until 60 live || { say "$CTRL not live after reset: $(attr "/sys/class/nvme/$CTRL/state")"; return 1; }
  wait_until 30 block "$D" || { say "no $D after reset"; return 1; }
  read_back
}

unbound() { [ ! -e "/sys/bus/pci/devices/$BDF/driver" ] && [ ! -b "$D" ]; }
check_rebind() {
  timeout 60 sh -c "echo $BDF > /sys/bus/pci/drivers/nvme/unbind" || { say "unbind failed"; return 1; }
  wait_until 30 unbound || { say "$BDF still bound or $D still there after unbind"; return 1; }
  say "$BDF unbound, $D gone"
  timeout 60 sh -c "echo $BDF > /sys/bus/pci/drivers/nvme/bind" || { say "bind failed"; return 1; }
  attached && read_back
}

# The host (run-case.sh) adds namespace 2 to the declaration when it sees ns-ready and removes
# it when it sees ns-seen; the kernel rescans on the Namespace Attribute Changed event.
check_nshotplug() {
  local n2=/dev/${CTRL}n2 rc=0
  rm -f "$W/ns-seen" "$W/ns-done"
  touch "$W/ns-ready"
  if wait_until 90 block "$n2"; then
    say "$n2 appeared: $(blockdev --getsize64 "$n2") bytes"
    timeout 30 dd if="$n2" of=/dev/null bs=64k count=16 iflag=direct status=none || { say "read of $n2 failed"; rc=1; }
  else
    say "$n2 did not appear within 90s"; rc=1
  fi
  touch "$W/ns-seen"
  if [ $rc = 0 ]; then
    if wait_until 90 no block "$n2"; then say "$n2 went away"; else say "$n2 still there after 90s"; rc=1; fi
  fi
  touch "$W/ns-done"
  [ $rc = 0 ] && read_back
}

# The guest sits idle with the controller bound while the host measures the target's CPU
# between the two markers.
check_idle() {
  touch "$W/idle-start"
  sleep "${IDLE_SECONDS:-30}"
  touch "$W/idle-end"
  wait_until 10 test -e "$W/idle-measured"
}

echo "guest: kernel $(uname -r), up $(cut -d' ' -f1 /proc/uptime)s at the start of the checks"
echo "guest: checks: $CHECKS"
cd /tmp || exit 1   # fio writes verify state files in the current directory; / is read-only
T0=$(now)
for c in $CHECKS; do
  t=$(now)
  echo "--- $c"
  if "check_$c"; then
    echo "CHECK $c: ok"; passed=$((passed + 1))
  else
    echo "CHECK $c: FAILED"; failed=$((failed + 1))
    dmesg | tail -25 | sed 's/^/  dmesg: /'
  fi
  echo "STEP $c $(since "$t")s"
  # Without the device or its driver, nothing after can run.
  if [ "$failed" != 0 ] && { [ "$c" = device ] || [ "$c" = driver ]; }; then
    echo "guest: stopping after $c"
    break
  fi
done
dmesg > "$W/dmesg.txt"
echo "guest: $passed checks ok, $failed failed in $(since "$T0")s"
[ "$failed" = 0 ] && [ "$passed" != 0 ]
