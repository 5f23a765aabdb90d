//! The listening side of the control socket, on a thread of its own that sleeps in `accept`,
//! so it costs nothing while nobody asks.

use std::io::{BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use serde_json::{Value, json};

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
    #[error("another process already serves the control socket {0}")]
    InUse(PathBuf),
    #[error("cannot bind the control socket {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The running control socket; dropping it stops the thread and removes the socket file.
pub struct ControlServer {
    path: PathBuf,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ControlServer {
    /// Binds `path` (replacing a stale socket left by a dead target) and serves `handler`.
    pub fn spawn(path: &Path, handler: Handler) -> Result<Self, ControlServerError> {
        if UnixStream::connect(path).is_ok() {
            return Err(ControlServerError::InUse(path.to_owned()));
        }
        // Nobody answers there: whatever file is left is a stale socket of a dead target.
        let _ = std::fs::remove_file(path);
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let listener = UnixListener::bind(path).map_err(|source| ControlServerError::Bind {
            path: path.to_owned(),
            source,
        })?;
        let stopping = Arc::new(AtomicBool::new(false));
        let thread = {
            let stopping = Arc::clone(&stopping);
            std::thread::Builder::new()
                .name("nvmf-control".into())
                .spawn(move || accept_loop(&listener, &handler, &stopping))
                .map_err(|source| ControlServerError::Bind {
                    path: path.to_owned(),
                    source,
                })?
        };
        Ok(Self {
            path: path.to_owned(),
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
        let _ = std::fs::remove_file(&self.path);
    }
}

fn accept_loop(listener: &UnixListener, handler: &Handler, stopping: &AtomicBool) {
    for stream in listener.incoming() {
        if stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let handler = Arc::clone(handler);
        // One short-lived thread per client: clients are rare (an admin, a script).
        let _ = std::thread::Builder::new()
            .name("nvmf-control-client".into())
            .spawn(move || serve_client(stream, &handler));
    }
}

fn serve_client(stream: UnixStream, handler: &Handler) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let requests =
        serde_json::Deserializer::from_reader(BufReader::new(stream)).into_iter::<Value>();
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
