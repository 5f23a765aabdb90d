//! The few libc calls the control socket needs and std does not offer: a UNIX socket that is
//! bound but not yet listening (so its mode can be set before anyone can connect), the
//! effective uid, and group and user names.
//!
//! Every call is wrapped in a safe function here; nothing raw leaves this module.

#![allow(unsafe_code)]

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::net::UnixListener;
use std::path::Path;

/// How many connections may wait for `accept`; clients are an admin or a script.
const LISTEN_BACKLOG: libc::c_int = 128;

/// Name lookups give up past this buffer size instead of growing it forever.
const MAX_LOOKUP_BUFFER: usize = 1 << 20;

/// A UNIX stream socket bound to a path but not listening: connecting to it is refused
/// (ECONNREFUSED) whatever the file's mode, so the mode can be fixed first.
pub struct BoundSocket {
    fd: OwnedFd,
}

impl BoundSocket {
    /// Creates the socket and binds it to `path`, which must not exist.
    pub fn bind(path: &Path) -> io::Result<Self> {
        let address = socket_address(path)?;
        // SAFETY: socket(2) takes no pointers; a non-negative result is a new descriptor.
        let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let (addr, len) = address;
        // SAFETY: `addr` is an initialised sockaddr_un that lives across the call, and `len`
        // is no larger than its size (socket_address checked the path fits).
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast::<libc::sockaddr>(),
                len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { fd })
    }

    /// Starts listening: from now on whoever the file's mode admits can connect.
    pub fn listen(self) -> io::Result<UnixListener> {
        // SAFETY: `self.fd` is an open socket descriptor owned by `self`.
        if unsafe { libc::listen(self.fd.as_raw_fd(), LISTEN_BACKLOG) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(UnixListener::from(self.fd))
    }
}

/// The longest path a UNIX socket can have, in bytes (sun_path less its final NUL).
pub fn max_socket_path_len() -> usize {
    // SAFETY: sockaddr_un is plain data for which all-zero is valid.
    let addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_path.len() - 1
}

fn socket_address(path: &Path) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    let bytes = path.as_os_str().as_bytes();
    if bytes.is_empty() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a socket path must be non-empty and hold no NUL byte",
        ));
    }
    if bytes.len() > max_socket_path_len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "the path is {} bytes; a UNIX socket path may be at most {}",
                bytes.len(),
                max_socket_path_len()
            ),
        ));
    }
    // SAFETY: sockaddr_un is plain data for which all-zero is valid (and NUL-terminates the
    // path copied below, which is shorter than sun_path).
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::sa_family_t::try_from(libc::AF_UNIX)
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    for (slot, byte) in addr.sun_path.iter_mut().zip(bytes) {
        *slot = libc::c_char::from_ne_bytes([*byte]);
    }
    let len = std::mem::offset_of!(libc::sockaddr_un, sun_path) + bytes.len() + 1;
    let len =
        libc::socklen_t::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    Ok((addr, len))
}

/// The effective uid of this process: who owns the files it creates.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid(2) takes nothing and cannot fail.
    unsafe { libc::geteuid() }
}

/// The gid of the group called `name`, through NSS (files, LDAP, ...); `None` when there is no
/// such group.
pub fn group_id(name: &str) -> io::Result<Option<u32>> {
    let name = CString::new(name).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "a group name holds no NUL byte",
        )
    })?;
    let mut buf = vec![0 as libc::c_char; 1024];
    loop {
        // SAFETY: struct group is plain data for which all-zero is valid.
        let mut group: libc::group = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::group = std::ptr::null_mut();
        // SAFETY: `name` is NUL-terminated; `group`, `buf` (of the length passed) and `found`
        // are writable and outlive the call, which writes nothing elsewhere.
        let rc = unsafe {
            libc::getgrnam_r(
                name.as_ptr(),
                &mut group,
                buf.as_mut_ptr(),
                buf.len(),
                &mut found,
            )
        };
        match rc {
            0 if found.is_null() => return Ok(None),
            0 => return Ok(Some(group.gr_gid)),
            libc::ENOENT => return Ok(None),
            libc::ERANGE if buf.len() < MAX_LOOKUP_BUFFER => buf.resize(buf.len() * 2, 0),
            err => return Err(io::Error::from_raw_os_error(err)),
        }
    }
}

/// The user name of `uid`, when it has one.
pub fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0 as libc::c_char; 1024];
    loop {
        // SAFETY: struct passwd is plain data for which all-zero is valid.
        let mut passwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: `passwd`, `buf` (of the length passed) and `found` are writable and outlive
        // the call, which writes nothing elsewhere.
        let rc =
            unsafe { libc::getpwuid_r(uid, &mut passwd, buf.as_mut_ptr(), buf.len(), &mut found) };
        match rc {
            0 if found.is_null() => return None,
            0 => {
                // SAFETY: on success pw_name points to a NUL-terminated string inside `buf`,
                // which is still alive and not written to while the name is copied out.
                let name = unsafe { CStr::from_ptr(passwd.pw_name) };
                return Some(name.to_string_lossy().into_owned());
            }
            libc::ERANGE if buf.len() < MAX_LOOKUP_BUFFER => buf.resize(buf.len() * 2, 0),
            _ => return None,
        }
    }
}

/// `nobody (uid 65534)`, or `uid 1234` for a uid without a name: for messages.
pub fn describe_user(uid: u32) -> String {
    match user_name(uid) {
        Some(name) => format!("{name} (uid {uid})"),
        None => format!("uid {uid}"),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};
    use std::os::unix::fs::PermissionsExt as _;
    use std::os::unix::net::UnixStream;

    use super::*;

    #[test]
    fn a_bound_socket_refuses_connections_until_it_listens() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.sock");
        let bound = BoundSocket::bind(&path).expect("bind");
        let refused = UnixStream::connect(&path).expect_err("not listening yet");
        assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let listener = bound.listen().expect("listen");
        let mut client = UnixStream::connect(&path).expect("connect");
        let (mut server, _) = listener.accept().expect("accept");
        client.write_all(b"hi").expect("write");
        let mut got = [0u8; 2];
        server.read_exact(&mut got).expect("read");
        assert_eq!(&got, b"hi");
    }

    #[test]
    fn socket_paths_that_do_not_fit_are_refused() {
        let long = Path::new("/tmp").join("x".repeat(max_socket_path_len()));
        let err = BoundSocket::bind(&long).err().expect("too long");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("may be at most 107"), "{err}");
        assert!(BoundSocket::bind(Path::new("")).is_err());
    }

    #[test]
    fn groups_and_users_resolve_as_the_system_says() {
        // Group 0 is "root" on every Linux; compare with what the files say.
        assert_eq!(group_id("root").expect("lookup"), Some(0));
        assert_eq!(group_id("no-such-group-nvmf-tgt").expect("lookup"), None);
        assert!(group_id("bad\0name").is_err());
        assert_eq!(user_name(0).as_deref(), Some("root"));
        assert_eq!(describe_user(0), "root (uid 0)");
        let me = effective_uid();
        let probe = tempfile::tempfile().expect("tempfile");
        use std::os::unix::fs::MetadataExt as _;
        assert_eq!(probe.metadata().expect("stat").uid(), me);
    }
}
