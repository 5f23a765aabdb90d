//! Bringing the controller up as a VMM and its guest's NVMe driver do, then running I/O on it:
//! VERSION, guest RAM by DMA_MAP, the device's regions and interrupts, MSI-X and bus master
//! in config space, eventfds by SET_IRQS, the admin queue by AQA/ASQ/ACQ and CC.EN, CSTS.RDY,
//! Identify, Doorbell Buffer Config when the controller offers it (OACS bit 8; Linux uses shadow
//! doorbells whenever it may, `--no-shadow-doorbells` does not), Number of Queues, then one
//! I/O CQ and SQ pair per queue.
//!
//! While the run goes, the session sleeps in epoll on the I/O queues' MSI-X eventfds (and on
//! the socket, so that a target that goes away is noticed); with `--busy-poll` the I/O CQs are
//! created without interrupts, as a driver's polled queues are, and nobody sleeps.

use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use rustix::event::{PollFd, PollFlags};
use rustix::net::RecvFlags;
use tracing::debug;

use super::VfioError;
use super::client::{Client, ClientError};
use super::guest::{
    Allocator, CqRing, DoorbellLayout, Doorbells, GuestRam, PAGE, ShadowBuffers, SqRing,
};
use super::queue::{QueueParams, SlotMemory, VfioQueue, set_prps};
use crate::nvme::cqe::CQE_LEN;
use crate::nvme::identify::{IdentifyController, oacs};
use crate::nvme::opcode::admin;
use crate::nvme::properties::{cc, csts, offset as reg};
use crate::nvme::sqe::SQE_LEN;
use crate::nvme::{Cqe, Sqe};
use crate::perf::io::{
    self, DoorbellUse, Limits, Namespace, TargetInfo, active_namespaces, check_options,
};
use crate::perf::{PerfConfig, PerfError, VfioUserTarget};
use crate::sys::EventFd;
use crate::sys::mmap::{MapProt, Mapping};
use crate::transport::vfio_user::device::{
    DOORBELL_BASE, command as pci_command, msix_control, offset as pci, region,
};
use crate::transport::vfio_user::msix;
use crate::transport::vfio_user::protocol::{Command, device_flags, region_flags};

/// Admin queue entries (both queues).
const ADMIN_ENTRIES: u16 = 32;
/// The MSI-X capability ID in the capability list.
const CAP_ID_MSIX: u8 = 0x11;
/// Token of the socket in the session's poll; I/O vectors use their queue ID.
const SOCKET: Token = Token(usize::MAX);
/// Pages one command's data may span: PRP1 and a list of one page (512 entries).
const MAX_PRP_PAGES: u64 = 1 + PAGE / 8;
/// CSTS is read this often while waiting for the controller.
const CSTS_POLL: Duration = Duration::from_millis(1);

/// A controller brought up over vfio-user, with its I/O queues.
pub struct Session {
    client: Client,
    ram: Arc<GuestRam>,
    admin: AdminQueue,
    queues: Vec<VfioQueue>,
    /// Vector 0 (admin) and one per I/O queue; the target holds duplicates.
    vectors: Vec<EventFd>,
    poll: Option<(Poll, Events)>,
    ns: Namespace,
    subnqn: String,
    socket_path: String,
    /// The shadow doorbell and EventIdx buffers, if the controller took them.
    shadow: Option<ShadowBuffers>,
}

impl Session {
    /// Connects to the target's socket and brings the controller up for `cfg`.
    pub fn connect(cfg: &PerfConfig, target: &VfioUserTarget) -> Result<Self, PerfError> {
        let path = target.socket.as_path();
        let during = |during: &'static str| {
            move |source: VfioError| match source {
                VfioError::Client(ClientError::Timeout { timeout, .. }) => {
                    PerfError::Timeout { timeout, during }
                }
                VfioError::Client(ClientError::Connect { path, source }) => {
                    PerfError::ConnectSocket { path, source }
                }
                source => PerfError::VfioUser {
                    during,
                    qid: None,
                    source,
                },
            }
        };
        let queues = cfg.connections;
        if queues == 0 {
            return Err(PerfError::Invalid("--queues must be at least 1".into()));
        }
        let mut client = Client::connect(path, cfg.timeout)
            .map_err(VfioError::from)
            .map_err(during("connecting"))?;
        let device = Device::probe(&mut client, queues).map_err(during("probing the device"))?;
        let ram_size = ram_size(cfg, queues);
        let ram = GuestRam::new(ram_size)
            .map_err(VfioError::Ram)
            .map_err(during("making guest RAM"))?;
        let mut alloc = Allocator::new(ram.size());
        client
            .dma_map(0, ram.size(), ram.fd(), 0)
            .map_err(VfioError::from)
            .map_err(during("mapping guest RAM"))?;
        let ram = Arc::new(ram);
        let vectors = enable_interrupts(&mut client, queues).map_err(during("enabling MSI-X"))?;
        let doorbells = device.doorbells(&client);
        debug!(mapped = doorbells.is_mapped(), "doorbells");
        let mut admin = AdminQueue::enable(
            &mut client,
            &ram,
            &mut alloc,
            doorbells.clone_for_queue(),
            cfg.timeout,
        )
        .map_err(during("enabling the controller"))?;
        let cap = admin.cap;

        let page = alloc
            .pages(PAGE)
            .ok_or_else(|| PerfError::Invalid("guest RAM too small for an Identify page".into()))?;
        let mut identify = |cns: u32, nsid: u32, what: &'static str| {
            let mut sqe = Sqe::new(admin::IDENTIFY, 0);
            sqe.set_nsid(nsid).set_cdw(10, cns);
            set_prps(&mut sqe, page, 0);
            admin
                .run(&sqe, &vectors[0])
                .and_then(|cqe| check_status(cqe, what))?;
            let mut buf = vec![0u8; 4096];
            ram.read(page, &mut buf)?;
            Ok::<_, VfioError>(buf)
        };
        let ctrl = identify(1, 0, "Identify Controller").map_err(during("identifying"))?;
        let ctrl = IdentifyController::parse(&ctrl).ok_or_else(|| {
            PerfError::Invalid("the target sent a short Identify Controller page".into())
        })?;
        let list = identify(2, 0, "Identify Active Namespaces").map_err(during("identifying"))?;
        let active = active_namespaces(&list);
        let nsid = match cfg.nsid {
            Some(nsid) => nsid,
            None => *active
                .first()
                .ok_or_else(|| PerfError::NoNamespace(ctrl.subnqn.clone()))?,
        };
        let not_found = || PerfError::NamespaceNotFound {
            nsid,
            subnqn: ctrl.subnqn.clone(),
        };
        if !active.contains(&nsid) {
            return Err(not_found());
        }
        let page_bytes = identify(0, nsid, "Identify Namespace").map_err(during("identifying"))?;
        let ns = Namespace::from_identify(nsid, &page_bytes).ok_or_else(not_found)?;
        let limits = Limits {
            max_entries: (cap & 0xFFFF) + 1,
            mdts: ctrl.mdts,
            page_size: 4096 << ((cap >> 48) & 0xF),
        };
        check_options(cfg, &ns, limits)?;
        if let Some(subnqn) = &target.subnqn {
            if *subnqn != ctrl.subnqn {
                return Err(PerfError::Invalid(format!(
                    "the controller belongs to subsystem {}, not {subnqn}",
                    ctrl.subnqn
                )));
            }
        }

        let mut session = Self {
            client,
            ram,
            admin,
            queues: Vec::new(),
            vectors,
            poll: None,
            ns,
            subnqn: ctrl.subnqn,
            socket_path: path.display().to_string(),
            shadow: None,
        };
        if cfg.shadow_doorbells && ctrl.oacs & oacs::DOORBELL_BUFFER_CONFIG != 0 {
            session.shadow = Some(
                session
                    .config_shadow(&mut alloc)
                    .map_err(during("configuring shadow doorbells"))?,
            );
        }
        debug!(shadow = session.shadow.is_some(), "shadow doorbells");
        session
            .create_queues(cfg, &device, &doorbells, &mut alloc)
            .map_err(during("creating I/O queues"))?;
        Ok(session)
    }

    /// Doorbell Buffer Config: a zeroed page each for the shadow doorbells and EventIdx, as
    /// Linux's driver gives them before it creates its I/O queues.
    fn config_shadow(&mut self, alloc: &mut Allocator) -> Result<ShadowBuffers, VfioError> {
        let full = || VfioError::Device("guest RAM is full".into());
        let shadow = alloc.pages(PAGE).ok_or_else(full)?;
        let event_idx = alloc.pages(PAGE).ok_or_else(full)?;
        let mut sqe = Sqe::new(admin::DOORBELL_BUFFER_CONFIG, 0);
        set_prps(&mut sqe, shadow, event_idx);
        self.admin_run(&sqe, "Doorbell Buffer Config")?;
        Ok(ShadowBuffers { shadow, event_idx })
    }

    /// Number of Queues, then a CQ and an SQ per queue, each with its slots' memory.
    fn create_queues(
        &mut self,
        cfg: &PerfConfig,
        device: &Device,
        doorbells: &Doorbells,
        alloc: &mut Allocator,
    ) -> Result<(), VfioError> {
        let n = u32::from(cfg.connections);
        let mut sqe = Sqe::new(admin::SET_FEATURES, 0);
        sqe.set_cdw(10, 0x07).set_cdw(11, (n - 1) | ((n - 1) << 16));
        let cqe = self.admin_run(&sqe, "Set Features (Number of Queues)")?;
        let (sqs, cqs) = ((cqe.dw0 & 0xFFFF) + 1, (cqe.dw0 >> 16) + 1);
        if sqs < n || cqs < n {
            return Err(VfioError::Device(format!(
                "{n} I/O queues asked for, the controller allows {}",
                sqs.min(cqs)
            )));
        }
        let entries = cfg
            .queue_depth
            .checked_add(1)
            .ok_or_else(|| VfioError::Device("queue depth too large".into()))?;
        let pages_per_io = (cfg.io_size as u64).div_ceil(PAGE);
        if pages_per_io > MAX_PRP_PAGES {
            return Err(VfioError::Device(format!(
                "I/O size {} needs more than one PRP list page (at most {} bytes)",
                cfg.io_size,
                MAX_PRP_PAGES * PAGE
            )));
        }
        let interrupts = !cfg.busy_poll;
        for qid in 1..=cfg.connections {
            let full = || VfioError::Device("guest RAM is full".into());
            let cq_base = alloc
                .pages(u64::from(entries) * CQE_LEN as u64)
                .ok_or_else(full)?;
            let sq_base = alloc
                .pages(u64::from(entries) * SQE_LEN as u64)
                .ok_or_else(full)?;
            let size = u32::from(entries - 1) << 16;
            let mut create_cq = Sqe::new(admin::CREATE_IO_CQ, 0);
            create_cq.set_cdw(10, u32::from(qid) | size).set_cdw(
                11,
                0x1 | (u32::from(interrupts) << 1) | (u32::from(qid) << 16),
            );
            set_prps(&mut create_cq, cq_base, 0);
            self.admin_run(&create_cq, "Create I/O Completion Queue")?;
            let mut create_sq = Sqe::new(admin::CREATE_IO_SQ, 0);
            create_sq
                .set_cdw(10, u32::from(qid) | size)
                .set_cdw(11, 0x1 | (u32::from(qid) << 16));
            set_prps(&mut create_sq, sq_base, 0);
            self.admin_run(&create_sq, "Create I/O Submission Queue")?;

            let mut slots = Vec::with_capacity(usize::from(cfg.queue_depth));
            for _ in 0..cfg.queue_depth {
                let data = alloc.pages(pages_per_io * PAGE).ok_or_else(full)?;
                let (prp1, prp2) = match pages_per_io {
                    1 => (data, 0),
                    2 => (data, data + PAGE),
                    n => {
                        let list = alloc.pages(PAGE).ok_or_else(full)?;
                        let entries: Vec<u8> = (1..n)
                            .flat_map(|i| (data + i * PAGE).to_le_bytes())
                            .collect();
                        self.ram.write(list, &entries)?;
                        (data, list)
                    }
                };
                slots.push(SlotMemory { data, prp1, prp2 });
            }
            let params = QueueParams {
                qid,
                nsid: self.ns.nsid,
                io_size: cfg.io_size,
                block_size: self.ns.block_size,
                copy_data: cfg.verify,
            };
            self.queues.push(
                VfioQueue::new(
                    params,
                    Arc::clone(&self.ram),
                    doorbells.clone_for_queue(),
                    device.layout,
                    (SqRing::new(sq_base, entries), CqRing::new(cq_base, entries)),
                    slots,
                )
                .with_shadow(self.shadow),
            );
        }
        Ok(())
    }

    fn admin_run(&mut self, sqe: &Sqe, what: &'static str) -> Result<Cqe, VfioError> {
        let cqe = self.admin.run(sqe, &self.vectors[0])?;
        check_status(cqe, what)
    }

    /// A readable socket while nothing is asked: the target hung up, or sent what nobody
    /// asked for; either ends the run.
    fn check_socket(&self) -> Result<(), PerfError> {
        let socket = self.client.socket();
        let mut byte = [0u8; 1];
        let fail = |source: ClientError| PerfError::VfioUser {
            during: "I/O",
            qid: None,
            source: VfioError::Client(source),
        };
        match rustix::net::recv(
            socket.as_fd(),
            &mut byte,
            RecvFlags::PEEK | RecvFlags::DONTWAIT,
        ) {
            Ok((0, _)) | Err(rustix::io::Errno::CONNRESET) => Err(fail(ClientError::Closed)),
            Ok(_) => Err(fail(ClientError::BadReply {
                command: Command::RegionWrite,
                what: "a message nobody asked for".into(),
            })),
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => Ok(()),
            Err(errno) => Err(fail(ClientError::Io(errno.into()))),
        }
    }
}

impl io::Session for Session {
    type Queue = VfioQueue;

    fn namespace(&self) -> Namespace {
        self.ns
    }

    fn queues(&mut self) -> &mut [VfioQueue] {
        &mut self.queues
    }

    fn wait(&mut self, timeout: Duration) -> Result<(), PerfError> {
        if self.poll.is_none() {
            let poll = Poll::new().map_err(PerfError::Poll)?;
            for (i, vector) in self.vectors.iter_mut().enumerate().skip(1) {
                poll.registry()
                    .register(vector, Token(i), Interest::READABLE)
                    .map_err(PerfError::Poll)?;
            }
            let socket = self.client.socket();
            poll.registry()
                .register(
                    &mut SourceFd(&socket.as_raw_fd()),
                    SOCKET,
                    Interest::READABLE,
                )
                .map_err(PerfError::Poll)?;
            self.poll = Some((poll, Events::with_capacity(64)));
        }
        let mut socket_ready = false;
        if let Some((poll, events)) = self.poll.as_mut() {
            poll.poll(events, Some(timeout)).map_err(PerfError::Poll)?;
            socket_ready = events.iter().any(|e| e.token() == SOCKET);
        }
        if socket_ready {
            self.check_socket()?;
        }
        Ok(())
    }

    fn housekeeping(&mut self, _now: Instant) -> Result<(), PerfError> {
        // PCIe has no Keep Alive: a VMM's controller lives as long as its socket.
        Ok(())
    }

    fn target(&self) -> TargetInfo {
        TargetInfo {
            transport: "vfio-user",
            address: self.socket_path.clone(),
            subnqn: self.subnqn.clone(),
        }
    }

    fn doorbells(&self) -> Option<DoorbellUse> {
        let (writes, shadow_updates) = self
            .queues
            .iter()
            .map(VfioQueue::doorbell_counts)
            .fold((0, 0), |(w, u), (qw, qu)| (w + qw, u + qu));
        Some(DoorbellUse {
            how: if self.admin.doorbells.is_mapped() {
                "mapped"
            } else {
                "trapped"
            },
            shadow: self.shadow.is_some(),
            writes,
            shadow_updates,
        })
    }
}

fn check_status(cqe: Cqe, what: &'static str) -> Result<Cqe, VfioError> {
    if cqe.status.is_success() {
        Ok(cqe)
    } else {
        Err(VfioError::Status {
            command: what,
            status: cqe.status,
        })
    }
}

/// Guest RAM for the run: the admin queue and an Identify page, and per I/O queue its rings,
/// its slots' data and PRP lists, rounded up to 2 MiB. The memfd holds only what is touched.
fn ram_size(cfg: &PerfConfig, queues: u16) -> u64 {
    let entries = u64::from(cfg.queue_depth) + 1;
    let pages_per_io = (cfg.io_size as u64).div_ceil(PAGE);
    let list_pages = u64::from(pages_per_io > 2);
    let ring_pages =
        (entries * CQE_LEN as u64).div_ceil(PAGE) + (entries * SQE_LEN as u64).div_ceil(PAGE);
    let per_queue = ring_pages + u64::from(cfg.queue_depth) * (pages_per_io + list_pages);
    // The null page, Identify, the shadow doorbell and EventIdx pages, the admin queue.
    let pages = 1
        + 3
        + 2
        + 2 * (u64::from(ADMIN_ENTRIES) * SQE_LEN as u64).div_ceil(PAGE)
        + u64::from(queues) * per_queue;
    (pages * PAGE).div_ceil(2 << 20) * (2 << 20)
}

/// What probing found: the device is a PCI function with the regions and interrupts a
/// controller of `queues` I/O queues needs.
struct Device {
    layout: DoorbellLayout,
    /// BAR0's doorbell area, if the target lets it be mapped.
    doorbell_page: Option<(Arc<Mapping>, u64)>,
}

impl Device {
    fn probe(client: &mut Client, queues: u16) -> Result<Self, VfioError> {
        client.negotiate()?;
        let info = client.device_info()?;
        if info.flags & device_flags::PCI == 0 || info.num_regions <= region::CONFIG {
            return Err(VfioError::Device(format!(
                "not a PCI device with a config region (flags {:#x}, {} regions)",
                info.flags, info.num_regions
            )));
        }
        if info.num_irqs <= msix::index::MSIX {
            return Err(VfioError::Device(format!(
                "no MSI-X interrupts ({} interrupt indexes)",
                info.num_irqs
            )));
        }
        let irqs = client.irq_info(msix::index::MSIX)?;
        let vectors = u32::from(queues) + 1;
        if irqs.count < vectors {
            return Err(VfioError::Device(format!(
                "{queues} I/O queues need {vectors} MSI-X vectors, the device has {}",
                irqs.count
            )));
        }
        let mut bar0 = client.region_info(region::BAR0)?;
        let rw = region_flags::READ | region_flags::WRITE;
        let layout = DoorbellLayout { stride: 4 };
        let last_doorbell = layout.cq_head(queues) + 4;
        if bar0.info.flags & rw != rw || bar0.info.size < last_doorbell {
            return Err(VfioError::Device(format!(
                "BAR0 of {} bytes (flags {:#x}) has no doorbells for {queues} queues",
                bar0.info.size, bar0.info.flags
            )));
        }
        let mut doorbell_page = None;
        if let (Some(fd), Some(areas)) = (bar0.fd.take(), bar0.info.sparse_mmap.as_ref()) {
            if bar0.info.flags & region_flags::MMAP != 0 {
                let covers = areas.iter().find(|&&(start, size)| {
                    start <= DOORBELL_BASE && start.saturating_add(size) >= last_doorbell
                });
                if let Some(&(start, size)) = covers {
                    let len = usize::try_from(size)
                        .map_err(|_| VfioError::Device("BAR0 mmap area too large".into()))?;
                    let map = Mapping::new(&fd, bar0.info.offset + start, len, MapProt::ReadWrite)
                        .map_err(VfioError::Ram)?;
                    doorbell_page = Some((Arc::new(map), start));
                }
            }
        }
        Ok(Self {
            layout,
            doorbell_page,
        })
    }

    fn doorbells(&self, client: &Client) -> Doorbells {
        match &self.doorbell_page {
            Some((page, start)) => Doorbells::Mapped {
                page: Arc::clone(page),
                start: *start,
            },
            None => Doorbells::trapped(client.socket()),
        }
    }
}

/// Config space: MSI-X on, memory space and bus master on; an eventfd per vector (the admin
/// queue's and one per I/O queue) by SET_IRQS.
fn enable_interrupts(client: &mut Client, queues: u16) -> Result<Vec<EventFd>, VfioError> {
    let msix_cap = find_capability(client, CAP_ID_MSIX)?
        .ok_or_else(|| VfioError::Device("no MSI-X capability in config space".into()))?;
    let control = config_read16(client, msix_cap + 2)?;
    config_write16(client, msix_cap + 2, control | msix_control::ENABLE)?;
    let command = config_read16(client, pci::COMMAND as u64)?;
    config_write16(
        client,
        pci::COMMAND as u64,
        command | pci_command::MEMORY_SPACE | pci_command::BUS_MASTER,
    )?;
    let vectors = (0..=queues)
        .map(|_| EventFd::new())
        .collect::<Result<Vec<_>, _>>()
        .map_err(VfioError::Ram)?;
    let fds: Vec<_> = vectors.iter().map(AsFd::as_fd).collect();
    client.set_irq_eventfds(msix::index::MSIX, 0, &fds)?;
    Ok(vectors)
}

fn config_read16(client: &mut Client, offset: u64) -> Result<u16, VfioError> {
    let mut b = [0u8; 2];
    client.region_read(region::CONFIG, offset, &mut b)?;
    Ok(u16::from_le_bytes(b))
}

fn config_write16(client: &mut Client, offset: u64, value: u16) -> Result<(), VfioError> {
    client.region_write(region::CONFIG, offset, &value.to_le_bytes())?;
    Ok(())
}

/// The config-space offset of capability `id`, walking the list from its pointer at 0x34.
fn find_capability(client: &mut Client, id: u8) -> Result<Option<u64>, VfioError> {
    let mut at = u64::from(config_read16(client, pci::CAPABILITIES as u64)? & 0xFC);
    // A list longer than the config space has room for loops.
    for _ in 0..48 {
        if at == 0 {
            return Ok(None);
        }
        let header = config_read16(client, at)?;
        if header & 0xFF == u16::from(id) {
            return Ok(Some(at));
        }
        at = u64::from((header >> 8) & 0xFC);
    }
    Err(VfioError::Device("the capability list loops".into()))
}

/// The admin queue pair and what a blocking admin command needs.
struct AdminQueue {
    ram: Arc<GuestRam>,
    doorbells: Doorbells,
    sq: SqRing,
    cq: CqRing,
    next_cid: u16,
    /// CAP, as read before enabling.
    cap: u64,
    timeout: Duration,
}

impl AdminQueue {
    /// AQA, ASQ, ACQ, then CC.EN with 64-byte SQEs and 16-byte CQEs; waits for CSTS.RDY.
    fn enable(
        client: &mut Client,
        ram: &Arc<GuestRam>,
        alloc: &mut Allocator,
        doorbells: Doorbells,
        timeout: Duration,
    ) -> Result<Self, VfioError> {
        let mut b = [0u8; 8];
        client.region_read(region::BAR0, u64::from(reg::CAP), &mut b)?;
        let cap = u64::from_le_bytes(b);
        if (cap >> 32) & 0xF != 0 {
            return Err(VfioError::Device(format!(
                "CAP.DSTRD {} (doorbells not 4 bytes apart) is not supported",
                (cap >> 32) & 0xF
            )));
        }
        if (cap >> 48) & 0xF != 0 {
            return Err(VfioError::Device(
                "the controller does not take 4 KiB memory pages (CAP.MPSMIN)".into(),
            ));
        }
        let entries = ADMIN_ENTRIES.min(u16::try_from((cap & 0xFFFF) + 1).unwrap_or(2));
        let full = || VfioError::Device("guest RAM is full".into());
        let asq = alloc
            .pages(u64::from(entries) * SQE_LEN as u64)
            .ok_or_else(full)?;
        let acq = alloc
            .pages(u64::from(entries) * CQE_LEN as u64)
            .ok_or_else(full)?;
        let write32 = |client: &mut Client, offset: u32, value: u32| {
            client.region_write(region::BAR0, u64::from(offset), &value.to_le_bytes())
        };
        let write64 = |client: &mut Client, offset: u32, value: u64| {
            client.region_write(region::BAR0, u64::from(offset), &value.to_le_bytes())
        };
        let aqa = (u32::from(entries - 1) << 16) | u32::from(entries - 1);
        write32(client, reg::AQA, aqa)?;
        write64(client, reg::ASQ, asq)?;
        write64(client, reg::ACQ, acq)?;
        write32(
            client,
            reg::CC,
            (4 << cc::IOCQES_SHIFT) | (6 << cc::IOSQES_SHIFT) | cc::EN,
        )?;
        // CAP.TO is in 500 ms units; the run's timeout bounds it too.
        let to = Duration::from_millis(500 * ((cap >> 24) & 0xFF).max(1));
        let deadline = Instant::now() + to.min(timeout);
        loop {
            let mut b = [0u8; 4];
            client.region_read(region::BAR0, u64::from(reg::CSTS), &mut b)?;
            let status = u32::from_le_bytes(b);
            if status & csts::CFS != 0 {
                return Err(VfioError::Device(
                    "CSTS.CFS: the controller is fatal".into(),
                ));
            }
            if status & csts::RDY != 0 {
                break;
            }
            if Instant::now() >= deadline {
                return Err(VfioError::Device("CSTS.RDY never came".into()));
            }
            std::thread::sleep(CSTS_POLL);
        }
        Ok(Self {
            ram: Arc::clone(ram),
            doorbells,
            sq: SqRing::new(asq, entries),
            cq: CqRing::new(acq, entries),
            next_cid: 0,
            cap,
            timeout,
        })
    }

    /// One admin command: the SQE at the tail, the doorbell, then its completion (woken by
    /// vector 0, checked by phase), the CQ head doorbell.
    fn run(&mut self, sqe: &Sqe, vector: &EventFd) -> Result<Cqe, VfioError> {
        let cid = self.next_cid;
        self.next_cid = self.next_cid.wrapping_add(1);
        let mut sqe = *sqe;
        sqe.set_cid(cid);
        self.sq.push(&self.ram, &sqe)?;
        let layout = DoorbellLayout { stride: 4 };
        self.doorbells
            .ring(layout.sq_tail(0), u32::from(self.sq.tail()))?;
        self.doorbells.flush()?;
        let deadline = Instant::now() + self.timeout;
        let cqe = loop {
            if let Some(cqe) = self.cq.pop(&self.ram)? {
                break cqe;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(VfioError::Client(ClientError::Timeout {
                    command: Command::RegionWrite,
                    timeout: self.timeout,
                }));
            }
            let wait = (deadline - now).min(Duration::from_millis(10));
            let mut fds = [PollFd::new(vector, PollFlags::IN)];
            let ts = rustix::event::Timespec {
                tv_sec: 0,
                tv_nsec: i64::from(wait.subsec_nanos()),
            };
            if rustix::event::poll(&mut fds, Some(&ts)).unwrap_or(0) > 0 {
                let _ = vector.drain();
            }
        };
        self.doorbells
            .ring(layout.cq_head(0), u32::from(self.cq.head()))?;
        self.doorbells.flush()?;
        if cqe.cid != cid || cqe.sqid != 0 {
            return Err(VfioError::Protocol("admin completion for another command"));
        }
        Ok(cqe)
    }
}
