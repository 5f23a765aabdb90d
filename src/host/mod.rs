//! An NVMe/TCP host (initiator): connects a queue to any NVMe/TCP target and runs commands,
//! several at a time. Used by the integration tests and by the benchmark tool.
//!
//! Blocking `std::net` I/O with a timeout on every read: a target that stops answering is an
//! error, not a hang.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::nvme::connect::{CATTR_DISABLE_SQ_FLOW_CONTROL, ConnectCmd, ConnectData};
use crate::nvme::log::{
    DISCOVERY_ENTRY_LEN, DISCOVERY_HEADER_LEN, DiscoveryLogEntry, DiscoveryLogHeader, GetLogPageCmd,
};
use crate::nvme::opcode::{FABRICS, admin, fctype, io};
use crate::nvme::{Cqe, DISCOVERY_NQN, Sqe, Status};
use crate::transport::tcp::pdu::{self, CommonHeader, Framing, PduError, PduView};

mod machine;

/// A command table for tests that drive the machine in memory.
#[cfg(test)]
pub(crate) use machine::tests::Table as TestCommands;
pub use machine::{CommandBuffers, HostMachine, parse_from_target};

/// What one queue connects with.
#[derive(Debug, Clone)]
pub struct QueueOptions {
    pub subnqn: String,
    pub hostnqn: String,
    pub hostid: [u8; 16],
    /// 0 for the admin queue.
    pub qid: u16,
    pub queue_size: u16,
    pub kato_ms: u32,
    /// 0xFFFF for an admin queue; the admin queue's cntlid for I/O queues.
    pub cntlid: u16,
    pub header_digest: bool,
    pub data_digest: bool,
    /// Largest write sent in the capsule; larger ones wait for R2T.
    pub in_capsule_limit: usize,
    pub timeout: Duration,
    /// Connect with CATTR "disable SQ flow control": the target may then answer a successful
    /// read with C2HData carrying the SUCCESS flag and no CapsuleResp.
    pub disable_sq_flow_control: bool,
}

impl QueueOptions {
    pub fn admin(subnqn: &str, hostnqn: &str) -> Self {
        Self {
            subnqn: subnqn.into(),
            hostnqn: hostnqn.into(),
            hostid: [0x42; 16],
            qid: 0,
            queue_size: 32,
            kato_ms: 30_000,
            cntlid: 0xFFFF,
            header_digest: false,
            data_digest: false,
            in_capsule_limit: 8192,
            timeout: Duration::from_secs(10),
            disable_sq_flow_control: false,
        }
    }

    /// Options for I/O queue `qid` of the controller `cntlid`, keeping digests and names.
    #[must_use]
    pub fn io(&self, qid: u16, cntlid: u16, queue_size: u16) -> Self {
        Self {
            qid,
            cntlid,
            queue_size,
            kato_ms: 0,
            in_capsule_limit: 4096,
            ..self.clone()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("connection failed")]
    Io(#[from] std::io::Error),
    #[error("the target terminated the connection (fes {fes:#x}, fei {fei})")]
    Terminated { fes: u16, fei: u32 },
    #[error("protocol violation by the target: {0}")]
    Protocol(&'static str),
    #[error("malformed PDU from the target")]
    Malformed(#[from] PduError),
    #[error("command failed: {0}")]
    Status(Status),
    #[error("the target refused the connection: {0}")]
    Refused(Status),
}

/// A finished command: its completion and the data the target sent.
#[derive(Debug, Clone)]
pub struct Completion {
    pub cqe: Cqe,
    pub data: Vec<u8>,
}

impl Completion {
    /// The data, or the command's failure as an error.
    pub fn ok(self) -> Result<Vec<u8>, HostError> {
        if self.cqe.status.is_success() {
            Ok(self.data)
        } else {
            Err(HostError::Status(self.cqe.status))
        }
    }
}

#[derive(Debug, Default)]
struct Pending {
    /// Host data sent when the target asks for it (empty when in the capsule or none).
    write: Vec<u8>,
    /// As long as the data the command asked for: a target that sends more is refused.
    read: Vec<u8>,
    /// How far into `read` data arrived: the completion carries that much.
    read_end: usize,
}

/// The commands of one queue in flight, by CID, as the machine sees their buffers.
#[derive(Debug, Default)]
struct Commands(HashMap<u16, Pending>);

impl CommandBuffers for Commands {
    fn write_data(&self, cid: u16) -> Option<&[u8]> {
        self.0
            .get(&cid)
            .map(|p| p.write.as_slice())
            .filter(|w| !w.is_empty())
    }

    fn read_buffer(&mut self, cid: u16) -> Option<&mut [u8]> {
        self.0.get_mut(&cid).map(|p| p.read.as_mut_slice())
    }

    fn data_received(&mut self, cid: u16, offset: usize, len: usize) {
        if let Some(p) = self.0.get_mut(&cid) {
            p.read_end = p.read_end.max(offset + len);
        }
    }
}

/// One connected queue: the [`HostMachine`] over a blocking socket.
pub struct HostQueue {
    stream: TcpStream,
    machine: HostMachine,
    qid: u16,
    cntlid: u16,
    next_cid: u16,
    pending: Commands,
    done: Vec<Completion>,
    /// PDUs to send, reused.
    out: Vec<u8>,
}

impl HostQueue {
    /// TCP connect, ICReq/ICResp, then Fabrics Connect.
    pub fn connect(addr: SocketAddr, opts: &QueueOptions) -> Result<Self, HostError> {
        let mut queue = Self::handshake(addr, opts)?;
        let mut sqe = Sqe::new(FABRICS, 0);
        sqe.set_fctype(fctype::CONNECT);
        ConnectCmd {
            recfmt: 0,
            qid: opts.qid,
            sqsize: opts.queue_size.saturating_sub(1),
            cattr: if opts.disable_sq_flow_control {
                CATTR_DISABLE_SQ_FLOW_CONTROL
            } else {
                0
            },
            kato: opts.kato_ms,
        }
        .emit(&mut sqe);
        let data = ConnectData {
            hostid: opts.hostid,
            cntlid: opts.cntlid,
            subnqn: opts.subnqn.clone(),
            hostnqn: opts.hostnqn.clone(),
        }
        .to_vec();
        let done = queue.execute(sqe, Some(data), 0)?;
        if !done.cqe.status.is_success() {
            return Err(HostError::Refused(done.cqe.status));
        }
        queue.cntlid = u16::try_from(done.cqe.dw0 & 0xFFFF).unwrap_or(0);
        queue.qid = opts.qid;
        Ok(queue)
    }

    /// TCP connect and ICReq/ICResp only.
    pub fn handshake(addr: SocketAddr, opts: &QueueOptions) -> Result<Self, HostError> {
        let stream = TcpStream::connect_timeout(&addr, opts.timeout)?;
        stream.set_read_timeout(Some(opts.timeout))?;
        stream.set_nodelay(true)?;
        let machine = HostMachine::new(opts.header_digest, opts.data_digest, opts.in_capsule_limit);
        let mut queue = Self {
            stream,
            machine,
            qid: opts.qid,
            cntlid: 0,
            next_cid: 1,
            pending: Commands::default(),
            done: Vec::new(),
            out: Vec::new(),
        };
        queue.machine.icreq(&mut queue.out);
        queue.flush()?;
        // The machine checks the ICResp's framing as it reads it.
        let resp = queue.read_pdu()?;
        queue.machine.handle_icresp(&resp)?;
        Ok(queue)
    }

    pub fn cntlid(&self) -> u16 {
        self.cntlid
    }

    pub fn qid(&self) -> u16 {
        self.qid
    }

    pub fn outstanding(&self) -> usize {
        self.pending.0.len()
    }

    /// The digests ICResp granted: (header, data).
    pub fn digests(&self) -> (bool, bool) {
        let digests = self.machine.framing().digests;
        (digests.header, digests.data)
    }

    /// How this queue frames what it sends: the granted digests and the target's CPDA.
    pub fn framing(&self) -> Framing {
        self.machine.framing()
    }

    /// The largest H2CData payload the target accepts (MAXH2CDATA from ICResp).
    pub fn maxh2cdata(&self) -> usize {
        self.machine.maxh2cdata()
    }

    /// The queue's protocol state, for another I/O path that takes the socket over.
    pub fn machine(&self) -> &HostMachine {
        &self.machine
    }

    /// Hands the connected socket to another I/O path. Only valid with no command
    /// outstanding: this queue reads whole PDUs, so no byte of a later one is buffered here.
    pub fn into_stream(self) -> Result<TcpStream, HostError> {
        if self.pending.0.is_empty() && self.done.is_empty() {
            Ok(self.stream)
        } else {
            Err(HostError::Protocol(
                "queue handed over with commands outstanding",
            ))
        }
    }

    /// Sends a command without waiting; returns its cid. `write` is host data (in the capsule
    /// when small enough, else after R2T); `read_len` is how much data the command returns.
    pub fn submit(
        &mut self,
        mut sqe: Sqe,
        write: Option<Vec<u8>>,
        read_len: u32,
    ) -> Result<u16, HostError> {
        let cid = self.alloc_cid();
        sqe.set_cid(cid);
        let write = write.unwrap_or_default();
        let by_r2t = self.machine.command(&mut self.out, sqe, &write, read_len);
        self.flush()?;
        let pending = Pending {
            write: if by_r2t { write } else { Vec::new() },
            read: vec![0; usize::try_from(read_len).unwrap_or(0)],
            read_end: 0,
        };
        self.pending.0.insert(cid, pending);
        Ok(cid)
    }

    /// Waits for the next command to finish, answering R2Ts on the way.
    pub fn wait(&mut self) -> Result<Completion, HostError> {
        if let Some(done) = self.done.pop() {
            return Ok(done);
        }
        loop {
            // Framing (and the header digest) checked once, here.
            let bytes = self.read_pdu()?;
            let view = PduView::new_checked(&bytes, self.machine.framing().digests)?;
            let finished = self
                .machine
                .handle_pdu(&view, &mut self.pending, &mut self.out);
            self.flush()?;
            if let Some(cqe) = finished? {
                let mut pending = self
                    .pending
                    .0
                    .remove(&cqe.cid)
                    .ok_or(HostError::Protocol("completion for an unknown cid"))?;
                pending.read.truncate(pending.read_end);
                return Ok(Completion {
                    cqe,
                    data: pending.read,
                });
            }
        }
    }

    /// Runs one command to completion (other completions that arrive meanwhile are kept).
    pub fn execute(
        &mut self,
        sqe: Sqe,
        write: Option<Vec<u8>>,
        read_len: u32,
    ) -> Result<Completion, HostError> {
        let cid = self.submit(sqe, write, read_len)?;
        loop {
            let done = self.wait()?;
            if done.cqe.cid == cid {
                return Ok(done);
            }
            self.done.push(done);
        }
    }

    pub fn property_get(&mut self, offset: u32, eight_bytes: bool) -> Result<u64, HostError> {
        let mut sqe = Sqe::new(FABRICS, 0);
        sqe.set_fctype(fctype::PROPERTY_GET)
            .set_cdw(10, u32::from(eight_bytes))
            .set_cdw(11, offset);
        let done = self.execute(sqe, None, 0)?;
        done.clone().ok()?;
        Ok(u64::from(done.cqe.dw0) | (u64::from(done.cqe.dw1) << 32))
    }

    pub fn property_set(&mut self, offset: u32, value: u32) -> Result<(), HostError> {
        let mut sqe = Sqe::new(FABRICS, 0);
        sqe.set_fctype(fctype::PROPERTY_SET)
            .set_cdw(11, offset)
            .set_cdw(12, value);
        self.execute(sqe, None, 0)?.ok().map(drop)
    }

    /// CC.EN = 1 (4 KiB pages, 64/16-byte entries), then waits for CSTS.RDY.
    pub fn enable_controller(&mut self) -> Result<(), HostError> {
        self.property_set(0x14, 0x0046_0001)?;
        for _ in 0..100 {
            if self.property_get(0x1C, false)? & 1 == 1 {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(HostError::Protocol("CSTS.RDY never set"))
    }

    pub fn identify(&mut self, cns: u8, nsid: u32) -> Result<Vec<u8>, HostError> {
        let mut sqe = Sqe::new(admin::IDENTIFY, 0);
        sqe.set_nsid(nsid).set_cdw(10, u32::from(cns));
        self.execute(sqe, None, 4096)?.ok()
    }

    pub fn get_log_page(
        &mut self,
        lid: u8,
        nsid: u32,
        len: u32,
        offset: u64,
    ) -> Result<Vec<u8>, HostError> {
        let mut sqe = Sqe::new(admin::GET_LOG_PAGE, 0);
        sqe.set_nsid(nsid);
        GetLogPageCmd {
            lid,
            lsp: 0,
            rae: false,
            numd: len / 4 - 1,
            offset,
        }
        .emit(&mut sqe);
        self.execute(sqe, None, len)?.ok()
    }

    pub fn keep_alive(&mut self) -> Result<(), HostError> {
        self.execute(Sqe::new(admin::KEEP_ALIVE, 0), None, 0)?
            .ok()
            .map(drop)
    }

    /// A Read of `nlb` blocks of `block_size` at `slba`.
    pub fn read_sqe(nsid: u32, slba: u64, nlb: u32) -> Sqe {
        Self::rw_sqe(io::READ, nsid, slba, nlb, false)
    }

    pub fn write_sqe(nsid: u32, slba: u64, nlb: u32, fua: bool) -> Sqe {
        Self::rw_sqe(io::WRITE, nsid, slba, nlb, fua)
    }

    fn rw_sqe(opcode: u8, nsid: u32, slba: u64, nlb: u32, fua: bool) -> Sqe {
        let mut sqe = Sqe::new(opcode, 0);
        #[allow(clippy::cast_possible_truncation)]
        sqe.set_nsid(nsid)
            .set_cdw(10, slba as u32)
            .set_cdw(11, (slba >> 32) as u32)
            .set_cdw(12, nlb.saturating_sub(1) | (u32::from(fua) << 30));
        sqe
    }

    pub fn read(
        &mut self,
        nsid: u32,
        slba: u64,
        nlb: u32,
        block_size: u32,
    ) -> Result<Vec<u8>, HostError> {
        self.execute(Self::read_sqe(nsid, slba, nlb), None, nlb * block_size)?
            .ok()
    }

    pub fn write(
        &mut self,
        nsid: u32,
        slba: u64,
        data: Vec<u8>,
        block_size: u32,
    ) -> Result<(), HostError> {
        let nlb = u32::try_from(data.len() / block_size as usize).unwrap_or(0);
        self.execute(Self::write_sqe(nsid, slba, nlb, false), Some(data), 0)?
            .ok()
            .map(drop)
    }

    /// Sends bytes as they are: for malformed-input tests.
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), HostError> {
        Ok(self.stream.write_all(bytes)?)
    }

    /// Receives one whole PDU and checks its framing (lengths, header digest) against what
    /// ICResp negotiated; a PDU that does not hold together is an error before it is returned.
    pub fn recv_pdu(&mut self) -> Result<Vec<u8>, HostError> {
        let pdu = self.read_pdu()?;
        PduView::new_checked(&pdu, self.machine.framing().digests)?;
        Ok(pdu)
    }

    /// Reads the bytes of one whole PDU, as long as its common header says; its framing is
    /// left to whoever reads it next.
    fn read_pdu(&mut self) -> Result<Vec<u8>, HostError> {
        let mut pdu = vec![0u8; pdu::CH_LEN];
        self.stream.read_exact(&mut pdu)?;
        let ch = CommonHeader::peek(&pdu).ok_or(PduError::Truncated)?;
        ch.check()?;
        let plen = ch.plen();
        if plen > MAX_PDU_LEN {
            return Err(HostError::Protocol("absurd PDU length"));
        }
        pdu.resize(plen, 0);
        self.stream.read_exact(&mut pdu[pdu::CH_LEN..])?;
        Ok(pdu)
    }

    fn alloc_cid(&mut self) -> u16 {
        loop {
            let cid = self.next_cid;
            self.next_cid = self.next_cid.wrapping_add(1).max(1);
            if !self.pending.0.contains_key(&cid) {
                return cid;
            }
        }
    }

    /// Writes what the machine queued.
    fn flush(&mut self) -> Result<(), HostError> {
        self.stream.write_all(&self.out)?;
        self.out.clear();
        Ok(())
    }
}

/// The largest PDU a target may send this host: 16 MiB, far above any MAXH2CDATA or read.
const MAX_PDU_LEN: usize = 16 << 20;

/// Connects to the discovery subsystem at `addr` and reads every discovery log entry.
pub fn discover(
    addr: SocketAddr,
    hostnqn: &str,
) -> Result<(DiscoveryLogHeader, Vec<DiscoveryLogEntry>), HostError> {
    let mut queue = HostQueue::connect(addr, &QueueOptions::admin(DISCOVERY_NQN, hostnqn))?;
    queue.enable_controller()?;
    let head_len = u32::try_from(DISCOVERY_HEADER_LEN).unwrap_or(1024);
    let head = queue.get_log_page(0x70, 0, head_len, 0)?;
    let header =
        DiscoveryLogHeader::parse(&head).ok_or(HostError::Protocol("short discovery log"))?;
    let count = usize::try_from(header.numrec).unwrap_or(0).min(1024);
    let total =
        u32::try_from(DISCOVERY_HEADER_LEN + count * DISCOVERY_ENTRY_LEN).unwrap_or(u32::MAX);
    let log = queue.get_log_page(0x70, 0, total, 0)?;
    let entries = (0..count)
        .filter_map(|i| {
            DiscoveryLogEntry::parse(log.get(DISCOVERY_HEADER_LEN + i * DISCOVERY_ENTRY_LEN..)?)
        })
        .collect();
    Ok((header, entries))
}

#[cfg(test)]
mod tests;
