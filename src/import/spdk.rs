//! SPDK's `save_config` output: `{"subsystems": [{"subsystem": NAME, "config": [{"method",
//! "params"}...]}...]}`. The `bdev` subsystem's malloc, null, aio and uring bdevs become
//! namespace backends; the `nvmf` subsystem's transports, subsystems, listeners, hosts and
//! namespaces become ours. Everything else is named in a comment.

use std::collections::HashMap;

use serde_json::Value;

use super::{
    Backend, Draft, ImportError, ListenerDraft, NamespaceDraft, SubsystemDraft, free_nsid, number,
    text, transport_kind,
};
use crate::config::{RdmaTransport, TcpTransport, VfioUserTransport};

/// What a bdev gives a namespace.
struct Bdev {
    backend: Backend,
    block_size: Option<u64>,
    read_only: bool,
    uuid: Option<String>,
}

pub(super) fn read(json: &Value) -> Result<Draft, ImportError> {
    let subsystems = super::subsystems(json, "the output of SPDK's save_config")?;
    let mut draft = Draft::default();
    let mut bdevs: HashMap<String, Bdev> = HashMap::new();
    let mut foreign_bdevs: HashMap<String, String> = HashMap::new();
    let mut ignored = Vec::new();
    fn config_of<'a>(subsystems: &'a [Value], name: &'a str) -> impl Iterator<Item = &'a Value> {
        subsystems
            .iter()
            .filter(move |s| text(s, "subsystem") == Some(name))
            .flat_map(|s| {
                s.get("config")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
            })
    }
    for call in config_of(subsystems, "bdev") {
        let (method, params) = (text(call, "method").unwrap_or(""), &call["params"]);
        let Some(name) = text(params, "name") else {
            continue;
        };
        let block_size = number(params, "block_size");
        let sized = |blocks: Option<u64>| blocks.zip(block_size).map(|(n, bs)| n * bs);
        let backend = match method {
            "bdev_malloc_create" => {
                sized(number(params, "num_blocks")).map(|bytes| Backend::Ram { bytes })
            }
            "bdev_null_create" => {
                sized(number(params, "num_blocks")).map(|bytes| Backend::Null { bytes })
            }
            "bdev_aio_create" | "bdev_uring_create" => {
                text(params, "filename").map(|path| Backend::File {
                    path: path.to_owned(),
                })
            }
            _ => None,
        };
        match backend {
            Some(backend) => {
                bdevs.insert(
                    name.to_owned(),
                    Bdev {
                        backend,
                        block_size,
                        read_only: params.get("readonly").and_then(Value::as_bool) == Some(true),
                        uuid: text(params, "uuid").map(str::to_owned),
                    },
                );
            }
            None => {
                foreign_bdevs.insert(name.to_owned(), method.to_owned());
            }
        }
    }
    for call in config_of(subsystems, "nvmf") {
        let (method, params) = (text(call, "method").unwrap_or(""), &call["params"]);
        match method {
            "nvmf_create_transport" => transport(&mut draft, params),
            "nvmf_create_subsystem" => create_subsystem(&mut draft, params),
            "nvmf_subsystem_add_listener" => add_listener(&mut draft, params),
            "nvmf_subsystem_add_host" => {
                if let (Some(s), Some(host)) = (subsystem(&mut draft, params), text(params, "host"))
                {
                    s.hosts.push(host.to_owned());
                    if params.get("dhchap_key").is_some() {
                        s.notes.push(format!(
                            "not carried over: the DH-HMAC-CHAP keys of host {host} (no in-band authentication here)"
                        ));
                    }
                }
            }
            "nvmf_subsystem_add_ns" => add_namespace(&mut draft, params, &bdevs, &foreign_bdevs),
            "nvmf_set_max_subsystems" | "nvmf_set_crdt" => {}
            other => ignored.push(other.to_owned()),
        }
    }
    for s in subsystems {
        let name = text(s, "subsystem").unwrap_or("?");
        let calls = s
            .get("config")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        if !matches!(name, "bdev" | "nvmf") && calls > 0 {
            ignored.push(format!("SPDK subsystem {name} ({calls} calls)"));
        }
    }
    draft.notes.push(
        "SPDK's core mask (-m) and interrupt mode (--interrupt-mode) are command-line options that save_config does not record: set them here".into(),
    );
    if !ignored.is_empty() {
        draft
            .notes
            .push(format!("not carried over: {}", ignored.join(", ")));
    }
    Ok(draft)
}

fn transport(draft: &mut Draft, params: &Value) {
    let Some(trtype) = text(params, "trtype") else {
        return;
    };
    let Some(kind) = transport_kind(trtype) else {
        draft.notes.push(format!(
            "not carried over: the {trtype} transport (not supported)"
        ));
        return;
    };
    // Our keys are SPDK's: the default of each section names the ones we have.
    let ours = match kind {
        "tcp" => serde_json::to_value(TcpTransport::default()),
        "rdma" => serde_json::to_value(RdmaTransport::default()),
        _ => serde_json::to_value(VfioUserTransport::default()),
    }
    .unwrap_or_default();
    let section = draft.transport(kind);
    let mut dropped = Vec::new();
    for (key, value) in params.as_object().into_iter().flatten() {
        if key == "trtype" {
            continue;
        }
        // SPDK's "automatic" buffer cache is ours too when the key is absent.
        if key == "buf_cache_size" && value.as_u64() == Some(u64::from(u32::MAX)) {
            continue;
        }
        let known = ours.get(key).is_some();
        match (known, toml_value(value)) {
            (true, Some(v)) => section.options.push((key.clone(), v)),
            _ => dropped.push(format!("{key} = {value}")),
        }
    }
    if !dropped.is_empty() {
        section.notes.push(format!(
            "not carried over (no such option here): {}",
            dropped.join(", ")
        ));
    }
}

fn toml_value(v: &Value) -> Option<toml::Value> {
    match v {
        Value::Bool(b) => Some(toml::Value::Boolean(*b)),
        Value::Number(n) => n.as_i64().map(toml::Value::Integer),
        Value::String(s) => Some(toml::Value::String(s.clone())),
        _ => None,
    }
}

fn create_subsystem(draft: &mut Draft, params: &Value) {
    let Some(nqn) = text(params, "nqn") else {
        return;
    };
    if nqn == crate::nvme::DISCOVERY_NQN {
        return;
    }
    let mut s = SubsystemDraft {
        nqn: nqn.to_owned(),
        serial: text(params, "serial_number").map(str::to_owned),
        model: text(params, "model_number").map(str::to_owned),
        allow_any_host: params.get("allow_any_host").and_then(Value::as_bool) == Some(true),
        // SPDK's 0 means "no limit": ours is the largest we allow.
        max_namespaces: number(params, "max_namespaces")
            .map(|n| if n == 0 { 4096 } else { n.min(4096) }),
        ..SubsystemDraft::default()
    };
    let min = number(params, "min_cntlid").unwrap_or(1);
    let max = number(params, "max_cntlid").unwrap_or(0xFFEF);
    if (min, max) != (1, 0xFFEF) {
        s.notes.push(format!(
            "not carried over: controller IDs {min}..={max} (this target hands out 1..=65519)"
        ));
    }
    if params.get("ana_reporting").and_then(Value::as_bool) == Some(true) {
        s.notes.push("not carried over: ANA reporting".into());
    }
    draft.subsystems.push(s);
}

/// The subsystem `params.nqn` names, declared before.
fn subsystem<'a>(draft: &'a mut Draft, params: &Value) -> Option<&'a mut SubsystemDraft> {
    let nqn = text(params, "nqn")?;
    draft.subsystems.iter_mut().find(|s| s.nqn == nqn)
}

fn add_listener(draft: &mut Draft, params: &Value) {
    let address = &params["listen_address"];
    let trtype = text(address, "trtype").unwrap_or("");
    let Some(kind) = transport_kind(trtype) else {
        if let Some(s) = subsystem(draft, params) {
            s.notes.push(format!(
                "not carried over: a {trtype} listener (not supported)"
            ));
        }
        return;
    };
    let traddr = text(address, "traddr").unwrap_or("");
    let listener = if kind == "vfiouser" {
        ListenerDraft {
            transport: kind,
            address: None,
            port: None,
            path: Some(traddr.to_owned()),
        }
    } else {
        ListenerDraft {
            transport: kind,
            address: Some(traddr.to_owned()),
            port: number(address, "trsvcid").and_then(|p| u16::try_from(p).ok()),
            path: None,
        }
    };
    if let Some(s) = subsystem(draft, params) {
        if params.get("secure_channel").and_then(Value::as_bool) == Some(true) {
            s.notes.push(format!(
                "not carried over: TLS (secure_channel) on {trtype} {traddr}"
            ));
        }
        s.listeners.push(listener);
    }
}

fn add_namespace(
    draft: &mut Draft,
    params: &Value,
    bdevs: &HashMap<String, Bdev>,
    foreign: &HashMap<String, String>,
) {
    let ns = &params["namespace"];
    let Some(s) = subsystem(draft, params) else {
        return;
    };
    let name = text(ns, "bdev_name").unwrap_or("?");
    let nsid = number(ns, "nsid")
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| *n > 0)
        .unwrap_or_else(|| free_nsid(&s.namespaces));
    let Some(bdev) = bdevs.get(name) else {
        let why = foreign.get(name).map_or_else(
            || "is not declared in the bdev subsystem".to_owned(),
            |method| format!("comes from {method}; only malloc, null, aio and uring bdevs have a counterpart here"),
        );
        s.notes.push(format!(
            "not carried over: namespace {nsid} on bdev {name}, which {why}"
        ));
        return;
    };
    let backend = match &bdev.backend {
        Backend::Ram { bytes } => Backend::Ram { bytes: *bytes },
        Backend::Null { bytes } => Backend::Null { bytes: *bytes },
        Backend::File { path } => Backend::File { path: path.clone() },
    };
    s.namespaces.push(NamespaceDraft {
        nsid,
        backend,
        block_size: bdev.block_size,
        read_only: bdev.read_only,
        uuid: text(ns, "uuid")
            .map(str::to_owned)
            .or_else(|| bdev.uuid.clone()),
        nguid: text(ns, "nguid").map(str::to_owned),
        eui64: text(ns, "eui64").map(str::to_owned),
    });
    if text(ns, "ptpl_file").is_some() {
        s.notes.push(format!(
            "not carried over: namespace {nsid}'s persistent reservations file"
        ));
    }
}
