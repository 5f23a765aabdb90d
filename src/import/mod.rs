//! `nvmf-tgt import`: a declaration from another target's saved configuration, SPDK's
//! `save_config` JSON (`spdk.rs`) or nvmetcli's saved JSON (`nvmetcli.rs`). Each reader fills
//! a [`Draft`] (what our declaration can say) and its notes (what it cannot); [`render`]
//! writes the TOML, each note a comment where it belongs, and the caller checks the result
//! with the same rules as `check`.

mod nvmetcli;
mod spdk;

use std::fmt::Write as _;

use serde_json::Value;

/// Where a configuration comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Spdk,
    Nvmetcli,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Shape(String),
}

/// Reads `text` in `format` into the text of a declaration.
pub fn import(format: Format, text: &str) -> Result<String, ImportError> {
    let json: Value = serde_json::from_str(text)?;
    let draft = match format {
        Format::Spdk => spdk::read(&json)?,
        Format::Nvmetcli => nvmetcli::read(&json)?,
    };
    Ok(render(&draft, format))
}

/// A transport section: its kind (`tcp`, `rdma`, `vfiouser`) and options as TOML values.
#[derive(Debug, Default)]
struct TransportDraft {
    kind: &'static str,
    options: Vec<(String, toml::Value)>,
    notes: Vec<String>,
}

#[derive(Debug)]
enum Backend {
    Ram { bytes: u64 },
    Null { bytes: u64 },
    File { path: String },
}

#[derive(Debug)]
struct NamespaceDraft {
    nsid: u32,
    backend: Backend,
    block_size: Option<u64>,
    read_only: bool,
    uuid: Option<String>,
    nguid: Option<String>,
    eui64: Option<String>,
}

#[derive(Debug)]
struct ListenerDraft {
    transport: &'static str,
    address: Option<String>,
    port: Option<u16>,
    path: Option<String>,
}

#[derive(Debug, Default)]
struct SubsystemDraft {
    nqn: String,
    serial: Option<String>,
    model: Option<String>,
    allow_any_host: bool,
    hosts: Vec<String>,
    max_namespaces: Option<u64>,
    listeners: Vec<ListenerDraft>,
    namespaces: Vec<NamespaceDraft>,
    notes: Vec<String>,
}

#[derive(Debug, Default)]
struct Draft {
    transports: Vec<TransportDraft>,
    subsystems: Vec<SubsystemDraft>,
    /// About the target as a whole.
    notes: Vec<String>,
}

impl Draft {
    /// The transport section of `kind`, made on first use.
    fn transport(&mut self, kind: &'static str) -> &mut TransportDraft {
        if let Some(i) = self.transports.iter().position(|t| t.kind == kind) {
            return &mut self.transports[i];
        }
        self.transports.push(TransportDraft {
            kind,
            ..TransportDraft::default()
        });
        let last = self.transports.len() - 1;
        &mut self.transports[last]
    }
}

fn quote(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn comment(out: &mut String, note: &str) {
    for line in note.lines() {
        let _ = writeln!(out, "# {line}");
    }
}

fn render(draft: &Draft, format: Format) -> String {
    let mut out = String::new();
    let from = match format {
        Format::Spdk => "SPDK's save_config",
        Format::Nvmetcli => "nvmetcli's saved configuration",
    };
    let _ = writeln!(
        out,
        "# Imported from {from} by `nvmf-tgt import`. Check it with `nvmf-tgt check -c FILE`;\n\
         # comments say what could not be carried over."
    );
    out.push_str("\n[target]\n");
    for note in &draft.notes {
        comment(&mut out, note);
    }
    out.push_str("interrupt_mode = true\ncore_mask = \"0x1\"\n");
    for t in &draft.transports {
        let _ = writeln!(out, "\n[transport.{}]", t.kind);
        for note in &t.notes {
            comment(&mut out, note);
        }
        for (key, value) in &t.options {
            let _ = writeln!(out, "{key} = {value}");
        }
    }
    for s in &draft.subsystems {
        out.push_str("\n[[subsystem]]\n");
        for note in &s.notes {
            comment(&mut out, note);
        }
        let _ = writeln!(out, "nqn = {}", quote(&s.nqn));
        if let Some(serial) = &s.serial {
            let _ = writeln!(out, "serial = {}", quote(serial));
        }
        if let Some(model) = &s.model {
            let _ = writeln!(out, "model = {}", quote(model));
        }
        if s.allow_any_host {
            out.push_str("allow_any_host = true\n");
        }
        if !s.hosts.is_empty() {
            let hosts: Vec<String> = s.hosts.iter().map(|h| quote(h)).collect();
            let _ = writeln!(out, "hosts = [{}]", hosts.join(", "));
        }
        if let Some(max) = s.max_namespaces {
            let _ = writeln!(out, "max_namespaces = {max}");
        }
        for l in &s.listeners {
            out.push_str("\n[[subsystem.listener]]\n");
            let _ = writeln!(out, "transport = {}", quote(l.transport));
            if let Some(address) = &l.address {
                let _ = writeln!(out, "address = {}", quote(address));
            }
            if let Some(port) = l.port {
                let _ = writeln!(out, "port = {port}");
            }
            if let Some(path) = &l.path {
                let _ = writeln!(out, "path = {}", quote(path));
            }
        }
        for ns in &s.namespaces {
            out.push_str("\n[[subsystem.namespace]]\n");
            let _ = writeln!(out, "nsid = {}", ns.nsid);
            match &ns.backend {
                Backend::Ram { bytes } => {
                    let _ = writeln!(out, "ram = {{ size = {} }}", quote(&format!("{bytes}B")));
                }
                Backend::Null { bytes } => {
                    let _ = writeln!(out, "null = {{ size = {} }}", quote(&format!("{bytes}B")));
                }
                Backend::File { path } => {
                    let _ = writeln!(out, "file = {{ path = {} }}", quote(path));
                }
            }
            if let Some(bs) = ns.block_size {
                let _ = writeln!(out, "block_size = {bs}");
            }
            if ns.read_only {
                out.push_str("read_only = true\n");
            }
            for (key, value) in [
                ("uuid", &ns.uuid),
                ("nguid", &ns.nguid),
                ("eui64", &ns.eui64),
            ] {
                if let Some(value) = value {
                    let _ = writeln!(out, "{key} = {}", quote(value));
                }
            }
        }
    }
    out
}

/// The top-level `subsystems` array both formats have, or what `file` (the format's name
/// for its files) is not.
fn subsystems<'a>(json: &'a Value, file: &str) -> Result<&'a [Value], ImportError> {
    json.get("subsystems")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .ok_or_else(|| ImportError::Shape(format!("no \"subsystems\" array: this is not {file}")))
}

/// A string field, or `None`.
fn text<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// A number field given as a number or as a string of digits (nvmetcli writes strings).
fn number(v: &Value, key: &str) -> Option<u64> {
    match v.get(key)? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A listener's transport, as our declaration names it.
fn transport_kind(trtype: &str) -> Option<&'static str> {
    match trtype.to_ascii_lowercase().as_str() {
        "tcp" => Some("tcp"),
        "rdma" => Some("rdma"),
        "vfiouser" => Some("vfiouser"),
        _ => None,
    }
}

/// The lowest nsid from 1 that `used` does not hold.
fn free_nsid(used: &[NamespaceDraft]) -> u32 {
    (1..)
        .find(|n| used.iter().all(|ns| ns.nsid != *n))
        .unwrap_or(1)
}

#[cfg(test)]
mod tests;
