//! sd_notify for `Type=notify-reload`: READY=1 when serving, RELOADING=1 with
//! MONOTONIC_USEC before a reload and READY=1 with STATUS= after. A datagram to
//! $NOTIFY_SOCKET; nothing happens outside systemd.

use std::os::unix::net::UnixDatagram;

fn send(message: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(socket) = UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt as _;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|addr| socket.send_to_addr(message.as_bytes(), &addr))
    } else {
        socket.send_to(message.as_bytes(), std::path::Path::new(&path))
    };
    if let Err(err) = sent {
        tracing::debug!(%err, "sd_notify failed");
    }
}

/// The target serves.
pub fn notify_ready(status: &str) {
    send(&format!("READY=1\nSTATUS={}", status.replace('\n', " ")));
}

/// A reload begins (systemd wants the monotonic clock with it).
pub fn notify_reloading() {
    let usec = crate::sys::monotonic_usec();
    send(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
}

/// The target stops.
pub fn notify_stopping() {
    send("STOPPING=1");
}
