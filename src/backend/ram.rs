//! `ram`: namespace data in memory, allocated lazily in chunks so that a large declaration
//! commits memory only where hosts write. Never-written and deallocated ranges read as zero.

use std::sync::{Mutex, PoisonError};

use super::{Backend, IoDone, IoKind, IoRequest, SubmitCx};

/// Chunk size: large enough that most commands touch one chunk (one lock), small enough
/// that sparse use stays cheap.
const CHUNK: u64 = 1 << 20;
const CHUNK_BYTES: usize = 1 << 20;

pub struct RamBackend {
    size: u64,
    /// One lock per chunk: reactors writing different regions never contend.
    chunks: Vec<Mutex<Option<Box<[u8]>>>>,
}

impl core::fmt::Debug for RamBackend {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "ram {} bytes", self.size)
    }
}

impl RamBackend {
    pub fn new(size: u64) -> Self {
        let count = usize::try_from(size.div_ceil(CHUNK)).unwrap_or(0);
        Self {
            size,
            chunks: (0..count).map(|_| Mutex::new(None)).collect(),
        }
    }

    /// Calls `f(chunk index, offset in chunk, range of the request buffer)` for every chunk
    /// the byte range touches.
    fn for_each_chunk(
        offset: u64,
        len: u64,
        mut f: impl FnMut(usize, usize, std::ops::Range<usize>),
    ) {
        let mut done = 0u64;
        while done < len {
            let at = offset + done;
            let in_chunk = at % CHUNK;
            let n = (CHUNK - in_chunk).min(len - done);
            let (Ok(index), Ok(start), Ok(from), Ok(to)) = (
                usize::try_from(at / CHUNK),
                usize::try_from(in_chunk),
                usize::try_from(done),
                usize::try_from(done + n),
            ) else {
                return;
            };
            f(index, start, from..to);
            done += n;
        }
    }

    fn read(&self, offset: u64, buf: &mut [u8]) {
        Self::for_each_chunk(offset, buf.len() as u64, |index, start, range| {
            let chunk = self.chunks[index]
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let dst = &mut buf[range.clone()];
            match chunk.as_deref() {
                Some(data) => dst.copy_from_slice(&data[start..start + range.len()]),
                None => dst.fill(0),
            }
        });
    }

    fn write(&self, offset: u64, buf: &[u8]) {
        Self::for_each_chunk(offset, buf.len() as u64, |index, start, range| {
            let mut chunk = self.chunks[index]
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let data = chunk.get_or_insert_with(|| vec![0; CHUNK_BYTES].into_boxed_slice());
            data[start..start + range.len()].copy_from_slice(&buf[range]);
        });
    }

    /// Zeroes a range, freeing chunks it covers whole.
    fn zero(&self, offset: u64, len: u64) {
        Self::for_each_chunk(offset, len, |index, start, range| {
            let mut chunk = self.chunks[index]
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if range.len() as u64 == CHUNK {
                *chunk = None;
            } else if let Some(data) = chunk.as_deref_mut() {
                data[start..start + range.len()].fill(0);
            }
        });
    }
}

impl Backend for RamBackend {
    fn size(&self) -> u64 {
        self.size
    }

    fn submit(&self, token: u64, mut req: IoRequest, _: &mut SubmitCx<'_>) -> Option<IoDone> {
        let result = super::check_range(self.size, &req).map(|()| match &req.kind {
            IoKind::Read => self.read(req.offset, &mut req.buf),
            IoKind::Write { .. } => self.write(req.offset, &req.buf),
            IoKind::Flush => {}
            IoKind::WriteZeroes { .. } => self.zero(req.offset, req.len),
            IoKind::Deallocate(ranges) => {
                for &(offset, len) in ranges {
                    self.zero(offset, len);
                }
            }
        });
        Some(IoDone {
            token,
            result,
            buf: req.buf,
        })
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::backend::tests::{completions, run};

    #[test]
    fn write_read_across_chunks_and_zeroing() {
        let (_poll, completions) = completions();
        let backend = RamBackend::new(4 * CHUNK);
        let data: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
        let at = CHUNK - 4096;
        assert!(
            run(
                &backend,
                &completions,
                IoKind::Write { fua: false },
                at,
                data.clone()
            )
            .result
            .is_ok()
        );
        let done = run(&backend, &completions, IoKind::Read, at, vec![0xAA; 8192]);
        assert_eq!(done.buf, data);
        let unwritten = run(
            &backend,
            &completions,
            IoKind::Read,
            3 * CHUNK,
            vec![0xAA; 512],
        );
        assert_eq!(unwritten.buf, vec![0; 512]);
        let zero = IoRequest {
            kind: IoKind::WriteZeroes { fua: false },
            offset: at,
            len: 4096,
            buf: Vec::new(),
        };
        assert!(
            backend
                .submit(1, zero, &mut SubmitCx::new(&completions))
                .expect("inline")
                .result
                .is_ok()
        );
        let done = run(&backend, &completions, IoKind::Read, at, vec![0xAA; 8192]);
        assert_eq!(&done.buf[..4096], &[0; 4096][..]);
        assert_eq!(&done.buf[4096..], &data[4096..]);
        let dealloc = IoRequest {
            kind: IoKind::Deallocate(vec![(0, 2 * CHUNK)]),
            offset: 0,
            len: 0,
            buf: Vec::new(),
        };
        assert!(
            backend
                .submit(1, dealloc, &mut SubmitCx::new(&completions))
                .expect("inline")
                .result
                .is_ok()
        );
        let done = run(&backend, &completions, IoKind::Read, at, vec![0xAA; 8192]);
        assert_eq!(done.buf, vec![0; 8192]);
    }

    #[test]
    fn concurrent_writers_to_disjoint_ranges() {
        let backend = Arc::new(RamBackend::new(8 * CHUNK));
        let threads: Vec<_> = (0..4u8)
            .map(|t| {
                let backend = Arc::clone(&backend);
                std::thread::spawn(move || {
                    let (_poll, completions) = completions();
                    for i in 0..64u64 {
                        let at = u64::from(t) * 2 * CHUNK + i * 4096;
                        run(
                            &*backend,
                            &completions,
                            IoKind::Write { fua: false },
                            at,
                            vec![t + 1; 4096],
                        );
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("writer");
        }
        let (_poll, completions) = completions();
        for t in 0..4u8 {
            let done = run(
                &*backend,
                &completions,
                IoKind::Read,
                u64::from(t) * 2 * CHUNK,
                vec![0; 64 * 4096],
            );
            assert!(done.buf.iter().all(|&b| b == t + 1));
        }
    }
}
