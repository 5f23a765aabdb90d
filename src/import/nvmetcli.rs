//! nvmetcli's saved configuration (`nvmetcli save`, `/etc/nvmet/config.json`): `hosts`,
//! `ports` (an address, the subsystems it exports, referrals, parameters) and `subsystems`
//! (attributes, allowed hosts, namespaces on device paths). nvmetcli writes attribute values
//! as strings.

use serde_json::Value;

use super::{
    Backend, Draft, ImportError, ListenerDraft, NamespaceDraft, SubsystemDraft, number, text,
    transport_kind,
};

pub(super) fn read(json: &Value) -> Result<Draft, ImportError> {
    let subsystems = super::subsystems(json, "a configuration nvmetcli saved")?;
    let ports: &[Value] = json
        .get("ports")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice);
    let mut draft = Draft::default();
    draft
        .notes
        .push("Linux's nvmet runs in the kernel on every CPU: choose the cores here".into());
    for port in ports {
        let addr = &port["addr"];
        let trtype = text(addr, "trtype").unwrap_or("");
        let id = number(port, "portid").unwrap_or(0);
        let Some(kind) = transport_kind(trtype).filter(|k| *k != "vfiouser") else {
            draft.notes.push(format!(
                "not carried over: port {id} ({trtype}: not supported here)"
            ));
            continue;
        };
        let section = draft.transport(kind);
        if let Some(size) = number(&port["param"], "inline_data_size") {
            let key = "in_capsule_data_size".to_owned();
            if section.options.iter().all(|(k, _)| *k != key) {
                section
                    .options
                    .push((key, toml::Value::Integer(i64::try_from(size).unwrap_or(0))));
            }
        }
        let referrals = port
            .get("referrals")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        if referrals > 0 {
            draft.notes.push(format!(
                "not carried over: the {referrals} discovery referrals of port {id}"
            ));
        }
        if text(addr, "treq").is_some_and(|t| t == "required") {
            draft.notes.push(format!(
                "not carried over: secure channel required on port {id}"
            ));
        }
    }
    for s in subsystems {
        let Some(nqn) = text(s, "nqn") else {
            continue;
        };
        let attr = &s["attr"];
        let mut sub = SubsystemDraft {
            nqn: nqn.to_owned(),
            serial: text(attr, "serial").map(str::to_owned),
            model: text(attr, "model").map(str::to_owned),
            allow_any_host: number(attr, "allow_any_host") == Some(1),
            hosts: s
                .get("allowed_hosts")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            ..SubsystemDraft::default()
        };
        if let Some(qid_max) = number(attr, "qid_max") {
            sub.notes.push(format!(
                "not carried over: attr_qid_max = {qid_max} (the transport's max_io_qpairs_per_ctrlr applies)"
            ));
        }
        let (min, max) = (
            number(attr, "cntlid_min").unwrap_or(1),
            number(attr, "cntlid_max").unwrap_or(0xFFEF),
        );
        if (min, max) != (1, 0xFFEF) {
            sub.notes.push(format!(
                "not carried over: controller IDs {min}..={max} (this target hands out 1..=65519)"
            ));
        }
        for port in ports {
            let exported = port
                .get("subsystems")
                .and_then(Value::as_array)
                .is_some_and(|list| list.iter().any(|n| n.as_str() == Some(nqn)));
            let addr = &port["addr"];
            let Some(kind) = text(addr, "trtype").and_then(transport_kind) else {
                continue;
            };
            if exported && kind != "vfiouser" {
                sub.listeners.push(ListenerDraft {
                    transport: kind,
                    address: text(addr, "traddr").map(str::to_owned),
                    port: number(addr, "trsvcid").and_then(|p| u16::try_from(p).ok()),
                    path: None,
                });
            }
        }
        for ns in s
            .get("namespaces")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(nsid) = number(ns, "nsid").and_then(|n| u32::try_from(n).ok()) else {
                continue;
            };
            let device = &ns["device"];
            let Some(path) = text(device, "path").filter(|p| !p.is_empty()) else {
                sub.notes.push(format!(
                    "not carried over: namespace {nsid}, which has no device path"
                ));
                continue;
            };
            if number(ns, "enable") == Some(0) {
                sub.notes.push(format!(
                    "not carried over: namespace {nsid} on {path}, disabled in nvmet (add it to serve it)"
                ));
                continue;
            }
            sub.namespaces.push(NamespaceDraft {
                nsid,
                backend: Backend::File {
                    path: path.to_owned(),
                },
                block_size: None,
                read_only: false,
                uuid: identifier(device, "uuid"),
                nguid: identifier(device, "nguid"),
                eui64: None,
            });
            if number(ns, "ana_grpid").is_some_and(|g| g != 1) {
                sub.notes
                    .push(format!("not carried over: namespace {nsid}'s ANA group"));
            }
        }
        draft.subsystems.push(sub);
    }
    Ok(draft)
}

/// An identifier nvmet reports, unless it is all zeroes (nvmet's "none").
fn identifier(device: &Value, key: &str) -> Option<String> {
    text(device, key)
        .filter(|id| id.chars().any(|c| c.is_ascii_hexdigit() && c != '0'))
        .map(str::to_owned)
}
