//! What a call into a queue of any transport may use of its reactor, and what it answers.

use std::sync::Arc;

use crate::backend::{Completions, SubmitCx, Uring};
use crate::controller::Controller;
use crate::transport::buffer_pool::BufferPool;

/// What the owner of a queue must do after a call into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Close,
}

/// What a call into a queue may use of its reactor: the completion queue that async
/// backends report to and its io_uring, the prefix that makes backend tokens unique on the reactor, and the
/// reactor's buffer pool.
pub struct IoCx<'a> {
    completions: &'a Completions,
    /// The reactor's io_uring, where the kernel allowed one.
    uring: Option<&'a mut Uring>,
    token_base: u64,
    /// High bits of the 16-bit tag that a subscriber serving several queues (vfio-user: one
    /// socket, many submission queues) sets to say which of its queues a command is on.
    tag_prefix: u16,
    notifier: &'a AsyncNotifier,
    pub pool: &'a mut BufferPool,
    gone: Vec<Arc<Controller>>,
}

/// Wakes the reactor that owns a connection so it delivers the controller's async events.
pub type AsyncNotifier = Arc<dyn Fn() + Send + Sync>;

impl<'a> IoCx<'a> {
    pub fn new(
        completions: &'a Completions,
        token_base: u64,
        notifier: &'a AsyncNotifier,
        pool: &'a mut BufferPool,
    ) -> Self {
        Self {
            completions,
            uring: None,
            token_base,
            tag_prefix: 0,
            notifier,
            pool,
            gone: Vec::new(),
        }
    }

    /// What a controller calls, from any thread, when it has an async event to deliver on
    /// this connection.
    pub fn async_notifier(&self) -> AsyncNotifier {
        Arc::clone(self.notifier)
    }

    /// The backend token for the command with this tag.
    pub fn token(&self, tag: u16) -> u64 {
        self.token_base | u64::from(self.tag_prefix | tag)
    }

    /// Sets the bits ORed into every tag's token from now on (see [`Self::token`]); the
    /// caller keeps its queues' tags clear of them.
    pub fn set_tag_prefix(&mut self, prefix: u16) {
        self.tag_prefix = prefix;
    }

    /// Gives the calls into queues the reactor's io_uring.
    #[must_use]
    pub fn with_uring(mut self, uring: Option<&'a mut Uring>) -> Self {
        self.uring = uring;
        self
    }

    /// What a backend may use to start a request.
    pub fn submitter(&mut self) -> SubmitCx<'_> {
        SubmitCx {
            completions: self.completions,
            uring: self.uring.as_deref_mut(),
        }
    }

    /// Records a controller this call tore down, so its other queues get closed.
    pub fn controller_gone(&mut self, ctrlr: Arc<Controller>) {
        self.gone.push(ctrlr);
    }

    pub fn into_gone(self) -> Vec<Arc<Controller>> {
        self.gone
    }
}
