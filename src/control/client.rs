//! The calling side of the control socket, used by `nvmf-tgt status`.

use std::io::{BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

#[derive(Debug, thiserror::Error)]
pub enum ControlClientError {
    #[error("cannot reach the target at {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the target did not answer")]
    Io(#[from] std::io::Error),
    #[error("the target sent a malformed reply")]
    Malformed(#[from] serde_json::Error),
    #[error("the target refused: {message} (code {code})")]
    Rpc { code: i64, message: String },
}

/// Calls `method` with `params` and returns its result.
pub fn call(path: &Path, method: &str, params: Value) -> Result<Value, ControlClientError> {
    let mut stream = UnixStream::connect(path).map_err(|source| ControlClientError::Connect {
        path: path.to_owned(),
        source,
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let request = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    writeln!(stream, "{request}")?;
    let mut replies =
        serde_json::Deserializer::from_reader(BufReader::new(stream)).into_iter::<Value>();
    let reply = match replies.next() {
        Some(reply) => reply?,
        None => {
            return Err(ControlClientError::Io(std::io::Error::from(
                std::io::ErrorKind::UnexpectedEof,
            )));
        }
    };
    if let Some(error) = reply.get("error") {
        return Err(ControlClientError::Rpc {
            code: error.get("code").and_then(Value::as_i64).unwrap_or(0),
            message: error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("unknown error")
                .to_owned(),
        });
    }
    Ok(reply.get("result").cloned().unwrap_or(Value::Null))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::control::{ControlServer, RpcError};

    #[test]
    fn round_trip_over_a_real_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ctl.sock");
        let server = ControlServer::spawn(
            &path,
            None,
            Arc::new(|method: &str, params: &Value| match method {
                "echo" => Ok(params.clone()),
                other => Err(RpcError::method_not_found(other)),
            }),
        )
        .expect("spawn");
        let got = call(&path, "echo", json!({"a": 1})).expect("call");
        assert_eq!(got, json!({"a": 1}));
        let err = call(&path, "nope", Value::Null).expect_err("unknown method");
        assert!(
            matches!(err, ControlClientError::Rpc { code: -32601, .. }),
            "{err}"
        );
        // A second server on the same live socket is refused.
        assert!(matches!(
            ControlServer::spawn(&path, None, Arc::new(|_: &str, _: &Value| Ok(Value::Null))),
            Err(crate::control::ControlServerError::InUse(_))
        ));
        drop(server);
        assert!(!path.exists(), "socket file removed on drop");
        assert!(matches!(
            call(&path, "echo", Value::Null),
            Err(ControlClientError::Connect { .. })
        ));
    }
}
