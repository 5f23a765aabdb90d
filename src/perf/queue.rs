//! A lean NVMe/TCP I/O queue for load generation. It owns the (non-blocking) socket and
//! moves bytes: submissions of a whole batch go out in one write, the socket is read in large
//! chunks and every complete PDU in a chunk is handled. Buffers are allocated once per queue;
//! a command slot's index is its CID.

use std::io::{ErrorKind, Read, Write};
use std::time::Instant;

use mio::net::TcpStream;

use super::deframe::{self, DeframeError};
use super::emit;
use super::workload::Op;
use crate::host::HostQueue;
use crate::nvme::{Sgl, Status};
use crate::transport::tcp::pdu::{self, Framing, Pdu, PduView};

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("socket error")]
    Io(#[from] std::io::Error),
    #[error("the target closed the connection")]
    Closed,
    #[error("malformed PDU from the target")]
    Deframe(#[from] DeframeError),
    #[error("the target terminated the connection (fes {fes:#x})")]
    Terminated { fes: u16 },
    #[error("protocol violation by the target: {0}")]
    Protocol(&'static str),
}

/// One command slot; `buf` holds the write data or receives the read data.
#[derive(Debug)]
pub struct Slot {
    pub op: Op,
    pub slba: u64,
    pub generation: u64,
    pub submitted: Instant,
    pub buf: Vec<u8>,
    received: usize,
    busy: bool,
}

/// A finished command.
#[derive(Debug, Clone, Copy)]
pub struct Done {
    pub cid: u16,
    pub status: Status,
}

/// What a queue needs to know besides its socket.
#[derive(Debug, Clone, Copy)]
pub struct QueueParams {
    pub depth: u16,
    pub io_size: usize,
    pub block_size: usize,
    pub nsid: u32,
    /// Writes up to this size travel in the capsule; larger ones wait for R2T.
    pub in_capsule: usize,
}

pub struct IoQueue {
    stream: TcpStream,
    /// The digests ICResp granted and the target's CPDA.
    framing: Framing,
    maxh2cdata: usize,
    params: QueueParams,
    inbuf: Vec<u8>,
    in_start: usize,
    in_end: usize,
    out: Vec<u8>,
    out_pos: usize,
    slots: Vec<Slot>,
    free: Vec<u16>,
}

impl IoQueue {
    /// Takes over a connected I/O queue (Fabrics Connect done, nothing outstanding).
    pub fn from_host(host: HostQueue, params: QueueParams) -> Result<Self, QueueError> {
        let framing = host.framing();
        let maxh2cdata = host.maxh2cdata().max(4096);
        let std_stream = host
            .into_stream()
            .map_err(|_| QueueError::Protocol("I/O queue busy at hand-over"))?;
        std_stream.set_nonblocking(true)?;
        let now = Instant::now();
        let slots = (0..params.depth)
            .map(|_| Slot {
                op: Op::Read,
                slba: 0,
                generation: 0,
                submitted: now,
                buf: vec![0; params.io_size],
                received: 0,
                busy: false,
            })
            .collect();
        // Room for the largest PDU (a whole read in one C2HData) plus a full read chunk.
        let max_pdu = params.io_size + pdu::DATA_HLEN + 2 * pdu::DIGEST_LEN;
        Ok(Self {
            stream: TcpStream::from_std(std_stream),
            framing,
            maxh2cdata,
            params,
            inbuf: vec![0; max_pdu.max(READ_CHUNK) + READ_CHUNK],
            in_start: 0,
            in_end: 0,
            out: Vec::with_capacity(READ_CHUNK),
            out_pos: 0,
            slots,
            free: (0..params.depth).rev().collect(),
        })
    }

    pub fn stream_mut(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    pub fn outstanding(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// A free slot's CID, if any.
    pub fn alloc(&mut self) -> Option<u16> {
        let cid = self.free.pop()?;
        self.slots[usize::from(cid)].busy = true;
        Some(cid)
    }

    pub fn slot(&self, cid: u16) -> &Slot {
        &self.slots[usize::from(cid)]
    }

    pub fn slot_mut(&mut self, cid: u16) -> &mut Slot {
        &mut self.slots[usize::from(cid)]
    }

    pub fn release(&mut self, cid: u16) {
        if let Some(slot) = self.slots.get_mut(usize::from(cid)).filter(|s| s.busy) {
            slot.busy = false;
            self.free.push(cid);
        }
    }

    /// Queues the command of slot `cid` (op, slba and, for writes, buf already set) for
    /// sending; `flush` puts it on the wire.
    pub fn submit(&mut self, cid: u16, now: Instant) {
        let p = self.params;
        let slot = &mut self.slots[usize::from(cid)];
        slot.submitted = now;
        slot.received = 0;
        let nlb = u32::try_from(p.io_size / p.block_size).unwrap_or(u32::MAX);
        let mut sqe = match slot.op {
            Op::Read => HostQueue::read_sqe(p.nsid, slot.slba, nlb),
            Op::Write => HostQueue::write_sqe(p.nsid, slot.slba, nlb, false),
        };
        sqe.set_cid(cid);
        let len = u32::try_from(p.io_size).unwrap_or(u32::MAX);
        let in_capsule = slot.op == Op::Write && p.io_size <= p.in_capsule;
        sqe.set_sgl(if in_capsule {
            Sgl::in_capsule(len)
        } else {
            Sgl::transport(len)
        });
        let data: &[u8] = if in_capsule { &slot.buf } else { &[] };
        emit::capsule_cmd(&mut self.out, &self.framing, &sqe, data);
    }

    /// Writes as much of the pending output as the socket takes. True if anything went out.
    pub fn flush(&mut self) -> Result<bool, QueueError> {
        let mut progress = false;
        while self.out_pos < self.out.len() {
            match self.stream.write(&self.out[self.out_pos..]) {
                Ok(0) => return Err(QueueError::Closed),
                Ok(n) => {
                    self.out_pos += n;
                    progress = true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        } else if self.out_pos > self.out.len() / 2 {
            self.out.drain(..self.out_pos);
            self.out_pos = 0;
        }
        Ok(progress)
    }

    /// Reads once from the socket and handles every complete PDU, pushing finished commands
    /// to `done` and queueing H2CData for R2Ts. True if any bytes arrived.
    pub fn poll_completions(&mut self, done: &mut Vec<Done>) -> Result<bool, QueueError> {
        let end = (self.in_end + READ_CHUNK).min(self.inbuf.len());
        let n = match self.stream.read(&mut self.inbuf[self.in_end..end]) {
            Ok(0) => return Err(QueueError::Closed),
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                return Ok(false);
            }
            Err(e) => return Err(e.into()),
        };
        self.in_end += n;
        // The buffer is lent out while its PDUs are handled, so their views can borrow it.
        let inbuf = std::mem::take(&mut self.inbuf);
        let handled = self.handle_pdus(&inbuf, done);
        self.inbuf = inbuf;
        handled?;
        self.compact();
        Ok(true)
    }

    /// Handles every complete PDU between `in_start` and `in_end` of `inbuf`.
    fn handle_pdus(&mut self, inbuf: &[u8], done: &mut Vec<Done>) -> Result<(), QueueError> {
        let max = inbuf.len() - READ_CHUNK;
        let digests = self.framing.digests;
        while let Some(view) = deframe::next_pdu(&inbuf[self.in_start..self.in_end], max, digests)?
        {
            self.in_start += view.len();
            self.handle_pdu(&view, done)?;
        }
        Ok(())
    }

    /// Keeps room for a whole PDU plus one read chunk after `in_end`.
    fn compact(&mut self) {
        if self.in_start == self.in_end {
            self.in_start = 0;
            self.in_end = 0;
        } else if self.in_start > 0 && self.in_end + READ_CHUNK > self.inbuf.len() {
            self.inbuf.copy_within(self.in_start..self.in_end, 0);
            self.in_end -= self.in_start;
            self.in_start = 0;
        }
    }

    fn handle_pdu(&mut self, view: &PduView<'_>, done: &mut Vec<Done>) -> Result<(), QueueError> {
        match Pdu::parse(view).map_err(DeframeError::from)? {
            Pdu::CapsuleResp(resp) => self.finish(resp.cqe.cid, resp.cqe.status, done),
            Pdu::C2HData(_) => {
                let data = deframe::c2h_payload(view)?;
                let cid = data.cccid;
                let offset = usize::try_from(data.datao).unwrap_or(usize::MAX);
                let slot = self
                    .slots
                    .get_mut(usize::from(cid))
                    .filter(|s| s.busy && s.op == Op::Read)
                    .ok_or(QueueError::Protocol("C2HData for a command not reading"))?;
                let target = offset
                    .checked_add(data.data.len())
                    .and_then(|end| slot.buf.get_mut(offset..end))
                    .ok_or(QueueError::Protocol("C2HData beyond the read"))?;
                target.copy_from_slice(data.data);
                slot.received += data.data.len();
                if data.success {
                    if !data.last {
                        return Err(QueueError::Protocol("SUCCESS without LAST_PDU"));
                    }
                    self.finish(cid, Status::SUCCESS, done)?;
                }
                Ok(())
            }
            Pdu::R2t(r2t) => {
                let r2to = usize::try_from(r2t.r2to).unwrap_or(usize::MAX);
                let r2tl = usize::try_from(r2t.r2tl).unwrap_or(usize::MAX);
                let slot = self
                    .slots
                    .get(usize::from(r2t.cccid))
                    .filter(|s| s.busy && s.op == Op::Write)
                    .ok_or(QueueError::Protocol("R2T for a command not writing"))?;
                let data = slot
                    .buf
                    .get(r2to..r2to.saturating_add(r2tl))
                    .ok_or(QueueError::Protocol("R2T beyond the write"))?;
                emit::h2c_data(
                    &mut self.out,
                    &self.framing,
                    (r2t.cccid, r2t.ttag),
                    r2to,
                    data,
                    self.maxh2cdata,
                );
                Ok(())
            }
            Pdu::C2HTermReq(term) => Err(QueueError::Terminated { fes: term.fes }),
            _ => Err(QueueError::Protocol("unexpected PDU type")),
        }
    }

    fn finish(&mut self, cid: u16, status: Status, done: &mut Vec<Done>) -> Result<(), QueueError> {
        let slot = self
            .slots
            .get(usize::from(cid))
            .filter(|s| s.busy)
            .ok_or(QueueError::Protocol("completion for an idle CID"))?;
        if status.is_success() && slot.op == Op::Read && slot.received != slot.buf.len() {
            return Err(QueueError::Protocol("read completed with data missing"));
        }
        done.push(Done { cid, status });
        Ok(())
    }
}
