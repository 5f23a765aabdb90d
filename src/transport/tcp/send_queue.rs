//! What a queue pair has to send, kept so that one `writev` sends a whole batch without
//! copying read data: PDU headers (and small payloads) go into one byte buffer, and the data
//! buffers of C2HData are lent to the queue in place. Once sent, those buffers are kept for
//! the next commands, so a command in steady state allocates nothing.

use std::io::IoSlice;

/// Data buffers shorter than this are copied next to the headers: one slice fewer is worth
/// more than a small copy.
const LEND_MIN: usize = 512;
/// Buffers kept for reuse hold at most this many bytes in all.
const POOL_BYTES: usize = 4 << 20;
/// Slices handed to one `writev`; a larger batch takes more than one call.
pub const MAX_SLICES: usize = 128;

/// Bytes to send, in order, and the buffers that are free for the next commands.
#[derive(Debug, Default)]
pub struct SendQueue {
    /// Headers and copied payloads.
    bytes: Vec<u8>,
    /// Lent data buffers in send order: each goes after `bytes[..at]`.
    lent: Vec<(usize, Vec<u8>)>,
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
        self.lent.push((self.bytes.len(), buf));
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
        let mut count = 0;
        let mut skip = self.sent;
        let mut from = 0;
        let pieces = self
            .lent
            .iter()
            .flat_map(|(at, buf)| {
                let header = &self.bytes[from.min(*at)..*at];
                from = *at;
                [header, buf.as_slice()]
            })
            .chain(std::iter::once(
                &self.bytes[self.lent.last().map_or(0, |l| l.0)..],
            ));
        for piece in pieces {
            if count == iov.len() {
                break;
            }
            if skip >= piece.len() {
                skip -= piece.len();
                continue;
            }
            iov[count] = IoSlice::new(&piece[skip..]);
            skip = 0;
            count += 1;
        }
        count
    }

    /// Records that `n` more bytes were written; once all are, the lent buffers go back to the
    /// pool.
    pub fn advance(&mut self, n: usize) {
        self.sent = (self.sent + n).min(self.total);
        if self.sent == self.total {
            self.bytes.clear();
            let mut lent = std::mem::take(&mut self.lent);
            for (_, buf) in lent.drain(..) {
                self.recycle(buf);
            }
            self.lent = lent;
            self.total = 0;
            self.sent = 0;
        }
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
        let mut expected = b"h1".to_vec();
        expected.extend_from_slice(&[b'a'; 600]);
        expected.extend_from_slice(b"r1h2");
        expected.extend_from_slice(&[b'b'; 700]);
        expected.extend_from_slice(b"cccr2");
        let mut got = Vec::new();
        while !queue.is_empty() {
            let mut iov = [IoSlice::new(&[]); 3];
            let n = queue.slices(&mut iov);
            assert!(n > 0);
            // Write at most 250 bytes at a time, as a congested socket would.
            let mut room = 250;
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
    fn pool_is_bounded() {
        let mut queue = SendQueue::default();
        for _ in 0..100 {
            queue.recycle(vec![0; 1 << 20]);
        }
        assert!(queue.pool_bytes <= POOL_BYTES);
        assert_eq!(queue.pool.len(), POOL_BYTES >> 20);
    }
}
