//! The owner of one TCP socket: moves bytes between it and the queue-pair state machine.

use std::io::{ErrorKind, IoSlice, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::Interest;
use mio::net::TcpStream;
use tracing::{debug, warn};

use super::TcpContext;
use super::qpair::TcpQpair;
use super::send_queue::MAX_SLICES;
use crate::backend::IoDone;
use crate::controller::{Controller, ListenerAddr};
use crate::transport::context::{Flow, IoCx};
use crate::transport::subscriber::{QueuePairs, Readiness, Subscriber, SubscriberCx, each_io_done};

/// Bytes read per `read` call at least: large reads keep syscalls per command low.
const READ_CHUNK: usize = 64 * 1024;
/// How long a host may leave its receive window shut (nothing of ours written) before it is
/// taken for dead: its buffers would otherwise stay held for ever.
pub const SEND_STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The key of the socket, the connection's one descriptor.
const SOCKET: u16 = 0;

pub struct TcpConnection {
    stream: TcpStream,
    peer: SocketAddr,
    qpair: TcpQpair,
    rbuf: Vec<u8>,
    rlen: usize,
    write_blocked: bool,
    /// Whether the socket is registered for writability too.
    writable_armed: bool,
    /// Since when a blocked send has made no progress.
    stalled_since: Option<Instant>,
    /// Reading stopped because too much waits to be written; it resumes once that is sent.
    paused: bool,
    /// `qpair{peer, qid, subnqn, cntlid}`, entered around every call into the queue, so a line
    /// it logs says whose queue it is (the queue core records the rest at Connect).
    span: tracing::Span,
}

impl core::fmt::Debug for TcpConnection {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("TcpConnection")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl TcpConnection {
    /// A connection just accepted, not yet watched: the reactor that serves it registers the
    /// socket in [`Subscriber::init`].
    pub fn new(
        stream: TcpStream,
        peer: SocketAddr,
        listener: ListenerAddr,
        context: Arc<TcpContext>,
        now: Instant,
    ) -> Self {
        let local_ip = stream.local_addr().ok().map(|a| a.ip());
        Self {
            stream,
            peer,
            qpair: TcpQpair::new(context, listener, local_ip, now),
            rbuf: vec![0; READ_CHUNK],
            rlen: 0,
            write_blocked: false,
            writable_armed: false,
            stalled_since: None,
            paused: false,
            span: tracing::info_span!(
                "qpair",
                %peer,
                qid = tracing::field::Empty,
                subnqn = tracing::field::Empty,
                cntlid = tracing::field::Empty
            ),
        }
    }

    /// Runs `f` inside the queue's span.
    fn in_span<R>(&mut self, f: impl FnOnce(&mut Self) -> R) -> R {
        let span = self.span.clone();
        let _entered = span.enter();
        f(self)
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    pub fn qid(&self) -> Option<u16> {
        self.qpair.qid()
    }
}

impl Subscriber for TcpConnection {
    fn init(&mut self, cx: &mut SubscriberCx<'_>, _now: Instant) -> std::io::Result<()> {
        let _ = self.stream.set_nodelay(true);
        cx.register(&mut self.stream, SOCKET, Interest::READABLE)
    }

    /// `read_closed` or `error` say the peer shut down its side or the socket has an error:
    /// then reading goes on until the socket says so, instead of stopping at the first short
    /// read.
    fn process(&mut self, ready: Readiness, cx: &mut SubscriberCx<'_>, now: Instant) -> Flow {
        self.in_span(|conn| conn.process_in_span(ready, cx, now))
    }

    fn deadline(&self) -> Option<Instant> {
        let stall = self
            .stalled_since
            .filter(|_| self.write_blocked)
            .map(|since| since + SEND_STALL_TIMEOUT);
        match (self.qpair.deadline(), stall) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn handle_timer(&mut self, cx: &mut SubscriberCx<'_>, now: Instant) -> Flow {
        self.in_span(|conn| conn.handle_timer_in_span(cx, now))
    }

    fn handle_io_done(
        &mut self,
        done: &mut dyn Iterator<Item = IoDone>,
        cx: &mut SubscriberCx<'_>,
        now: Instant,
    ) -> Flow {
        self.in_span(|conn| {
            let flow = each_io_done(done, |io| conn.qpair.handle_io_done(io, &mut cx.io, now));
            conn.settle(flow, cx, now)
        })
    }

    fn handle_buffers_granted(
        &mut self,
        tag: u16,
        credits: u32,
        cx: &mut SubscriberCx<'_>,
        now: Instant,
    ) -> Flow {
        self.in_span(|conn| {
            let flow = conn
                .qpair
                .handle_buffers_granted(tag, credits, &mut cx.io, now);
            conn.settle(flow, cx, now)
        })
    }

    /// Delivers async events the controller raised (namespace changes, discovery changes).
    fn handle_async_events(&mut self, cx: &mut SubscriberCx<'_>, now: Instant) -> Flow {
        self.in_span(|conn| {
            conn.qpair.poll_async_events();
            conn.settle(Flow::Continue, cx, now)
        })
    }

    fn controller(&self) -> Option<&Arc<Controller>> {
        self.qpair.controller()
    }

    fn accepted_on(&self) -> Option<&ListenerAddr> {
        Some(self.qpair.listener())
    }

    fn queue_pairs(&self) -> QueuePairs {
        QueuePairs::one(self.qid())
    }

    fn describe(&self) -> String {
        let mut name = format!("{} connection from {}", self.qpair.listener(), self.peer);
        if let (Some(ctrlr), Some(qid)) = (self.qpair.controller(), self.qid()) {
            name.push_str(&format!(" cntlid {} qid {qid}", ctrlr.cntlid()));
        }
        name
    }

    fn in_flight(&self) -> usize {
        self.qpair.in_flight()
    }

    /// Sends what it can, shuts the socket down and tears the queue down (reporting the
    /// controller if this was its admin queue).
    fn close(&mut self, cx: &mut SubscriberCx<'_>) {
        self.in_span(|conn| {
            let _ = cx.deregister(&mut conn.stream);
            let _ = conn.flush(Instant::now());
            let _ = conn.stream.shutdown(std::net::Shutdown::Both);
            if let Some(ctrlr) = conn.qpair.close() {
                cx.io.controller_gone(ctrlr);
            }
        });
    }
}

impl TcpConnection {
    fn process_in_span(
        &mut self,
        ready: Readiness,
        cx: &mut SubscriberCx<'_>,
        now: Instant,
    ) -> Flow {
        let closing = ready.read_closed || ready.error;
        if ready.writable {
            self.write_blocked = false;
        }
        let mut flow = Flow::Continue;
        // While paused, new bytes wait in the socket; finish resumes reading once the
        // output has gone.
        if (ready.readable || closing) && !self.paused {
            flow = self.read_all(closing, &mut cx.io, now);
        }
        self.settle(flow, cx, now)
    }

    fn handle_timer_in_span(&mut self, cx: &mut SubscriberCx<'_>, now: Instant) -> Flow {
        if let Some(since) = self.stalled_since.filter(|_| self.write_blocked) {
            if now >= since + SEND_STALL_TIMEOUT {
                warn!(
                    timeout_s = SEND_STALL_TIMEOUT.as_secs(),
                    "host stopped reading its socket; closing"
                );
                return Flow::Close;
            }
        }
        let flow = self.qpair.handle_timer(now);
        self.settle(flow, cx, now)
    }
}

impl TcpConnection {
    /// Reads until the socket is drained, or until the queue has too much to send. A read
    /// shorter than the room offered drains a TCP socket (epoll(7)), so the read that would
    /// only say `WouldBlock` is skipped: the next bytes raise a new edge.
    fn read_all(&mut self, closing: bool, cx: &mut IoCx<'_>, now: Instant) -> Flow {
        self.paused = false;
        if self.rlen > 0 && self.consume(cx, now) == Flow::Close {
            return Flow::Close;
        }
        loop {
            if self.qpair.is_backpressured() {
                self.paused = true;
                return Flow::Continue;
            }
            let want = self.qpair.max_pdu_len().max(READ_CHUNK) + READ_CHUNK;
            if self.rbuf.len() < want {
                self.rbuf.resize(want, 0);
            }
            let room = self.rbuf.len() - self.rlen;
            match self.stream.read(&mut self.rbuf[self.rlen..]) {
                Ok(0) => {
                    debug!(peer = %self.peer, "host closed the connection");
                    return Flow::Close;
                }
                Ok(n) => {
                    self.rlen += n;
                    if self.consume(cx, now) == Flow::Close {
                        return Flow::Close;
                    }
                    if n < room && !closing && !self.qpair.is_backpressured() {
                        return Flow::Continue;
                    }
                    // A full buffer: a PDU larger than we accept would have been refused by
                    // the parser; the buffer grows to max_pdu_len on the next turn.
                }
                Err(err) if err.kind() == ErrorKind::WouldBlock => return Flow::Continue,
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(err) => {
                    debug!(peer = %self.peer, %err, "read failed");
                    return Flow::Close;
                }
            }
        }
    }

    /// Hands the buffered bytes to the queue pair and keeps what it did not use.
    fn consume(&mut self, cx: &mut IoCx<'_>, now: Instant) -> Flow {
        let (used, flow) = self.qpair.handle_input(&self.rbuf[..self.rlen], cx, now);
        self.rbuf.copy_within(used..self.rlen, 0);
        self.rlen -= used;
        flow
    }

    /// [`finish`](Self::finish)es a call, then watches the socket for writability exactly
    /// while a send is blocked, so an idle connection never wakes the reactor.
    fn settle(&mut self, flow: Flow, cx: &mut SubscriberCx<'_>, now: Instant) -> Flow {
        let flow = self.finish(flow, &mut cx.io, now);
        if flow == Flow::Continue && self.write_blocked != self.writable_armed {
            let interest = if self.write_blocked {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            if let Err(err) = cx.reregister(&mut self.stream, SOCKET, interest) {
                warn!(peer = %self.peer, %err, "cannot change interest");
            }
            self.writable_armed = self.write_blocked;
        }
        flow
    }

    /// Sends what is queued, gives written buffers back, resumes reading a paused queue whose
    /// output has gone, then decides whether the connection stays.
    fn finish(&mut self, mut flow: Flow, cx: &mut IoCx<'_>, now: Instant) -> Flow {
        loop {
            let sent = self.flush(now);
            self.qpair.handle_sent(cx);
            if flow == Flow::Close || self.qpair.is_terminating() || sent.is_err() {
                return Flow::Close;
            }
            if !self.paused || self.qpair.is_backpressured() {
                return Flow::Continue;
            }
            flow = self.read_all(false, cx, now);
        }
    }

    /// Writes what is queued, a whole batch of PDUs per `writev`.
    fn flush(&mut self, now: Instant) -> std::io::Result<()> {
        let out = self.qpair.output();
        let mut progressed = false;
        while !out.is_empty() {
            let mut iov = [IoSlice::new(&[]); MAX_SLICES];
            let count = out.slices(&mut iov);
            match self.stream.write_vectored(&iov[..count]) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => {
                    out.advance(n);
                    progressed = true;
                }
                Err(err) if err.kind() == ErrorKind::WouldBlock => {
                    self.write_blocked = true;
                    if progressed || self.stalled_since.is_none() {
                        self.stalled_since = Some(now);
                    }
                    return Ok(());
                }
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        self.write_blocked = false;
        self.stalled_since = None;
        Ok(())
    }
}
