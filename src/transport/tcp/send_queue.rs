//! What a queue pair has to send, kept so that one `writev` sends a whole batch without
//! copying read data: PDU headers (and small payloads) go into one byte buffer, and the data
//! buffers of C2HData are lent to the queue in place. Once sent, those buffers are kept for
//! the next commands, so a command in steady state allocates nothing. Reads of a namespace
//! that holds only zeroes are sent from one static zeroed block, with no buffer at all.

use std::io::IoSlice;

/// Data buffers shorter than this are copied next to the headers: one slice fewer is worth
/// more than a small copy.
const LEND_MIN: usize = 512;
/// Buffers kept for reuse hold at most this many bytes in all, per queue: enough for QD32 of
/// 32 KiB (or QD8 of 128 KiB) without allocating, and a bounded cost for idle connections.
const POOL_BYTES: usize = 1 << 20;
/// Slices handed to one `writev`; a larger batch takes more than one call.
pub const MAX_SLICES: usize = 128;
/// Zeroes sent in place of data; longer runs take several slices of it.
static ZEROES: [u8; 64 * 1024] = [0; 64 * 1024];

/// Data that goes out as it lies, after the header bytes before it.
#[derive(Debug)]
enum Lent {
    Buffer(Vec<u8>),
    Zeroes(usize),
}

impl Lent {
    #[cfg(test)]
    fn len(&self) -> usize {
        match self {
            Self::Buffer(buf) => buf.len(),
            Self::Zeroes(len) => *len,
        }
    }
}

/// Bytes to send, in order, and the buffers that are free for the next commands.
#[derive(Debug, Default)]
pub struct SendQueue {
    /// Headers and copied payloads.
    bytes: Vec<u8>,
    /// Lent data in send order: each goes after `bytes[..at]`.
    lent: Vec<(usize, Lent)>,
    /// Bytes queued in all, and how many of them are already written.
    total: usize,
    sent: usize,
    pool: Vec<Vec<u8>>,
    pool_bytes: usize,
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

    /// Appends header bytes through `f`, which writes at the end of the buffer it is given.
    pub fn put<R>(&mut self, f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
        let before = self.bytes.len();
        let result = f(&mut self.bytes);
        self.total += self.bytes.len() - before;
        result
    }

    /// Queues a data buffer to be sent as it is, after the bytes queued so far.
    pub fn push_data(&mut self, buf: Vec<u8>) {
        if buf.len() < LEND_MIN {
            self.put(|out| out.extend_from_slice(&buf));
            self.recycle(buf);
            return;
        }
        self.total += buf.len();
        self.lent.push((self.bytes.len(), Lent::Buffer(buf)));
    }

    /// Queues `len` zero bytes, sent from a static block.
    pub fn push_zeroes(&mut self, len: usize) {
        if len > 0 {
            self.total += len;
            self.lent.push((self.bytes.len(), Lent::Zeroes(len)));
        }
    }

    /// A buffer of `len` bytes for a command's data. Its contents are left over from an earlier
    /// command of this queue: whoever takes it overwrites all of it before it is sent.
    pub fn take_buffer(&mut self, len: usize) -> Vec<u8> {
        let mut buf = match self.pool.iter().rposition(|b| b.capacity() >= len) {
            Some(i) => {
                let buf = self.pool.swap_remove(i);
                self.pool_bytes -= buf.capacity();
                buf
            }
            None => Vec::with_capacity(len),
        };
        buf.resize(len, 0);
        buf
    }

    /// Gives back a buffer from [`take_buffer`](Self::take_buffer) (or any other).
    pub fn recycle(&mut self, buf: Vec<u8>) {
        let capacity = buf.capacity();
        if capacity > 0 && self.pool_bytes + capacity <= POOL_BYTES {
            self.pool_bytes += capacity;
            self.pool.push(buf);
        }
    }

    /// Fills `iov` with the unsent bytes, in order; returns how many slices it used.
    pub fn slices<'a>(&'a self, iov: &mut [IoSlice<'a>]) -> usize {
        let mut fill = Fill {
            iov,
            count: 0,
            skip: self.sent,
        };
        let mut from = 0;
        for (at, lent) in &self.lent {
            if !fill.piece(&self.bytes[from..*at]) {
                return fill.count;
            }
            from = *at;
            let more = match lent {
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

    /// Records that `n` more bytes were written; once all are, the lent buffers go back to the
    /// pool.
    pub fn advance(&mut self, n: usize) {
        self.sent = (self.sent + n).min(self.total);
        if self.sent == self.total {
            self.bytes.clear();
            let mut lent = std::mem::take(&mut self.lent);
            for (_, piece) in lent.drain(..) {
                if let Lent::Buffer(buf) = piece {
                    self.recycle(buf);
                }
            }
            self.lent = lent;
            self.total = 0;
            self.sent = 0;
        }
    }

    /// Bytes queued in all, sent or not.
    #[cfg(test)]
    fn queued(&self) -> usize {
        self.bytes.len() + self.lent.iter().map(|(_, l)| l.len()).sum::<usize>()
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

/// CRC32C of `len` zero bytes, as NVMe/TCP sends a data digest.
pub fn zeroes_digest(len: usize) -> [u8; 4] {
    let mut crc = 0;
    let mut left = len;
    while left > 0 {
        let n = left.min(ZEROES.len());
        crc = crc32c::crc32c_append(crc, &ZEROES[..n]);
        left -= n;
    }
    crc.to_le_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_and_lent_data_come_out_in_order_across_partial_writes() {
        let mut queue = SendQueue::default();
        queue.put(|out| out.extend_from_slice(b"h1"));
        let mut data = queue.take_buffer(600);
        data.fill(b'a');
        queue.push_data(data);
        queue.put(|out| out.extend_from_slice(b"r1h2"));
        queue.push_data(vec![b'b'; 700]);
        queue.push_data(vec![b'c'; 3]);
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
        assert_eq!(queue.queued(), expected.len());
        let mut got = Vec::new();
        while !queue.is_empty() {
            let mut iov = [IoSlice::new(&[]); 3];
            let n = queue.slices(&mut iov);
            assert!(n > 0);
            // Write a little at a time, as a congested socket would (more once into the zeroes).
            let mut room = if got.len() > 2000 { 40_000 } else { 250 };
            let before = got.len();
            for slice in &iov[..n] {
                let take = slice.len().min(room);
                got.extend_from_slice(&slice[..take]);
                room -= take;
            }
            let written = got.len() - before;
            queue.advance(written);
        }
        assert_eq!(got, expected);
        assert_eq!(queue.pool.len(), 3, "lent and copied buffers come back");
        let again = queue.take_buffer(650);
        assert_eq!(again.len(), 650);
        assert!(again.capacity() >= 700, "reuses the larger buffer");
    }

    #[test]
    fn zeroes_digest_matches_a_digest_of_zeroes() {
        for len in [1, 4096, ZEROES.len(), ZEROES.len() * 2 + 7] {
            assert_eq!(
                zeroes_digest(len),
                super::super::wire::digest(&vec![0; len])
            );
        }
    }

    #[test]
    fn pool_is_bounded() {
        let mut queue = SendQueue::default();
        for _ in 0..100 {
            queue.recycle(vec![0; 1 << 20]);
        }
        assert!(queue.pool_bytes <= POOL_BYTES);
        assert_eq!(queue.pool.len(), POOL_BYTES >> 20);
    }
}
