//! `null`: reads return zeroes, writes are dropped. For benchmarks of the target itself.

use super::{Backend, IoDone, IoKind, IoRequest, SubmitCx};

pub struct NullBackend {
    size: u64,
}

impl core::fmt::Debug for NullBackend {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "null {} bytes", self.size)
    }
}

impl NullBackend {
    pub fn new(size: u64) -> Self {
        Self { size }
    }
}

impl Backend for NullBackend {
    fn size(&self) -> u64 {
        self.size
    }

    fn reads_zeroes(&self) -> bool {
        true
    }

    fn submit(&self, token: u64, mut req: IoRequest, _: &mut SubmitCx<'_>) -> Option<IoDone> {
        let result = super::check_range(self.size, &req).map(|()| {
            if req.kind == IoKind::Read {
                // Buffers arrive zeroed from the transport, but a reused one may not be.
                req.buf.fill(0);
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
mod tests {
    use super::*;
    use crate::backend::BackendError;
    use crate::backend::tests::{completions, run};

    #[test]
    fn reads_zeroes_and_checks_range() {
        let (_poll, completions) = completions();
        let backend = NullBackend::new(4096);
        let done = run(&backend, &completions, IoKind::Read, 0, vec![7; 512]);
        assert!(done.result.is_ok());
        assert_eq!(done.buf, vec![0; 512]);
        let done = run(
            &backend,
            &completions,
            IoKind::Write { fua: false },
            4000,
            vec![1; 512],
        );
        assert!(matches!(done.result, Err(BackendError::OutOfRange { .. })));
    }
}
