//! The listening side of the control socket, on a thread of its own that sleeps in `accept`,
//! so it costs nothing while nobody asks.
//!
//! Whoever can connect can reload the target and read its state, so the socket is created
//! for this process's user alone (mode 0600, or 0660 with a declared group) whatever the
//! umask, and nobody can connect before that mode is set: the socket is bound, its group and
//! mode are set, and only then does it listen (a bound socket that does not listen refuses
//! every connection). A path that is not ours is refused rather than replaced.

use std::fs::Permissions;
use std::io::{BufReader, Read, Write};
use std::os::unix::fs::{
    DirBuilderExt as _, FileTypeExt as _, MetadataExt as _, PermissionsExt as _,
};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{Value, json};
use tracing::warn;

use super::os::{self, BoundSocket};

/// A JSON-RPC error: code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
}

impl RpcError {
    pub fn method_not_found(method: &str) -> Self {
        Self {
            code: -32601,
            message: format!("method not found: {method}"),
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            code: -32603,
            message: message.into(),
        }
    }

    pub fn invalid_params(message: impl Into<String>) -> Self {
        Self {
            code: -32602,
            message: message.into(),
        }
    }
}

/// Answers one method call.
pub type Handler = Arc<dyn Fn(&str, &Value) -> Result<Value, RpcError> + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum ControlServerError {
    #[error("control_socket_group {0:?} does not exist")]
    UnknownGroup(String),
    #[error("cannot look up the group {name:?}")]
    GroupLookup {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "refusing the control socket {path}: {dir} {why}, so another user could replace the socket"
    )]
    UnsafeDirectory {
        path: PathBuf,
        dir: PathBuf,
        why: String,
    },
    #[error("refusing the control socket {path}: {dir} is not a directory")]
    NotADirectory { path: PathBuf, dir: PathBuf },
    #[error("cannot create the directory {dir} for the control socket")]
    CreateDirectory {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot inspect {path}")]
    Inspect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "refusing the control socket {path}: it exists and is {kind}, not a socket (it is left as it is)"
    )]
    NotASocket { path: PathBuf, kind: &'static str },
    #[error(
        "refusing the control socket {path}: the socket there belongs to {owner}, and this target runs as {me}"
    )]
    ForeignOwner {
        path: PathBuf,
        owner: String,
        me: String,
    },
    #[error("another process already serves the control socket {0}")]
    InUse(PathBuf),
    #[error("cannot remove the stale control socket {path}")]
    RemoveStale {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot bind the control socket {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set the group and mode of the control socket {path}")]
    Restrict {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the control thread")]
    Thread(#[source] std::io::Error),
}

/// The running control socket; dropping it stops the thread and removes the socket file.
pub struct ControlServer {
    path: PathBuf,
    /// Device and inode of the socket file bound, so that dropping removes only our own file
    /// and not one another target bound at the same path since.
    inode: (u64, u64),
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ControlServer {
    /// Creates the socket at `path` for this user (mode 0600) or, with `group`, for that group
    /// too (0660), replacing only a stale socket of our own, and serves `handler` on it.
    pub fn spawn(
        path: &Path,
        group: Option<&str>,
        handler: Handler,
    ) -> Result<Self, ControlServerError> {
        let gid = group.map(resolve_group).transpose()?;
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        prepare_directory(path, dir, gid)?;
        take_over(path)?;
        let listener = bind_restricted(path, gid)?;
        let inode = std::fs::symlink_metadata(path)
            .map(|meta| (meta.dev(), meta.ino()))
            .map_err(|source| ControlServerError::Inspect {
                path: path.to_owned(),
                source,
            })?;
        let stopping = Arc::new(AtomicBool::new(false));
        let thread = {
            let stopping = Arc::clone(&stopping);
            std::thread::Builder::new()
                .name("nvmf-control".into())
                .spawn(move || accept_loop(&listener, &handler, &stopping))
                .map_err(ControlServerError::Thread)?
        };
        Ok(Self {
            path: path.to_owned(),
            inode,
            stopping,
            thread: Some(thread),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Wake the accept call so the thread sees the flag.
        let _ = UnixStream::connect(&self.path);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let still_ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|meta| (meta.dev(), meta.ino()) == self.inode);
        if still_ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn resolve_group(name: &str) -> Result<u32, ControlServerError> {
    os::group_id(name)
        .map_err(|source| ControlServerError::GroupLookup {
            name: name.to_owned(),
            source,
        })?
        .ok_or_else(|| ControlServerError::UnknownGroup(name.to_owned()))
}

/// Makes sure no other user can replace the socket once it is bound: `dir` and the
/// directories above it must be ours or root's, and not writable by everyone unless sticky.
/// Missing directories are created 0700 (0750 for a declared group), whatever the umask.
///
/// This refuses rather than warns: a user who can rename entries in any of these directories
/// can put their own socket at `path`, and `nvmf-tgt plan` (and rpc.py) would then send them
/// the declarations and the requests meant for the target. A sticky directory such as /tmp
/// is accepted: there others may create names but cannot remove or rename ours. Symbolic
/// links on the way (/var/run) are followed; the real directories are the ones checked.
fn prepare_directory(path: &Path, dir: &Path, gid: Option<u32>) -> Result<(), ControlServerError> {
    let mut missing = Vec::new();
    let mut existing = dir;
    while std::fs::symlink_metadata(existing).is_err() {
        missing.push(existing);
        existing = match existing.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
    }
    let real = std::fs::canonicalize(existing).map_err(|source| ControlServerError::Inspect {
        path: existing.to_owned(),
        source,
    })?;
    let me = os::effective_uid();
    for ancestor in real.ancestors() {
        let meta = std::fs::metadata(ancestor).map_err(|source| ControlServerError::Inspect {
            path: ancestor.to_owned(),
            source,
        })?;
        if !meta.is_dir() {
            return Err(ControlServerError::NotADirectory {
                path: path.to_owned(),
                dir: ancestor.to_owned(),
            });
        }
        if let Some(why) = unsafe_directory(&meta, me) {
            return Err(ControlServerError::UnsafeDirectory {
                path: path.to_owned(),
                dir: ancestor.to_owned(),
                why,
            });
        }
    }
    let mode = if gid.is_some() { 0o750 } else { 0o700 };
    for dir in missing.into_iter().rev() {
        let created = std::fs::DirBuilder::new()
            .mode(mode)
            .create(dir)
            .and_then(|()| std::os::unix::fs::chown(dir, None, gid))
            // The umask may have taken bits from `mode`; a group needs its r-x.
            .and_then(|()| std::fs::set_permissions(dir, Permissions::from_mode(mode)));
        created.map_err(|source| ControlServerError::CreateDirectory {
            dir: dir.to_owned(),
            source,
        })?;
    }
    if let Some(gid) = gid {
        warn_if_group_cannot_enter(dir, gid);
    }
    Ok(())
}

/// Why another user could rename or remove entries of this directory, if they could.
fn unsafe_directory(meta: &std::fs::Metadata, me: u32) -> Option<String> {
    if meta.uid() != me && meta.uid() != 0 {
        return Some(format!("belongs to {}", os::describe_user(meta.uid())));
    }
    let mode = meta.mode();
    if mode & 0o002 != 0 && mode & 0o1000 == 0 {
        return Some(format!(
            "is writable by every user (mode {:04o}) and not sticky",
            mode & 0o7777
        ));
    }
    None
}

/// A group that cannot search the socket's directory cannot connect, whatever the socket's
/// own mode: say so, since the declaration asked for it.
fn warn_if_group_cannot_enter(dir: &Path, gid: u32) {
    let Ok(meta) = std::fs::metadata(dir) else {
        return;
    };
    let mode = meta.mode();
    let group_may_search = mode & 0o001 != 0 || (meta.gid() == gid && mode & 0o010 != 0);
    if !group_may_search {
        warn!(
            dir = %dir.display(),
            mode = format!("{:04o}", mode & 0o7777),
            gid,
            "control_socket_group cannot reach the control socket: its directory does not let the group search it"
        );
    }
}

/// Clears the way for binding `path`: nothing there, or a stale socket of our own that nobody
/// answers on (a target of ours that died). Anything else is refused and left alone.
fn take_over(path: &Path) -> Result<(), ControlServerError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ControlServerError::Inspect {
                path: path.to_owned(),
                source,
            });
        }
    };
    if !meta.file_type().is_socket() {
        return Err(ControlServerError::NotASocket {
            path: path.to_owned(),
            kind: file_kind(&meta),
        });
    }
    let me = os::effective_uid();
    if meta.uid() != me {
        return Err(ControlServerError::ForeignOwner {
            path: path.to_owned(),
            owner: os::describe_user(meta.uid()),
            me: os::describe_user(me),
        });
    }
    if UnixStream::connect(path).is_ok() {
        return Err(ControlServerError::InUse(path.to_owned()));
    }
    std::fs::remove_file(path).map_err(|source| ControlServerError::RemoveStale {
        path: path.to_owned(),
        source,
    })
}

fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    let kind = meta.file_type();
    if kind.is_file() {
        "a regular file"
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_symlink() {
        "a symbolic link"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else {
        "not a socket"
    }
}

/// Binds, gives the file its group and mode, and only then listens, so that there is no
/// moment at which a user the mode excludes could connect.
fn bind_restricted(path: &Path, gid: Option<u32>) -> Result<UnixListener, ControlServerError> {
    let bound = BoundSocket::bind(path).map_err(|source| ControlServerError::Bind {
        path: path.to_owned(),
        source,
    })?;
    let mode = if gid.is_some() { 0o660 } else { 0o600 };
    let restricted = std::os::unix::fs::lchown(path, None, gid)
        .and_then(|()| std::fs::set_permissions(path, Permissions::from_mode(mode)));
    if let Err(source) = restricted {
        let _ = std::fs::remove_file(path);
        return Err(ControlServerError::Restrict {
            path: path.to_owned(),
            source,
        });
    }
    bound.listen().map_err(|source| {
        let _ = std::fs::remove_file(path);
        ControlServerError::Bind {
            path: path.to_owned(),
            source,
        }
    })
}

/// Clients served at once; more wait in the socket's backlog.
const MAX_CLIENTS: usize = 16;
/// Bytes one client may send in all: a declaration of the largest size `check` reads,
/// escaped into JSON, with room to spare.
const MAX_CLIENT_BYTES: u64 = 4 * crate::config::MAX_FILE_BYTES;
/// How long accepting pauses after it failed (out of descriptors, say), instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

fn accept_loop(listener: &UnixListener, handler: &Handler, stopping: &AtomicBool) {
    let clients = Arc::new(AtomicUsize::new(0));
    let mut failing = false;
    for stream in listener.incoming() {
        if stopping.load(Ordering::SeqCst) {
            return;
        }
        let stream = match stream {
            Ok(stream) => {
                failing = false;
                stream
            }
            Err(err) => {
                if !failing {
                    warn!(%err, "control socket: accept failed; retrying");
                    failing = true;
                }
                std::thread::sleep(ACCEPT_BACKOFF);
                continue;
            }
        };
        while clients.load(Ordering::Acquire) >= MAX_CLIENTS {
            std::thread::sleep(ACCEPT_BACKOFF);
            if stopping.load(Ordering::SeqCst) {
                return;
            }
        }
        let handler = Arc::clone(handler);
        let count = Arc::clone(&clients);
        count.fetch_add(1, Ordering::AcqRel);
        // One short-lived thread per client: clients are rare (an admin, a script).
        let spawned = std::thread::Builder::new()
            .name("nvmf-control-client".into())
            .spawn(move || {
                serve_client(stream, &handler);
                count.fetch_sub(1, Ordering::AcqRel);
            });
        if spawned.is_err() {
            clients.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

fn serve_client(stream: UnixStream, handler: &Handler) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let reader = BufReader::new(stream.take(MAX_CLIENT_BYTES));
    let requests = serde_json::Deserializer::from_reader(reader).into_iter::<Value>();
    for request in requests {
        let response = match request {
            Ok(request) => answer(&request, handler),
            Err(err) if err.is_eof() || err.is_io() => return,
            Err(err) => {
                let reply = error_reply(&Value::Null, -32700, &format!("parse error: {err}"));
                let _ = writeln!(writer, "{reply}");
                return;
            }
        };
        if writeln!(writer, "{response}").is_err() {
            return;
        }
    }
}

fn answer(request: &Value, handler: &Handler) -> Value {
    let id = request.get("id").cloned().unwrap_or(Value::Null);
    let Some(method) = request.get("method").and_then(Value::as_str) else {
        return error_reply(&id, -32600, "invalid request: no method");
    };
    let params = request.get("params").cloned().unwrap_or(Value::Null);
    match handler(method, &params) {
        Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
        Err(err) => error_reply(&id, err.code, &err.message),
    }
}

fn error_reply(id: &Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}
