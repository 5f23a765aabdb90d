//! What a queue pair has to send, kept so that one `writev` sends a whole batch without
//! copying read data: PDU headers (and small payloads) go into one byte buffer, and the data
//! buffers of C2HData are lent to the queue in place. Each lent buffer goes back to the buffer
//! pool as soon as it is written, not when the whole queue drains, so a host that reads slowly
//! but steadily holds only what is unsent. Reads of a namespace that holds only zeroes, and
//! the zero tail of a log page, are sent from one static zeroed block, with no buffer at all.

use std::collections::VecDeque;
use std::io::IoSlice;

pub use super::pdu::{zeroes_digest, zeroes_digest_after};
use crate::transport::buffer_pool::DataBuf;

/// Data buffers shorter than this are copied next to the headers: one slice fewer is worth
/// more than a small copy.
const LEND_MIN: usize = 512;
/// Written header bytes are dropped from the front once at least this many have piled up
/// (and they are half the buffer), so a queue that never quite drains stays bounded.
const COMPACT_MIN: usize = 64 * 1024;
/// Slices handed to one `writev`; a larger batch takes more than one call.
pub const MAX_SLICES: usize = 128;
/// Zeroes sent in place of data; longer runs take several slices of it.
static ZEROES: [u8; 64 * 1024] = [0; 64 * 1024];

/// Data that goes out as it lies, after the header bytes before it.
#[derive(Debug)]
enum Lent {
    Buffer(DataBuf),
    Zeroes(usize),
}

impl Lent {
    fn len(&self) -> usize {
        match self {
            Self::Buffer(buf) => buf.len(),
            Self::Zeroes(len) => *len,
        }
    }
}

/// A lent piece: it goes after `bytes[..at]`, and starts at stream offset `start`.
#[derive(Debug)]
struct LentAt {
    at: usize,
    start: usize,
    piece: Lent,
}

/// Bytes to send, in order. Offsets count bytes queued since the queue was last empty.
#[derive(Debug, Default)]
pub struct SendQueue {
    /// Headers and copied payloads.
    bytes: Vec<u8>,
    /// Lent data in send order.
    lent: VecDeque<LentAt>,
    /// Bytes queued in all, and how many of them are written.
    total: usize,
    sent: usize,
    /// `bytes[front_at..]` holds everything unsent that is not lent; `bytes[front_at]` is at
    /// stream offset `front_stream`.
    front_at: usize,
    front_stream: usize,
    /// Stream offsets where a command's completion ends, oldest first, from
    /// `completions_sent` on: a command counts against its queue's depth until the host could
    /// have read its completion. (A Vec and an index: cheaper per command than a VecDeque.)
    completions: Vec<usize>,
    completions_sent: usize,
    /// Lent buffers that are written, for the caller to give back.
    sent_buffers: Vec<DataBuf>,
}

impl SendQueue {
    pub fn with_capacity(bytes: usize) -> Self {
        Self {
            bytes: Vec::with_capacity(bytes),
            ..Self::default()
        }
    }

    /// Whether everything queued has been written.
    pub fn is_empty(&self) -> bool {
        self.sent == self.total
    }

    /// Bytes queued and not written that are held here (headers and copies), not counting
    /// lent buffers, which the buffer pool bounds.
    pub fn unsent_copied(&self) -> usize {
        self.bytes.len() - self.front_at
    }

    /// Completions queued and not yet written.
    pub fn unsent_completions(&self) -> usize {
        self.completions.len() - self.completions_sent
    }

    /// Appends header bytes through `f`, which writes at the end of the buffer it is given.
    pub fn put<R>(&mut self, f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
        let before = self.bytes.len();
        let result = f(&mut self.bytes);
        self.total += self.bytes.len() - before;
        result
    }

    /// Marks the end of a command's completion (a response, or data with the SUCCESS flag).
    pub fn end_completion(&mut self) {
        self.completions.push(self.total);
    }

    /// Queues a data buffer to be sent as it is, after the bytes queued so far.
    pub fn push_data(&mut self, buf: DataBuf) {
        if buf.len() < LEND_MIN {
            self.put(|out| out.extend_from_slice(&buf));
            self.sent_buffers.push(buf);
            return;
        }
        self.push_lent(Lent::Buffer(buf));
    }

    /// Queues `len` zero bytes, sent from a static block.
    pub fn push_zeroes(&mut self, len: usize) {
        if len > 0 {
            self.push_lent(Lent::Zeroes(len));
        }
    }

    fn push_lent(&mut self, piece: Lent) {
        let start = self.total;
        self.total += piece.len();
        self.lent.push_back(LentAt {
            at: self.bytes.len(),
            start,
            piece,
        });
    }

    /// Buffers that are written (or were copied), to give back to the pool.
    pub fn take_sent_buffers(&mut self) -> std::vec::Drain<'_, DataBuf> {
        self.sent_buffers.drain(..)
    }

    /// Empties the queue, written or not; the lent buffers join the sent ones.
    pub fn clear(&mut self) {
        for lent in self.lent.drain(..) {
            if let Lent::Buffer(buf) = lent.piece {
                self.sent_buffers.push(buf);
            }
        }
        self.bytes.clear();
        self.completions.clear();
        self.completions_sent = 0;
        self.total = 0;
        self.sent = 0;
        self.front_at = 0;
        self.front_stream = 0;
    }

    /// Fills `iov` with the unsent bytes, in order; returns how many slices it used.
    pub fn slices<'a>(&'a self, iov: &mut [IoSlice<'a>]) -> usize {
        let mut fill = Fill {
            iov,
            count: 0,
            skip: self.sent - self.front_stream,
        };
        let mut from = self.front_at;
        for lent in &self.lent {
            if !fill.piece(&self.bytes[from..lent.at]) {
                return fill.count;
            }
            from = lent.at;
            let more = match &lent.piece {
                Lent::Buffer(buf) => fill.piece(buf),
                Lent::Zeroes(len) => {
                    let mut left = *len;
                    let mut more = true;
                    while left > 0 && more {
                        let n = left.min(ZEROES.len());
                        more = fill.piece(&ZEROES[..n]);
                        left -= n;
                    }
                    more
                }
            };
            if !more {
                return fill.count;
            }
        }
        fill.piece(&self.bytes[from..]);
        fill.count
    }

    /// Records that `n` more bytes were written. Lent buffers go to the sent list as soon as
    /// they are written, not when the whole queue is; the count of completions drops as they
    /// go out.
    pub fn advance(&mut self, n: usize) {
        self.sent = (self.sent + n).min(self.total);
        if self.sent == self.total {
            // The common case: everything went out; start again from empty buffers.
            self.clear();
            return;
        }
        let ends = &self.completions[self.completions_sent..];
        self.completions_sent += ends.iter().take_while(|&&end| end <= self.sent).count();
        loop {
            match self.lent.front() {
                Some(lent) if lent.start + lent.piece.len() <= self.sent => {
                    self.front_at = lent.at;
                    self.front_stream = lent.start + lent.piece.len();
                    if let Some(LentAt {
                        piece: Lent::Buffer(buf),
                        ..
                    }) = self.lent.pop_front()
                    {
                        self.sent_buffers.push(buf);
                    }
                }
                Some(lent) if lent.start <= self.sent => {
                    // Inside this piece: the header bytes before it are all written.
                    self.front_at = lent.at;
                    self.front_stream = lent.start;
                    break;
                }
                _ => {
                    // Inside the header bytes before the next piece (or the end).
                    self.front_at += self.sent - self.front_stream;
                    self.front_stream = self.sent;
                    break;
                }
            }
        }
        self.compact();
    }

    /// Drops written header bytes from the front once they are many.
    fn compact(&mut self) {
        let done = self.front_at;
        if done < COMPACT_MIN || done * 2 < self.bytes.len() {
            return;
        }
        self.bytes.drain(..done);
        for lent in &mut self.lent {
            lent.at -= done;
        }
        self.front_at = 0;
        self.completions.drain(..self.completions_sent);
        self.completions_sent = 0;
    }

    /// Bytes queued and not written, lent or not.
    #[cfg(test)]
    fn unsent(&self) -> usize {
        self.total - self.sent
    }

    /// Everything unsent as one byte string, emptying the queue (tests read replies this way).
    #[cfg(test)]
    pub fn take_all(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        while !self.is_empty() {
            let mut iov = [IoSlice::new(&[]); MAX_SLICES];
            let n = self.slices(&mut iov);
            let before = out.len();
            for slice in &iov[..n] {
                out.extend_from_slice(slice);
            }
            let written = out.len() - before;
            self.advance(written);
        }
        out
    }
}

/// The slices of one `writev` being filled, past the bytes already written.
struct Fill<'i, 'a> {
    iov: &'i mut [IoSlice<'a>],
    count: usize,
    skip: usize,
}

impl<'a> Fill<'_, 'a> {
    /// Adds what of `piece` is unsent; false once the slices are full.
    fn piece(&mut self, piece: &'a [u8]) -> bool {
        if self.skip >= piece.len() {
            self.skip -= piece.len();
            return true;
        }
        let Some(slot) = self.iov.get_mut(self.count) else {
            return false;
        };
        *slot = IoSlice::new(&piece[self.skip..]);
        self.skip = 0;
        self.count += 1;
        self.count < self.iov.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::buffer_pool::{BufferPool, PoolLimits, SharedPool};

    fn pool() -> BufferPool {
        let shared = SharedPool::new(PoolLimits::spdk_tcp_defaults(1));
        BufferPool::new(shared, 0, std::sync::Arc::new(|| {}))
    }

    fn filled(pool: &mut BufferPool, len: usize, byte: u8) -> DataBuf {
        let mut buf = pool.capsule_buffer(len);
        buf.fill(byte);
        buf
    }

    /// Writes at most `room` bytes of what `queue` offers, as a congested socket would.
    fn write_some(queue: &mut SendQueue, room: usize, out: &mut Vec<u8>) {
        let mut iov = [IoSlice::new(&[]); 3];
        let n = queue.slices(&mut iov);
        assert!(n > 0);
        let mut room = room;
        let before = out.len();
        for slice in &iov[..n] {
            let take = slice.len().min(room);
            out.extend_from_slice(&slice[..take]);
            room -= take;
        }
        let written = out.len() - before;
        queue.advance(written);
    }

    #[test]
    fn headers_and_lent_data_come_out_in_order_across_partial_writes() {
        let mut pool = pool();
        let mut queue = SendQueue::default();
        queue.put(|out| out.extend_from_slice(b"h1"));
        queue.push_data(filled(&mut pool, 600, b'a'));
        queue.put(|out| out.extend_from_slice(b"r1h2"));
        queue.push_data(filled(&mut pool, 700, b'b'));
        queue.push_data(filled(&mut pool, 3, b'c'));
        queue.put(|out| out.extend_from_slice(b"r2"));
        queue.push_zeroes(ZEROES.len() + 10);
        queue.put(|out| out.extend_from_slice(b"r3"));
        let mut expected = b"h1".to_vec();
        expected.extend_from_slice(&[b'a'; 600]);
        expected.extend_from_slice(b"r1h2");
        expected.extend_from_slice(&[b'b'; 700]);
        expected.extend_from_slice(b"cccr2");
        expected.extend_from_slice(&vec![0; ZEROES.len() + 10]);
        expected.extend_from_slice(b"r3");
        assert_eq!(queue.unsent(), expected.len());
        let mut got = Vec::new();
        let mut returned = 0;
        while !queue.is_empty() {
            // A little at a time, more once into the zeroes.
            let room = if got.len() > 2000 { 40_000 } else { 250 };
            write_some(&mut queue, room, &mut got);
            returned += queue.take_sent_buffers().count();
            if got.len() >= 2 + 600 && got.len() < 2 + 600 + 4 + 700 {
                assert!(returned >= 2, "the first buffer is back once it is written");
            }
        }
        assert_eq!(got, expected);
        assert_eq!(returned, 3, "lent and copied buffers come back");
    }

    #[test]
    fn a_queue_that_never_drains_stays_bounded() {
        // A slow host reads a little less than is queued each turn, for a long time.
        let mut pool = pool();
        let mut queue = SendQueue::default();
        let mut got = Vec::new();
        for round in 0..2000 {
            queue.put(|out| out.extend_from_slice(&[1; 24]));
            queue.push_data(filled(&mut pool, 4096, 2));
            queue.put(|out| out.extend_from_slice(&[3; 24]));
            queue.end_completion();
            for buf in queue.take_sent_buffers() {
                pool.give(buf);
            }
            write_some(&mut queue, 4096 + 40, &mut got);
            assert!(!queue.is_empty() || round == 0);
            assert!(
                queue.unsent_copied() <= 2 * COMPACT_MIN,
                "round {round}: {} header bytes kept",
                queue.unsent_copied()
            );
            assert!(
                queue.lent.len() <= 2 + round / 4,
                "sent buffers are returned"
            );
        }
        assert!(queue.unsent_completions() > 0);
        let left = queue.unsent();
        let mut rest = Vec::new();
        while !queue.is_empty() {
            write_some(&mut queue, 1 << 20, &mut rest);
        }
        assert_eq!(rest.len(), left);
        assert_eq!(queue.unsent_completions(), 0);
        // The stream is the pattern, whole, in order.
        got.extend_from_slice(&rest);
        let mut expected = Vec::new();
        for _ in 0..2000 {
            expected.extend_from_slice(&[1; 24]);
            expected.extend_from_slice(&[2; 4096]);
            expected.extend_from_slice(&[3; 24]);
        }
        assert_eq!(got, expected);
    }

    #[test]
    fn completions_count_until_written() {
        let mut queue = SendQueue::default();
        queue.put(|out| out.extend_from_slice(&[0; 24]));
        queue.end_completion();
        queue.put(|out| out.extend_from_slice(&[0; 24]));
        queue.end_completion();
        assert_eq!(queue.unsent_completions(), 2);
        let mut got = Vec::new();
        write_some(&mut queue, 30, &mut got);
        assert_eq!(queue.unsent_completions(), 1);
        write_some(&mut queue, 30, &mut got);
        assert_eq!(queue.unsent_completions(), 0);
    }

    #[test]
    fn zeroes_digest_matches_a_digest_of_zeroes() {
        for len in [1, 4096, ZEROES.len(), ZEROES.len() * 2 + 7] {
            assert_eq!(zeroes_digest(len), super::super::pdu::digest(&vec![0; len]));
        }
    }
}
