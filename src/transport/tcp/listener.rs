//! The owner of one listening TCP socket: accepts connections and hands each to the least
//! loaded reactor, and retries on a timer when accepting fails for want of resources.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::Interest;
use mio::net::TcpListener;
use tracing::{debug, info, warn};

use super::{TcpConnection, TcpContext};
use crate::controller::ListenerAddr;
use crate::transport::context::Flow;
use crate::transport::subscriber::{Readiness, Subscriber, SubscriberCx};

/// How long a listener waits to accept again after running out of descriptors or memory.
///
/// Epoll is edge-triggered, so a backlog left non-empty after a failed accept raises no new
/// event: without this timer the listener would never accept again. The timer is the only
/// extra wake-up, and only while the shortage lasts. We retry rather than keep a reserve
/// descriptor to accept-and-close pending hosts with: a shortage usually passes (connections
/// close, setup timeouts free theirs), and a host waiting in the backlog is then served
/// within one retry period, while a host whose connection was closed is lost until it
/// reconnects by itself (the Linux host waits `reconnect_delay`, 10 s by default, and a
/// plain `nvme connect` just fails). A reserve descriptor is also not reliable here: any of
/// the target's other threads (file workers, control socket, reload) may take the slot it
/// frees before the reactor does.
const ACCEPT_RETRY: Duration = Duration::from_millis(200);
/// The key of the listening socket, the acceptor's one descriptor.
const SOCKET: u16 = 0;

/// A listening socket and the connections' shared context.
pub struct TcpAcceptor {
    socket: TcpListener,
    addr: ListenerAddr,
    context: Arc<TcpContext>,
    /// Set from the first accept that fails for want of resources until the backlog is
    /// drained again.
    shortage: Option<AcceptShortage>,
}

/// One burst of failed accepts: logged once when it starts and once when it ends.
struct AcceptShortage {
    started: Instant,
    failed_attempts: u64,
    /// Connections accepted between failures, while the backlog was still not drained.
    accepted: u64,
    /// When the armed retry is due; at most one is armed per listener.
    retry_at: Option<Instant>,
}

/// What a failed `accept` means for the listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AcceptFailure {
    /// The pending connection failed before it was taken (reset, network error, a signal)
    /// and the kernel dropped it, or the call was interrupted: take the next one.
    Connection,
    /// Out of descriptors or memory, or an error that should not happen: nothing more can be
    /// accepted now, and no event will say when it can; retry on a timer.
    Resources,
}

impl AcceptFailure {
    fn of(err: &std::io::Error) -> Self {
        // accept(2): Linux passes pending network errors of the new socket up from accept,
        // and they should be treated like EAGAIN (go on).
        match err.raw_os_error() {
            Some(
                libc::ECONNABORTED
                | libc::EINTR
                | libc::EPROTO
                | libc::EPERM
                | libc::ENETDOWN
                | libc::ENOPROTOOPT
                | libc::EHOSTDOWN
                | libc::ENONET
                | libc::EHOSTUNREACH
                | libc::EOPNOTSUPP
                | libc::ENETUNREACH,
            ) => Self::Connection,
            // EMFILE, ENFILE, ENOBUFS, ENOMEM, and anything unexpected: never stop accepting.
            _ => Self::Resources,
        }
    }
}

impl TcpAcceptor {
    /// Accepts on `socket` (a bound, listening socket) once a reactor hosts it.
    pub fn new(
        socket: std::net::TcpListener,
        addr: ListenerAddr,
        context: Arc<TcpContext>,
    ) -> std::io::Result<Self> {
        socket.set_nonblocking(true)?;
        Ok(Self {
            socket: TcpListener::from_std(socket),
            addr,
            context,
            shortage: None,
        })
    }

    /// Accepts until the backlog is empty, or until accepting fails for want of descriptors
    /// or memory; then retries on a timer (see [`ACCEPT_RETRY`]).
    ///
    /// A shortage is logged once when it starts and once when the backlog has been drained,
    /// not at the first success: with the target held at its limit, accepts would alternate
    /// between success and failure on every retry and flood the log.
    fn accept_all(&mut self, cx: &mut SubscriberCx<'_>, now: Instant) {
        loop {
            match self.socket.accept() {
                Ok((stream, peer)) => {
                    if let Some(shortage) = &mut self.shortage {
                        shortage.accepted += 1;
                    }
                    let conn = TcpConnection::new(
                        stream,
                        peer,
                        self.addr.clone(),
                        Arc::clone(&self.context),
                        now,
                    );
                    debug!(%peer, listener = %self.addr, "connection accepted");
                    cx.hand_off(Box::new(conn));
                }
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                    if let Some(shortage) = self.shortage.take() {
                        let lasted = now.saturating_duration_since(shortage.started);
                        info!(
                            listener = %self.addr,
                            failed_attempts = shortage.failed_attempts,
                            accepted_meanwhile = shortage.accepted,
                            lasted_ms = lasted.as_millis(),
                            "accepting again: the backlog is drained"
                        );
                    }
                    return;
                }
                Err(err) => match AcceptFailure::of(&err) {
                    AcceptFailure::Connection => {
                        debug!(%err, "pending connection lost before accept");
                    }
                    AcceptFailure::Resources => {
                        let addr = &self.addr;
                        let shortage = self.shortage.get_or_insert_with(|| {
                            warn!(
                                listener = %addr,
                                %err,
                                retry_ms = ACCEPT_RETRY.as_millis(),
                                "accept failed; retrying on a timer, silently until the \
                                 backlog is drained"
                            );
                            AcceptShortage {
                                started: now,
                                failed_attempts: 0,
                                accepted: 0,
                                retry_at: None,
                            }
                        });
                        shortage.failed_attempts += 1;
                        if shortage.retry_at.is_none() {
                            shortage.retry_at = Some(now + ACCEPT_RETRY);
                        }
                        return;
                    }
                },
            }
        }
    }
}

impl Subscriber for TcpAcceptor {
    fn init(&mut self, cx: &mut SubscriberCx<'_>, _now: Instant) -> std::io::Result<()> {
        cx.register(&mut self.socket, SOCKET, Interest::READABLE)
            .inspect_err(|err| warn!(%err, listener = %self.addr, "cannot watch listener"))
    }

    fn process(&mut self, _ready: Readiness, cx: &mut SubscriberCx<'_>, now: Instant) -> Flow {
        self.accept_all(cx, now);
        Flow::Continue
    }

    fn deadline(&self) -> Option<Instant> {
        self.shortage.as_ref()?.retry_at
    }

    /// Retries accepting once the armed retry is due; entries left over from an earlier
    /// shortage do nothing.
    fn handle_timer(&mut self, cx: &mut SubscriberCx<'_>, now: Instant) -> Flow {
        let Some(shortage) = &mut self.shortage else {
            return Flow::Continue;
        };
        if shortage.retry_at.is_some_and(|at| at <= now) {
            shortage.retry_at = None;
            self.accept_all(cx, now);
        }
        Flow::Continue
    }

    fn listening_on(&self) -> Option<&ListenerAddr> {
        Some(&self.addr)
    }

    fn close(&mut self, cx: &mut SubscriberCx<'_>) {
        let _ = cx.deregister(&mut self.socket);
        info!(listener = %self.addr, "stopped listening");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_failures_for_want_of_resources_retry_and_lost_connections_go_on() {
        for errno in [
            libc::EMFILE,
            libc::ENFILE,
            libc::ENOBUFS,
            libc::ENOMEM,
            libc::EINVAL,
        ] {
            let err = std::io::Error::from_raw_os_error(errno);
            assert_eq!(AcceptFailure::of(&err), AcceptFailure::Resources, "{err}");
        }
        for errno in [
            libc::ECONNABORTED,
            libc::EINTR,
            libc::EPROTO,
            libc::ENETUNREACH,
        ] {
            let err = std::io::Error::from_raw_os_error(errno);
            assert_eq!(AcceptFailure::of(&err), AcceptFailure::Connection, "{err}");
        }
    }
}
