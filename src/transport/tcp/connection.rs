//! The owner of one TCP socket: moves bytes between it and the queue-pair state machine.

use std::io::{ErrorKind, IoSlice, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use mio::net::TcpStream;
use tracing::debug;

use super::qpair::{Flow, TcpQpair};
use super::send_queue::MAX_SLICES;
use super::{IoCx, TcpContext};
use crate::backend::IoDone;
use crate::controller::{Controller, ListenerAddr};

/// Bytes read per `read` call at least: large reads keep syscalls per command low.
const READ_CHUNK: usize = 64 * 1024;

pub struct TcpConnection {
    stream: TcpStream,
    peer: SocketAddr,
    qpair: TcpQpair,
    rbuf: Vec<u8>,
    rlen: usize,
    write_blocked: bool,
}

impl core::fmt::Debug for TcpConnection {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("TcpConnection")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl TcpConnection {
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
        }
    }

    pub fn source(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    pub fn listener(&self) -> &ListenerAddr {
        self.qpair.listener()
    }

    pub fn controller(&self) -> Option<&Arc<Controller>> {
        self.qpair.controller()
    }

    pub fn qid(&self) -> Option<u16> {
        self.qpair.qid()
    }

    pub fn in_flight(&self) -> usize {
        self.qpair.in_flight()
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.qpair.deadline()
    }

    /// Whether the socket must be watched for writability: only while a send is blocked, so
    /// an idle connection never wakes the reactor.
    pub fn wants_writable(&self) -> bool {
        self.write_blocked
    }

    /// Handles readiness. `closing` says the peer shut down its side or the socket has an
    /// error: then reading goes on until the socket says so, instead of stopping at the first
    /// short read.
    pub fn handle_event(
        &mut self,
        readable: bool,
        writable: bool,
        closing: bool,
        cx: &mut IoCx<'_>,
        now: Instant,
    ) -> Flow {
        if writable {
            self.write_blocked = false;
        }
        let mut flow = Flow::Continue;
        if readable || closing {
            flow = self.read_all(closing, cx, now);
        }
        self.finish(flow)
    }

    pub fn handle_io_done(&mut self, done: IoDone, cx: &mut IoCx<'_>, now: Instant) -> Flow {
        let flow = self.qpair.handle_io_done(done, cx, now);
        self.finish(flow)
    }

    pub fn handle_timer(&mut self, cx: &mut IoCx<'_>, now: Instant) -> Flow {
        let _ = cx;
        let flow = self.qpair.handle_timer(now);
        self.finish(flow)
    }

    /// Delivers async events the controller raised (namespace changes, discovery changes).
    pub fn handle_controller_events(&mut self) -> Flow {
        self.qpair.poll_async_events();
        self.finish(Flow::Continue)
    }

    /// Tears the queue down; returns the controller if this closed its admin queue.
    pub fn close(&mut self) -> Option<Arc<Controller>> {
        let _ = self.flush();
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        self.qpair.close()
    }

    /// Reads until the socket is drained. A read shorter than the room offered drains a TCP
    /// socket (epoll(7)), so the read that would only say `WouldBlock` is skipped: the next
    /// bytes raise a new edge.
    fn read_all(&mut self, closing: bool, cx: &mut IoCx<'_>, now: Instant) -> Flow {
        loop {
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
                    let (used, flow) = self.qpair.handle_input(&self.rbuf[..self.rlen], cx, now);
                    self.rbuf.copy_within(used..self.rlen, 0);
                    self.rlen -= used;
                    if flow == Flow::Close {
                        return Flow::Close;
                    }
                    if n < room && !closing {
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

    /// Sends what is queued, then decides whether the connection stays.
    fn finish(&mut self, flow: Flow) -> Flow {
        let sent = self.flush();
        if flow == Flow::Close || self.qpair.is_terminating() || sent.is_err() {
            return Flow::Close;
        }
        Flow::Continue
    }

    /// Writes what is queued, a whole batch of PDUs per `writev`.
    fn flush(&mut self) -> std::io::Result<()> {
        let out = self.qpair.output();
        while !out.is_empty() {
            let mut iov = [IoSlice::new(&[]); MAX_SLICES];
            let count = out.slices(&mut iov);
            match self.stream.write_vectored(&iov[..count]) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => out.advance(n),
                Err(err) if err.kind() == ErrorKind::WouldBlock => {
                    self.write_blocked = true;
                    return Ok(());
                }
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        self.write_blocked = false;
        Ok(())
    }
}
