//! Setting up a run: the admin queue (connect, enable, identify), the namespace, the checks
//! of the options against what the target allows, then the I/O queues.

use std::io::ErrorKind;

use super::queue::{IoQueue, QueueParams};
use super::{PerfConfig, PerfError, connect_refusal};
use crate::host::{HostError, HostQueue, QueueOptions};
use crate::nvme::Status;
use crate::nvme::identify::IdentifyController;

/// Keep Alive Timeout asked for on the admin queue; `run` sends a Keep Alive well within it.
pub const KATO_MS: u32 = 30_000;

#[derive(Debug, Clone, Copy)]
pub struct Namespace {
    pub nsid: u32,
    pub blocks: u64,
    pub block_size: usize,
}

pub struct Session {
    pub admin: HostQueue,
    pub ns: Namespace,
    pub queues: Vec<IoQueue>,
}

impl Session {
    pub fn connect(cfg: &PerfConfig) -> Result<Self, PerfError> {
        let mut opts = QueueOptions::admin(&cfg.subnqn, &cfg.hostnqn);
        opts.header_digest = cfg.header_digest;
        opts.data_digest = cfg.data_digest;
        opts.timeout = cfg.timeout;
        opts.kato_ms = KATO_MS;
        let mut admin = HostQueue::connect(cfg.addr, &opts)
            .map_err(|e| connect_error(cfg, "connecting the admin queue", e))?;
        let during = "setting up the controller";
        let err = |e| host_error(cfg, during, e);
        admin.enable_controller().map_err(err)?;
        let cap = admin.property_get(0, true).map_err(err)?;
        let max_entries = (cap & 0xFFFF) + 1;
        let page_size = 4096usize << ((cap >> 48) & 0xF);
        let ctrl = admin.identify(1, 0).map_err(err)?;
        let ctrl = IdentifyController::parse(&ctrl).ok_or_else(|| {
            PerfError::Invalid("the target sent a short Identify Controller page".into())
        })?;
        let ns = namespace(cfg, &mut admin)?;
        check_options(cfg, &ns, max_entries, &ctrl, page_size)?;

        let in_capsule = usize::try_from(ctrl.ioccsz * 16)
            .unwrap_or(0)
            .saturating_sub(64);
        let params = QueueParams {
            depth: cfg.queue_depth,
            io_size: cfg.io_size,
            block_size: ns.block_size,
            nsid: ns.nsid,
            in_capsule,
        };
        let mut queues = Vec::with_capacity(usize::from(cfg.connections));
        for qid in 1..=cfg.connections {
            let mut io_opts = opts.io(qid, admin.cntlid(), cfg.queue_depth + 1);
            io_opts.disable_sq_flow_control = true;
            let host = HostQueue::connect(cfg.addr, &io_opts)
                .map_err(|e| connect_error(cfg, "connecting an I/O queue", e))?;
            queues.push(
                IoQueue::from_host(host, params)
                    .map_err(|source| PerfError::Queue { qid, source })?,
            );
        }
        Ok(Self { admin, ns, queues })
    }
}

/// The namespace asked for, or the first active one.
fn namespace(cfg: &PerfConfig, admin: &mut HostQueue) -> Result<Namespace, PerfError> {
    let during = "identifying the namespace";
    let list = admin
        .identify(2, 0)
        .map_err(|e| host_error(cfg, during, e))?;
    let active: Vec<u32> = list
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .take_while(|&n| n != 0)
        .collect();
    let nsid = match cfg.nsid {
        Some(nsid) => nsid,
        None => *active
            .first()
            .ok_or_else(|| PerfError::NoNamespace(cfg.subnqn.clone()))?,
    };
    let not_found = || PerfError::NamespaceNotFound {
        nsid,
        subnqn: cfg.subnqn.clone(),
    };
    if !active.contains(&nsid) {
        return Err(not_found());
    }
    let page = match admin.identify(0, nsid) {
        Ok(page) => page,
        Err(HostError::Status(s)) if s.sct == 0 && s.sc == Status::INVALID_NAMESPACE.sc => {
            return Err(not_found());
        }
        Err(e) => return Err(host_error(cfg, during, e)),
    };
    let (blocks, block_size) = parse_namespace(&page).ok_or_else(not_found)?;
    Ok(Namespace {
        nsid,
        blocks,
        block_size,
    })
}

/// Size in blocks and block size from Identify Namespace; `None` for an inactive namespace.
fn parse_namespace(page: &[u8]) -> Option<(u64, usize)> {
    let nsze = u64::from_le_bytes(page.get(..8)?.try_into().ok()?);
    let flbas = *page.get(26)?;
    let format = usize::from(flbas & 0xF) | (usize::from((flbas >> 5) & 0x3) << 4);
    let lbads = *page.get(128 + 4 * format + 2)?;
    if nsze == 0 || !(9..=30).contains(&lbads) {
        return None;
    }
    Some((nsze, 1usize << lbads))
}

fn check_options(
    cfg: &PerfConfig,
    ns: &Namespace,
    max_entries: u64,
    ctrl: &IdentifyController,
    page_size: usize,
) -> Result<(), PerfError> {
    let bad = |msg: String| Err(PerfError::Invalid(msg));
    if cfg.io_size == 0 || cfg.io_size % ns.block_size != 0 {
        return bad(format!(
            "I/O size {} is not a multiple of the namespace's {}-byte blocks",
            cfg.io_size, ns.block_size
        ));
    }
    if ctrl.mdts > 0 {
        let max = page_size << ctrl.mdts;
        if cfg.io_size > max {
            return bad(format!(
                "I/O size {} is more than the target's maximum transfer of {max} bytes",
                cfg.io_size
            ));
        }
    }
    if cfg.queue_depth == 0 || u64::from(cfg.queue_depth) + 1 > max_entries {
        return bad(format!(
            "queue depth {} is out of range: the target allows 1 to {}",
            cfg.queue_depth,
            max_entries.saturating_sub(1)
        ));
    }
    let ns_bytes = ns.blocks.saturating_mul(ns.block_size as u64);
    if (cfg.io_size as u64) > ns_bytes {
        return bad(format!(
            "I/O size {} is larger than namespace {} ({ns_bytes} bytes)",
            cfg.io_size, ns.nsid
        ));
    }
    if cfg.connections == 0 {
        return bad("--connections must be at least 1".into());
    }
    Ok(())
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// Errors of a Connect: refused by the socket, unanswered, or refused by the target.
fn connect_error(cfg: &PerfConfig, during: &'static str, e: HostError) -> PerfError {
    match e {
        HostError::Io(io) if !is_timeout(&io) => PerfError::Connect {
            addr: cfg.addr,
            source: io,
        },
        HostError::Refused(status) => PerfError::Refused {
            subnqn: cfg.subnqn.clone(),
            hostnqn: cfg.hostnqn.clone(),
            reason: connect_refusal(status),
            status,
        },
        e => host_error(cfg, during, e),
    }
}

pub fn host_error(cfg: &PerfConfig, during: &'static str, e: HostError) -> PerfError {
    match e {
        HostError::Io(io) if is_timeout(&io) => PerfError::Timeout {
            timeout: cfg.timeout,
            during,
        },
        source => PerfError::Host { during, source },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_format_from_flbas() {
        let mut page = vec![0u8; 4096];
        assert_eq!(parse_namespace(&page), None);
        page[..8].copy_from_slice(&1000u64.to_le_bytes());
        page[128 + 2] = 9;
        page[128 + 4 + 2] = 12;
        assert_eq!(parse_namespace(&page), Some((1000, 512)));
        page[26] = 1;
        assert_eq!(parse_namespace(&page), Some((1000, 4096)));
    }
}
