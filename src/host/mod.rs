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
use crate::transport::tcp::wire::{self, flags, pdu_type};

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
}

/// One connected queue.
pub struct HostQueue {
    stream: TcpStream,
    header_digest: bool,
    data_digest: bool,
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
        let mut icreq = vec![0u8; wire::IC_LEN];
        icreq[0] = pdu_type::IC_REQ;
        icreq[2] = 128;
        icreq[4..8].copy_from_slice(&128u32.to_le_bytes());
        icreq[11] = u8::from(opts.header_digest) | (u8::from(opts.data_digest) << 1);
        stream.write_all(&icreq)?;
        let mut queue = Self {
            stream,
            header_digest: false,
            data_digest: false,
            maxh2cdata: 4096,
            in_capsule_limit: opts.in_capsule_limit,
            qid: opts.qid,
            cntlid: 0,
            next_cid: 1,
            pending: HashMap::new(),
            done: Vec::new(),
        };
        let resp = queue.recv_pdu()?;
        if resp[0] != pdu_type::IC_RESP || resp.len() != wire::IC_LEN {
            return Err(HostError::Protocol("expected ICResp"));
        }
        queue.header_digest = resp[11] & 1 != 0;
        queue.data_digest = resp[11] & 2 != 0;
        queue.maxh2cdata = wire::read_u32(&resp, 12) as usize;
        if queue.header_digest != opts.header_digest || queue.data_digest != opts.data_digest {
            return Err(HostError::Protocol(
                "ICResp did not grant the digests asked for",
            ));
        }
        Ok(queue)
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
        (self.header_digest, self.data_digest)
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
        let pdu = self.capsule_pdu(&sqe, capsule_data);
        self.stream.write_all(&pdu)?;
        let pending = Pending {
            write: if in_capsule { Vec::new() } else { write },
            read: Vec::new(),
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
            let pdu = self.recv_pdu()?;
            match pdu[0] {
                pdu_type::CAPSULE_RESP => {
                    let cqe =
                        Cqe::parse(&pdu[8..]).ok_or(HostError::Protocol("short CapsuleResp"))?;
                    let pending = self
                        .pending
                        .remove(&cqe.cid)
                        .ok_or(HostError::Protocol("response for an unknown cid"))?;
                    return Ok(Completion {
                        cqe,
                        data: pending.read,
                    });
                }
                pdu_type::C2H_DATA => {
                    let cid = wire::read_u16(&pdu, 8);
                    let datao = wire::read_u32(&pdu, 12) as usize;
                    let data = self.pdu_data(&pdu)?;
                    let pending = self
                        .pending
                        .get_mut(&cid)
                        .ok_or(HostError::Protocol("data for an unknown cid"))?;
                    if pending.read.len() < datao + data.len() {
                        pending.read.resize(datao + data.len(), 0);
                    }
                    pending.read[datao..datao + data.len()].copy_from_slice(&data);
                    if pdu[1] & flags::SUCCESS != 0 {
                        let pending = self.pending.remove(&cid).unwrap_or_default();
                        return Ok(Completion {
                            cqe: Cqe::new(cid, Status::SUCCESS),
                            data: pending.read,
                        });
                    }
                }
                pdu_type::R2T => {
                    let cid = wire::read_u16(&pdu, 8);
                    let ttag = wire::read_u16(&pdu, 10);
                    let (r2to, r2tl) = (
                        wire::read_u32(&pdu, 12) as usize,
                        wire::read_u32(&pdu, 16) as usize,
                    );
                    let write = self
                        .pending
                        .get(&cid)
                        .map(|p| p.write.clone())
                        .ok_or(HostError::Protocol("R2T for an unknown cid"))?;
                    if r2to + r2tl > write.len() {
                        return Err(HostError::Protocol("R2T beyond the write"));
                    }
                    self.send_h2c(cid, ttag, r2to, &write[r2to..r2to + r2tl])?;
                }
                pdu_type::C2H_TERM_REQ => {
                    return Err(HostError::Terminated {
                        fes: wire::read_u16(&pdu, 8),
                        fei: wire::read_u32(&pdu, 10),
                    });
                }
                _ => return Err(HostError::Protocol("unexpected PDU type")),
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

    /// Receives one whole PDU, checking its header digest.
    pub fn recv_pdu(&mut self) -> Result<Vec<u8>, HostError> {
        let mut pdu = vec![0u8; wire::CH_LEN];
        self.stream.read_exact(&mut pdu)?;
        let plen = wire::read_u32(&pdu, 4) as usize;
        if !(wire::CH_LEN..=16 << 20).contains(&plen) {
            return Err(HostError::Protocol("absurd PDU length"));
        }
        pdu.resize(plen, 0);
        self.stream.read_exact(&mut pdu[wire::CH_LEN..])?;
        if pdu[1] & flags::HDGSTF != 0 {
            let hlen = usize::from(pdu[2]);
            if pdu.len() < hlen + 4 || pdu[hlen..hlen + 4] != wire::digest(&pdu[..hlen]) {
                return Err(HostError::Protocol("bad header digest from the target"));
            }
        }
        Ok(pdu)
    }

    fn pdu_data(&self, pdu: &[u8]) -> Result<Vec<u8>, HostError> {
        let pdo = usize::from(pdu[3]);
        let datal = wire::read_u32(pdu, 16) as usize;
        let data = pdu
            .get(pdo..pdo + datal)
            .ok_or(HostError::Protocol("C2HData outside its PDU"))?;
        if pdu[1] & flags::DDGSTF != 0
            && pdu.get(pdo + datal..pdo + datal + 4) != Some(&wire::digest(data)[..])
        {
            return Err(HostError::Protocol("bad data digest from the target"));
        }
        Ok(data.to_vec())
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

    fn capsule_pdu(&self, sqe: &Sqe, data: &[u8]) -> Vec<u8> {
        let hd = if self.header_digest {
            wire::DIGEST_LEN
        } else {
            0
        };
        let dd = if self.data_digest && !data.is_empty() {
            wire::DIGEST_LEN
        } else {
            0
        };
        let pdo = if data.is_empty() {
            0
        } else {
            wire::CAPSULE_CMD_HLEN + hd
        };
        let plen = wire::CAPSULE_CMD_HLEN + hd + data.len() + dd;
        let mut pdu_flags = 0;
        if hd > 0 {
            pdu_flags |= flags::HDGSTF;
        }
        if dd > 0 {
            pdu_flags |= flags::DDGSTF;
        }
        let mut pdu = vec![
            pdu_type::CAPSULE_CMD,
            pdu_flags,
            72,
            u8::try_from(pdo).unwrap_or(0),
        ];
        pdu.extend_from_slice(&u32::try_from(plen).unwrap_or(u32::MAX).to_le_bytes());
        pdu.extend_from_slice(sqe.as_bytes());
        if hd > 0 {
            let digest = wire::digest(&pdu);
            pdu.extend_from_slice(&digest);
        }
        pdu.extend_from_slice(data);
        if dd > 0 {
            pdu.extend_from_slice(&wire::digest(data));
        }
        pdu
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
        while sent < data.len() {
            let n = chunk.min(data.len() - sent);
            let part = &data[sent..sent + n];
            let hd = if self.header_digest {
                wire::DIGEST_LEN
            } else {
                0
            };
            let dd = if self.data_digest {
                wire::DIGEST_LEN
            } else {
                0
            };
            let pdo = wire::DATA_HLEN + hd;
            let mut pdu_flags = if sent + n == data.len() {
                flags::LAST_PDU
            } else {
                0
            };
            if hd > 0 {
                pdu_flags |= flags::HDGSTF;
            }
            if dd > 0 {
                pdu_flags |= flags::DDGSTF;
            }
            let mut pdu = vec![
                pdu_type::H2C_DATA,
                pdu_flags,
                24,
                u8::try_from(pdo).unwrap_or(0),
            ];
            pdu.extend_from_slice(
                &u32::try_from(pdo + n + dd)
                    .unwrap_or(u32::MAX)
                    .to_le_bytes(),
            );
            pdu.extend_from_slice(&cid.to_le_bytes());
            pdu.extend_from_slice(&ttag.to_le_bytes());
            pdu.extend_from_slice(
                &u32::try_from(offset + sent)
                    .unwrap_or(u32::MAX)
                    .to_le_bytes(),
            );
            pdu.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes());
            pdu.extend_from_slice(&[0; 4]);
            if hd > 0 {
                let digest = wire::digest(&pdu);
                pdu.extend_from_slice(&digest);
            }
            pdu.extend_from_slice(part);
            if dd > 0 {
                pdu.extend_from_slice(&wire::digest(part));
            }
            self.stream.write_all(&pdu)?;
            sent += n;
        }
        Ok(())
    }
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
