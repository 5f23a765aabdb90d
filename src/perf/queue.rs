//! A lean NVMe/TCP I/O queue for load generation. It owns the (non-blocking) socket and
//! moves bytes: submissions of a whole batch go out in one write, the socket is read in large
//! chunks and every complete PDU in a chunk is handled. Buffers are allocated once per queue;
//! a command slot's index is its CID. What the PDUs mean is the host's [`HostMachine`]'s, the
//! same as for the blocking host: this file keeps only the socket and the slots.

use std::io::{ErrorKind, Read, Write};
use std::time::Instant;

use mio::net::TcpStream;

use super::PerfError;
use super::io::{Done, Queue, Slot};
use super::workload::Op;
use crate::host::{CommandBuffers, HostError, HostMachine, HostQueue};
use crate::nvme::Status;
use crate::transport::tcp::pdu;

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("socket error")]
    Io(#[from] std::io::Error),
    #[error("the target closed the connection")]
    Closed,
    #[error(transparent)]
    Host(#[from] HostError),
    #[error("protocol violation by the target: {0}")]
    Protocol(&'static str),
}

/// A slot with what the socket side tracks of it.
#[derive(Debug)]
struct Entry {
    slot: Slot,
    /// Read data bytes received so far.
    received: usize,
    busy: bool,
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
    qid: u16,
    stream: TcpStream,
    /// The queue's protocol: framing, commands, R2T, C2HData.
    machine: HostMachine,
    params: QueueParams,
    inbuf: Vec<u8>,
    in_start: usize,
    in_end: usize,
    out: Vec<u8>,
    out_pos: usize,
    slots: Slots,
    free: Vec<u16>,
}

/// The command slots, indexed by CID, as the machine sees their buffers.
struct Slots(Vec<Entry>);

impl CommandBuffers for Slots {
    fn write_data(&self, cid: u16) -> Option<&[u8]> {
        self.0
            .get(usize::from(cid))
            .filter(|e| e.busy && e.slot.op == Op::Write)
            .map(|e| e.slot.buf.as_slice())
    }

    fn read_buffer(&mut self, cid: u16) -> Option<&mut [u8]> {
        self.0
            .get_mut(usize::from(cid))
            .filter(|e| e.busy && e.slot.op == Op::Read)
            .map(|e| e.slot.buf.as_mut_slice())
    }

    fn data_received(&mut self, cid: u16, _offset: usize, len: usize) {
        if let Some(entry) = self.0.get_mut(usize::from(cid)) {
            entry.received += len;
        }
    }
}

impl IoQueue {
    /// Takes over a connected I/O queue (Fabrics Connect done, nothing outstanding).
    pub fn from_host(host: HostQueue, params: QueueParams) -> Result<Self, QueueError> {
        let qid = host.qid();
        let machine = host.machine().with_in_capsule_limit(params.in_capsule);
        let std_stream = host
            .into_stream()
            .map_err(|_| QueueError::Protocol("I/O queue busy at hand-over"))?;
        std_stream.set_nonblocking(true)?;
        let now = Instant::now();
        let slots = (0..params.depth)
            .map(|_| Entry {
                slot: Slot::new(params.io_size, now),
                received: 0,
                busy: false,
            })
            .collect();
        // Room for the largest PDU (a whole read in one C2HData) plus a full read chunk.
        let max_pdu = params.io_size + pdu::DATA_HLEN + 2 * pdu::DIGEST_LEN;
        Ok(Self {
            qid,
            stream: TcpStream::from_std(std_stream),
            machine,
            params,
            inbuf: vec![0; max_pdu.max(READ_CHUNK) + READ_CHUNK],
            in_start: 0,
            in_end: 0,
            out: Vec::with_capacity(READ_CHUNK),
            out_pos: 0,
            slots: Slots(slots),
            free: (0..params.depth).rev().collect(),
        })
    }

    pub fn stream_mut(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    fn error(&self, source: QueueError) -> PerfError {
        PerfError::Queue {
            qid: self.qid,
            source,
        }
    }

    /// Writes as much of the pending output as the socket takes. True if anything went out.
    fn write_out(&mut self) -> Result<bool, QueueError> {
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
    fn read_in(&mut self, done: &mut Vec<Done>) -> Result<bool, QueueError> {
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
        while let Some(view) = self
            .machine
            .deframe(&inbuf[self.in_start..self.in_end], max)?
        {
            self.in_start += view.len();
            let finished = self
                .machine
                .handle_pdu(&view, &mut self.slots, &mut self.out)?;
            if let Some(cqe) = finished {
                self.finish(cqe.cid, cqe.status, done)?;
            }
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

    fn finish(&mut self, cid: u16, status: Status, done: &mut Vec<Done>) -> Result<(), QueueError> {
        let entry = self
            .slots
            .0
            .get(usize::from(cid))
            .filter(|e| e.busy)
            .ok_or(QueueError::Protocol("completion for an idle CID"))?;
        if status.is_success()
            && entry.slot.op == Op::Read
            && entry.received != entry.slot.buf.len()
        {
            return Err(QueueError::Protocol("read completed with data missing"));
        }
        done.push(Done { cid, status });
        Ok(())
    }
}

impl Queue for IoQueue {
    fn alloc(&mut self) -> Option<u16> {
        let cid = self.free.pop()?;
        self.slots.0[usize::from(cid)].busy = true;
        Some(cid)
    }

    fn release(&mut self, cid: u16) {
        if let Some(entry) = self.slots.0.get_mut(usize::from(cid)).filter(|e| e.busy) {
            entry.busy = false;
            self.free.push(cid);
        }
    }

    fn slot(&self, cid: u16) -> &Slot {
        &self.slots.0[usize::from(cid)].slot
    }

    fn slot_mut(&mut self, cid: u16) -> &mut Slot {
        &mut self.slots.0[usize::from(cid)].slot
    }

    fn submit(&mut self, cid: u16, now: Instant) -> Result<(), PerfError> {
        let p = self.params;
        let entry = &mut self.slots.0[usize::from(cid)];
        entry.received = 0;
        let slot = &mut entry.slot;
        slot.submitted = now;
        let nlb = u32::try_from(p.io_size / p.block_size).unwrap_or(u32::MAX);
        let mut sqe = match slot.op {
            Op::Read => HostQueue::read_sqe(p.nsid, slot.slba, nlb),
            Op::Write => HostQueue::write_sqe(p.nsid, slot.slba, nlb, false),
        };
        sqe.set_cid(cid);
        let (write, read_len): (&[u8], usize) = match slot.op {
            Op::Read => (&[], p.io_size),
            Op::Write => (&slot.buf, 0),
        };
        let read_len = u32::try_from(read_len).unwrap_or(u32::MAX);
        self.machine.command(&mut self.out, sqe, write, read_len);
        Ok(())
    }

    fn flush(&mut self) -> Result<bool, PerfError> {
        self.write_out().map_err(|e| self.error(e))
    }

    fn poll_completions(&mut self, done: &mut Vec<Done>) -> Result<bool, PerfError> {
        self.read_in(done).map_err(|e| self.error(e))
    }

    fn outstanding(&self) -> usize {
        self.slots.0.len() - self.free.len()
    }
}
