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
use crate::nvme::{Cqe, DISCOVERY_NQN, Sgl, Sqe, Status};
use crate::transport::tcp::pdu::{
    self, CapsuleCmd, CommonHeader, DataPdu, Digests, Framing, IcReq, IcResp, Pdu, PduError,
    PduView, pdu_type,
};

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
    write: Vec<u8>,
    read: Vec<u8>,
    /// The data the command asked for: a target that sends more is refused.
    read_len: usize,
}

/// One connected queue.
pub struct HostQueue {
    stream: TcpStream,
    /// The digests ICResp granted and the target's data alignment (CPDA).
    framing: Framing,
    maxh2cdata: usize,
    in_capsule_limit: usize,
    qid: u16,
    cntlid: u16,
    next_cid: u16,
    pending: HashMap<u16, Pending>,
    done: Vec<Completion>,
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
        let mut data = vec![0u8; 1024];
        ConnectData {
            hostid: opts.hostid,
            cntlid: opts.cntlid,
            subnqn: opts.subnqn.clone(),
            hostnqn: opts.hostnqn.clone(),
        }
        .emit(&mut data);
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
        let mut stream = TcpStream::connect_timeout(&addr, opts.timeout)?;
        stream.set_read_timeout(Some(opts.timeout))?;
        stream.set_nodelay(true)?;
        let mut icreq = Vec::with_capacity(pdu::IC_LEN);
        IcReq {
            pfv: 0,
            hpda: 0,
            header_digest: opts.header_digest,
            data_digest: opts.data_digest,
            maxr2t: 0,
        }
        .emit(&mut icreq);
        stream.write_all(&icreq)?;
        let mut queue = Self {
            stream,
            framing: Framing::default(),
            maxh2cdata: 4096,
            in_capsule_limit: opts.in_capsule_limit,
            qid: opts.qid,
            cntlid: 0,
            next_cid: 1,
            pending: HashMap::new(),
            done: Vec::new(),
        };
        let resp = queue.recv_pdu()?;
        let resp = match parse_from_target(&resp, Digests::NONE) {
            Ok(Pdu::IcResp(resp)) => resp,
            _ => return Err(HostError::Protocol("expected ICResp")),
        };
        queue.accept_icresp(&resp, opts)?;
        Ok(queue)
    }

    /// Takes the framing ICResp grants, which must be the digests asked for.
    fn accept_icresp(&mut self, resp: &IcResp, opts: &QueueOptions) -> Result<(), HostError> {
        if resp.pfv != 0 {
            return Err(HostError::Protocol(
                "ICResp with an unknown PDU format version",
            ));
        }
        if resp.header_digest != opts.header_digest || resp.data_digest != opts.data_digest {
            return Err(HostError::Protocol(
                "ICResp did not grant the digests asked for",
            ));
        }
        self.framing = Framing {
            digests: Digests {
                header: resp.header_digest,
                data: resp.data_digest,
            },
            pda: resp.cpda,
        };
        self.maxh2cdata = usize::try_from(resp.maxh2cdata).unwrap_or(usize::MAX);
        Ok(())
    }

    pub fn cntlid(&self) -> u16 {
        self.cntlid
    }

    pub fn qid(&self) -> u16 {
        self.qid
    }

    pub fn outstanding(&self) -> usize {
        self.pending.len()
    }

    /// The digests ICResp granted: (header, data).
    pub fn digests(&self) -> (bool, bool) {
        (self.framing.digests.header, self.framing.digests.data)
    }

    /// How this queue frames what it sends: the granted digests and the target's CPDA.
    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// The largest H2CData payload the target accepts (MAXH2CDATA from ICResp).
    pub fn maxh2cdata(&self) -> usize {
        self.maxh2cdata
    }

    /// Hands the connected socket to another I/O path. Only valid with no command
    /// outstanding: this queue reads whole PDUs, so no byte of a later one is buffered here.
    pub fn into_stream(self) -> Result<TcpStream, HostError> {
        if self.pending.is_empty() && self.done.is_empty() {
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
        let in_capsule = !write.is_empty() && write.len() <= self.in_capsule_limit;
        let sgl_len = u32::try_from(write.len()).unwrap_or(u32::MAX).max(read_len);
        sqe.set_sgl(if in_capsule {
            Sgl::in_capsule(sgl_len)
        } else {
            Sgl::transport(sgl_len)
        });
        let capsule_data: &[u8] = if in_capsule { &write } else { &[] };
        let mut pdu = Vec::new();
        CapsuleCmd {
            sqe,
            data: capsule_data,
        }
        .emit(&mut pdu, &self.framing);
        self.stream.write_all(&pdu)?;
        let pending = Pending {
            write: if in_capsule { Vec::new() } else { write },
            read: Vec::new(),
            read_len: usize::try_from(read_len).unwrap_or(usize::MAX),
        };
        self.pending.insert(cid, pending);
        Ok(cid)
    }

    /// Waits for the next command to finish, answering R2Ts on the way.
    pub fn wait(&mut self) -> Result<Completion, HostError> {
        if let Some(done) = self.done.pop() {
            return Ok(done);
        }
        loop {
            let bytes = self.recv_pdu()?;
            match parse_from_target(&bytes, self.framing.digests)? {
                Pdu::CapsuleResp(resp) => {
                    let cqe = resp.cqe;
                    let pending = self
                        .pending
                        .remove(&cqe.cid)
                        .ok_or(HostError::Protocol("response for an unknown cid"))?;
                    return Ok(Completion {
                        cqe,
                        data: pending.read,
                    });
                }
                Pdu::C2HData(data) => {
                    if let Some(done) = self.handle_c2h_data(&data)? {
                        return Ok(done);
                    }
                }
                Pdu::R2t(r2t) => {
                    let write = self
                        .pending
                        .get(&r2t.cccid)
                        .map(|p| p.write.clone())
                        .ok_or(HostError::Protocol("R2T for an unknown cid"))?;
                    let r2to = usize::try_from(r2t.r2to).unwrap_or(usize::MAX);
                    let r2tl = usize::try_from(r2t.r2tl).unwrap_or(usize::MAX);
                    let part = r2to
                        .checked_add(r2tl)
                        .and_then(|end| write.get(r2to..end))
                        .ok_or(HostError::Protocol("R2T beyond the write"))?;
                    self.send_h2c(r2t.cccid, r2t.ttag, r2to, part)?;
                }
                Pdu::C2HTermReq(term) => {
                    return Err(HostError::Terminated {
                        fes: term.fes,
                        fei: term.fei,
                    });
                }
                _ => return Err(HostError::Protocol("unexpected PDU type")),
            }
        }
    }

    /// Places C2HData in its command's read buffer; the completion when the PDU carries SUCCESS.
    fn handle_c2h_data(&mut self, data: &DataPdu<'_>) -> Result<Option<Completion>, HostError> {
        let cid = data.cccid;
        let pending = self
            .pending
            .get_mut(&cid)
            .ok_or(HostError::Protocol("data for an unknown cid"))?;
        let datao = usize::try_from(data.datao).unwrap_or(usize::MAX);
        let end = datao
            .checked_add(data.data.len())
            .filter(|&end| end <= pending.read_len)
            .ok_or(HostError::Protocol("C2HData beyond the read"))?;
        if pending.read.len() < end {
            pending.read.resize(end, 0);
        }
        pending.read[datao..end].copy_from_slice(data.data);
        if !data.success {
            return Ok(None);
        }
        let pending = self.pending.remove(&cid).unwrap_or_default();
        Ok(Some(Completion {
            cqe: Cqe::new(cid, Status::SUCCESS),
            data: pending.read,
        }))
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
        PduView::new_checked(&pdu, self.framing.digests)?;
        Ok(pdu)
    }

    fn alloc_cid(&mut self) -> u16 {
        loop {
            let cid = self.next_cid;
            self.next_cid = self.next_cid.wrapping_add(1).max(1);
            if !self.pending.contains_key(&cid) {
                return cid;
            }
        }
    }

    fn send_h2c(
        &mut self,
        cid: u16,
        ttag: u16,
        offset: usize,
        data: &[u8],
    ) -> Result<(), HostError> {
        let chunk = self.maxh2cdata.max(4096);
        let mut sent = 0;
        let mut pdu = Vec::new();
        while sent < data.len() {
            let n = chunk.min(data.len() - sent);
            pdu.clear();
            DataPdu {
                cccid: cid,
                ttag,
                datao: u32::try_from(offset + sent).unwrap_or(u32::MAX),
                last: sent + n == data.len(),
                success: false,
                data: &data[sent..sent + n],
            }
            .emit(&mut pdu, pdu_type::H2C_DATA, &self.framing);
            self.stream.write_all(&pdu)?;
            sent += n;
        }
        Ok(())
    }
}

/// The largest PDU a target may send this host: 16 MiB, far above any MAXH2CDATA or read.
const MAX_PDU_LEN: usize = 16 << 20;

/// Reads one whole PDU from a target: framing checked against the negotiated `digests`, the
/// data digest verified (a bad one is fatal on this side), the fields parsed.
pub fn parse_from_target(bytes: &[u8], digests: Digests) -> Result<Pdu<'_>, HostError> {
    let view = PduView::new_checked(bytes, digests)?;
    view.check_data_digest()?;
    let pdu = Pdu::parse(&view)?;
    if view.len() != bytes.len() {
        return Err(HostError::Protocol("bytes after the PDU"));
    }
    Ok(pdu)
}

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
