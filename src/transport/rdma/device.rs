//! The RDMA devices a listener's connections arrive on: one protection domain per device,
//! opened at the first connection request it brings and kept for the next ones, with what
//! the device allows, and (unless `no_srq`) the device's shared receive queue.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::sys::verbs::{
    CmId, Cq, Device, DeviceAttrs, EventChannel, MemoryRegion, OutOfBounds, Pd, Srq, WorkCompletion,
};

/// How long a closed connection's QP is kept for the receives it still owes the SRQ.
pub const RETIRE_FOR: Duration = Duration::from_secs(1);

/// The slot of a receive completion: receives carry their slot as work request ID, and
/// every other work request of a connection an ID above `u16::MAX`.
pub fn receive_slot(wr_id: u64) -> Option<u16> {
    u16::try_from(wr_id).ok()
}

/// A closed connection's QP (disconnected: in the error state) with its CQ and CM channel.
/// A QP on an SRQ may have taken a receive whose message was cut off by the disconnect; it
/// completes (flushed) only after, and destroying the QP at once would lose its slot for
/// good, one per connection a host breaks mid-send. So the QP is kept [`RETIRE_FOR`], its
/// CQ drained into the SRQ, then destroyed.
pub struct Retired {
    /// Held only to be dropped, first: the QP goes before its CQ and the channel.
    _id: CmId,
    _events: EventChannel,
    cq: Cq,
    until: Instant,
}

impl Retired {
    /// `id`'s QP, disconnected, kept from `now` for [`RETIRE_FOR`].
    pub fn new(id: CmId, events: EventChannel, cq: Cq, now: Instant) -> Self {
        Self {
            _id: id,
            _events: events,
            cq,
            until: now + RETIRE_FOR,
        }
    }
}

/// One device and its protection domain.
#[derive(Debug, Clone)]
pub struct DeviceEntry {
    pub device: Device,
    pub pd: Pd,
    pub attrs: DeviceAttrs,
    /// The receives every connection on the device shares; `None` with `no_srq` (each QP
    /// then posts its own).
    pub shared_receives: Option<Arc<SharedReceives>>,
}

/// A shared receive queue and the capsule slots posted on it, registered once: `depth`
/// slots of one capsule (SQE + in-capsule data) each. A connection whose QP takes a capsule
/// copies it out of its slot and posts the slot again at once, so no host holds a slot: the
/// memory is `depth` capsules whatever the number of connections.
///
/// Connections on several reactors share it: posting to an SRQ is thread-safe, and a slot
/// belongs to the device until a receive completion hands it to one connection, which alone
/// reads it and gives it back.
pub struct SharedReceives {
    /// Declared first: destroyed before the memory its receives fill.
    srq: Srq,
    region: MemoryRegion,
    capsule_len: usize,
    depth: u16,
    /// Closed connections' QPs still owing slots, at most one per connection closed in the
    /// last [`RETIRE_FOR`].
    retired: Mutex<Vec<Retired>>,
    /// The device reported the SRQ broken (SRQ error): new connections get a new one.
    broken: AtomicBool,
}

impl core::fmt::Debug for SharedReceives {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SharedReceives")
            .field("depth", &self.depth)
            .field("capsule_len", &self.capsule_len)
            .finish_non_exhaustive()
    }
}

impl SharedReceives {
    /// An SRQ of `depth` capsules of `capsule_len` bytes on `pd`, every slot posted.
    fn new(pd: &Pd, depth: u16, capsule_len: usize) -> io::Result<Self> {
        let region = MemoryRegion::new(pd, capsule_len * usize::from(depth))?;
        let srq = Srq::new(pd, u32::from(depth), 1, &[&region])?;
        let shared = Self {
            srq,
            region,
            capsule_len,
            depth,
            retired: Mutex::new(Vec::new()),
            broken: AtomicBool::new(false),
        };
        for slot in 0..depth {
            shared.repost(slot)?;
        }
        Ok(shared)
    }

    pub fn srq(&self) -> &Srq {
        &self.srq
    }

    /// Marks the SRQ broken: the device said so; it takes no more connections.
    pub fn mark_broken(&self) {
        self.broken.store(true, Ordering::Release);
    }

    fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Acquire)
    }

    pub fn depth(&self) -> u16 {
        self.depth
    }

    /// Copies the capsule slot `slot` received (`len` bytes, at most a capsule) into `out`.
    pub fn read(&self, slot: u16, out: &mut [u8]) -> Result<(), OutOfBounds> {
        let len = out.len().min(self.capsule_len);
        self.region
            .read_at(usize::from(slot) * self.capsule_len, &mut out[..len])
    }

    /// Gives slot `slot` back to the device: posts it on the SRQ again. Its work request ID
    /// is the slot.
    pub fn repost(&self, slot: u16) -> io::Result<()> {
        if slot >= self.depth {
            return Err(io::Error::other(format!(
                "receive slot {slot} is not one of the SRQ's {}",
                self.depth
            )));
        }
        let sge = self
            .region
            .sge(usize::from(slot) * self.capsule_len, self.capsule_len)
            .map_err(io::Error::other)?;
        self.srq.post_recv(u64::from(slot), &[sge])
    }

    /// Keeps a closed connection's QP until its receives are back (see [`Retired`]).
    pub fn retire(&self, retired: Retired, now: Instant) {
        let Ok(mut list) = self.retired.lock() else {
            return;
        };
        list.push(retired);
        self.harvest_locked(&mut list, now);
    }

    /// Gives back what retired QPs' CQs hold, and destroys those kept long enough.
    pub fn harvest(&self, now: Instant) {
        if let Ok(mut list) = self.retired.lock() {
            self.harvest_locked(&mut list, now);
        }
    }

    /// When the next retired QP is due to go.
    pub fn next_harvest(&self) -> Option<Instant> {
        let list = self.retired.lock().ok()?;
        list.iter().map(|r| r.until).min()
    }

    fn harvest_locked(&self, list: &mut Vec<Retired>, now: Instant) {
        let mut batch: [WorkCompletion; 8] = Default::default();
        list.retain_mut(|retired| {
            while let Ok(n @ 1..) = retired.cq.poll(&mut batch) {
                for wc in &batch[..n] {
                    if let Some(slot) = receive_slot(wc.wr_id()) {
                        if let Err(err) = self.repost(slot) {
                            debug!(%err, slot, "cannot give a receive back to the SRQ");
                        }
                    }
                }
            }
            retired.until > now
        });
    }
}

/// How a listener's devices are opened.
#[derive(Debug, Clone, Copy)]
pub struct DeviceOptions {
    /// Shared receive queue slots per device (`max_srq_depth`, within what the device
    /// allows); `None` with `no_srq`.
    pub srq_depth: Option<u16>,
    /// Bytes per receive: an SQE and the in-capsule data.
    pub capsule_len: usize,
}

/// The devices seen so far, by identity.
#[derive(Debug)]
pub struct Devices {
    options: DeviceOptions,
    by_handle: HashMap<usize, DeviceEntry>,
}

impl Devices {
    pub fn new(options: DeviceOptions) -> Self {
        Self {
            options,
            by_handle: HashMap::new(),
        }
    }

    /// Whether `device` was opened already.
    pub fn knows(&self, device: &Device) -> bool {
        self.by_handle.contains_key(&device.handle())
    }

    /// The entry of `device`, opened (PD allocated, attributes queried, SRQ filled) the
    /// first time.
    pub fn get_or_open(&mut self, device: Device) -> io::Result<DeviceEntry> {
        if let Some(entry) = self.by_handle.get_mut(&device.handle()) {
            if entry
                .shared_receives
                .as_ref()
                .is_some_and(|s| s.is_broken())
            {
                // Its connections were closed; the next ones get a new SRQ.
                warn!(device = %device.name(), "shared receive queue broken; making a new one");
                entry.shared_receives =
                    Self::open_srq(&self.options, &device, &entry.pd, &entry.attrs)?;
            }
            return Ok(entry.clone());
        }
        let attrs = device.attributes()?;
        let pd = Pd::new(&device)?;
        let shared_receives = Self::open_srq(&self.options, &device, &pd, &attrs)?;
        info!(
            device = %device.name(),
            max_qp_wr = attrs.max_qp_wr,
            max_cqe = attrs.max_cqe,
            max_qp_init_rd_atom = attrs.max_qp_init_rd_atom,
            srq_depth = shared_receives.as_ref().map(|s| s.depth()),
            "RDMA device in use"
        );
        let entry = DeviceEntry {
            device,
            pd,
            attrs,
            shared_receives,
        };
        self.by_handle.insert(device.handle(), entry.clone());
        Ok(entry)
    }

    /// The device's SRQ, unless `no_srq`.
    fn open_srq(
        options: &DeviceOptions,
        device: &Device,
        pd: &Pd,
        attrs: &DeviceAttrs,
    ) -> io::Result<Option<Arc<SharedReceives>>> {
        Ok(match options.srq_depth {
            Some(depth) => {
                let depth = depth.min(u16::try_from(attrs.max_srq_wr).unwrap_or(u16::MAX));
                if depth < 2 {
                    return Err(io::Error::other(format!(
                        "device {} has no usable shared receive queue (max_srq_wr {}); declare no_srq = true",
                        device.name(),
                        attrs.max_srq_wr
                    )));
                }
                Some(Arc::new(SharedReceives::new(
                    pd,
                    depth,
                    options.capsule_len,
                )?))
            }
            None => None,
        })
    }

    /// When the next closed connection's QP is due to go (see [`Retired`]).
    pub fn next_harvest(&self) -> Option<Instant> {
        self.shared_receives()
            .filter_map(SharedReceives::next_harvest)
            .min()
    }

    /// Gives back what closed connections' QPs hold and destroys those due.
    pub fn harvest(&self, now: Instant) {
        for shared in self.shared_receives() {
            shared.harvest(now);
        }
    }

    fn shared_receives(&self) -> impl Iterator<Item = &SharedReceives> {
        self.by_handle
            .values()
            .filter_map(|entry| entry.shared_receives.as_deref())
    }

    /// Forgets every device (one went away: DEVICE_REMOVAL); connections keep what they hold
    /// until they close.
    pub fn clear(&mut self) {
        self.by_handle.clear();
    }
}
