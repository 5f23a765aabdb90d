//! The discovery log page (NVMe-oF 1.1, 5.3): what a discovery controller shows its host.

use std::sync::atomic::Ordering;

use crate::nvme::DISCOVERY_NQN;
use crate::nvme::log::{
    DISCOVERY_ENTRY_LEN, DISCOVERY_HEADER_LEN, DiscoveryLogEntry, DiscoveryLogHeader, subtype, treq,
};

use super::Controller;
use super::subsystem::{AddressFamily, ListenerAddr, TransportType};

fn is_wildcard(l: &ListenerAddr) -> bool {
    l.socket().is_some_and(|s| s.ip().is_unspecified())
}

fn family_of(addr: &str) -> Option<AddressFamily> {
    match addr.parse::<std::net::IpAddr>().ok()? {
        std::net::IpAddr::V4(_) => Some(AddressFamily::Ipv4),
        std::net::IpAddr::V6(_) => Some(AddressFamily::Ipv6),
    }
}

/// The transport specific address subtype of a listener's entry (NVMe-oF 1.1, Figure 38).
fn tsas(l: &ListenerAddr) -> [u8; 256] {
    let mut tsas = [0u8; 256];
    if let ListenerAddr::Rdma(_) = l {
        // RDMA: reliable connected QPs, no provider type named, the RDMA CM; PKEY 0.
        tsas[0] = rdma_tsas::QPTYPE_CONNECTED;
        tsas[1] = rdma_tsas::PRTYPE_NOT_SPECIFIED;
        tsas[2] = rdma_tsas::CMS_RDMA_CM;
    }
    // TCP: SECTYPE 0, no security.
    tsas
}

/// RDMA's TSAS fields (NVMe-oF 1.1, Figure 40).
mod rdma_tsas {
    pub const QPTYPE_CONNECTED: u8 = 0x01;
    pub const PRTYPE_NOT_SPECIFIED: u8 = 0x01;
    pub const CMS_RDMA_CM: u8 = 0x01;
}

impl Controller {
    /// The whole discovery log for this controller's host: first the discovery subsystem
    /// itself on the listener the host used, then one entry per (subsystem the host may
    /// access, listener of that subsystem). Port IDs number distinct listeners in the order
    /// they first appear.
    pub(crate) fn discovery_log(&self) -> Vec<u8> {
        let Some(registry) = self.registry.upgrade() else {
            return vec![0u8; DISCOVERY_HEADER_LEN];
        };
        let mut ports: Vec<ListenerAddr> = Vec::new();
        let mut port_id = |l: &ListenerAddr| -> u16 {
            let at = ports.iter().position(|p| p == l).unwrap_or_else(|| {
                ports.push(l.clone());
                ports.len() - 1
            });
            u16::try_from(at + 1).unwrap_or(u16::MAX)
        };
        let subsystems = registry.subsystem_list();
        // Number ports over every subsystem so a port's ID does not depend on the host.
        for subsys in &subsystems {
            for l in &subsys.listeners() {
                port_id(l);
            }
        }
        let local = self.local_address();
        let traddr = |l: &ListenerAddr| -> String {
            match &local {
                Some(addr) if is_wildcard(l) && family_of(addr) == l.adrfam() => addr.clone(),
                _ => l.traddr(),
            }
        };
        // Only fabrics listeners are discoverable (a vfio-user controller is a PCIe device).
        let entry = |l: &ListenerAddr, portid: u16, kind: u8, nqn: &str| DiscoveryLogEntry {
            trtype: l.trtype().map_or(0, TransportType::to_u8),
            adrfam: l.adrfam().map_or(0, AddressFamily::to_u8),
            subtype: kind,
            treq: treq::SECURE_CHANNEL_NOT_REQUIRED | treq::DISABLE_SQ_FLOW_CONTROL,
            portid,
            cntlid: 0xFFFF,
            // The admin queue a host may ask for on that listener's transport.
            asqsz: u16::try_from(registry.limits.of(l).max_aq_depth).unwrap_or(u16::MAX),
            trsvcid: l.trsvcid(),
            subnqn: nqn.to_owned(),
            traddr: traddr(l),
            tsas: tsas(l),
        };
        let mut entries = vec![entry(
            &self.listener,
            port_id(&self.listener),
            subtype::CURRENT_DISCOVERY,
            DISCOVERY_NQN,
        )];
        for subsys in subsystems.iter().filter(|s| s.allows_host(&self.hostnqn)) {
            for l in subsys.listeners().iter().filter(|l| l.trtype().is_some()) {
                entries.push(entry(l, port_id(l), subtype::NVME, subsys.nqn()));
            }
        }
        let mut page = vec![0u8; DISCOVERY_HEADER_LEN + entries.len() * DISCOVERY_ENTRY_LEN];
        DiscoveryLogHeader {
            genctr: registry.genctr.load(Ordering::Acquire),
            numrec: u64::try_from(entries.len()).unwrap_or(u64::MAX),
            recfmt: 0,
        }
        .emit(&mut page);
        for (e, chunk) in entries
            .iter()
            .zip(page[DISCOVERY_HEADER_LEN..].chunks_exact_mut(DISCOVERY_ENTRY_LEN))
        {
            e.emit(chunk);
        }
        page
    }
}
