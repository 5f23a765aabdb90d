//! A namespace: a backend seen as logical blocks, with a stable identity.

use std::sync::Arc;

use crate::backend::Backend;
use crate::nvme::Nsid;
use crate::nvme::identify::NsDescriptor;
use crate::nvme::identify::{CSI_NVM, IdentifyNamespace, NMIC_SHARED, NSATTR_WRITE_PROTECTED};

use super::RegistryError;
use super::iostat::IoStats;

/// A namespace as declared in the configuration.
#[derive(Clone, Debug)]
pub struct NamespaceSpec {
    pub nsid: Nsid,
    pub backend: Arc<dyn Backend>,
    pub block_size: u32,
    pub read_only: bool,
    pub uuid: Option<[u8; 16]>,
    pub nguid: Option<[u8; 16]>,
    pub eui64: Option<[u8; 8]>,
}

#[cfg(test)]
impl NamespaceSpec {
    /// Namespace `nsid` on `backend` in 512-byte blocks, writable, identifiers derived.
    pub fn for_tests(nsid: u32, backend: Arc<dyn Backend>) -> Self {
        Self {
            nsid: Nsid(nsid),
            backend,
            block_size: 512,
            read_only: false,
            uuid: None,
            nguid: None,
            eui64: None,
        }
    }
}

/// A namespace attached to a subsystem.
#[derive(Debug)]
pub struct Namespace {
    nsid: Nsid,
    backend: Arc<dyn Backend>,
    block_size: u32,
    block_shift: u8,
    blocks: u64,
    read_only: bool,
    uuid: [u8; 16],
    nguid: [u8; 16],
    eui64: [u8; 8],
    /// What hosts have done with it, for `bdev_get_iostat` and `status`.
    stats: IoStats,
}

impl Namespace {
    /// Resolves the spec: identities not given are derived from `subnqn` and the NSID, so they
    /// stay the same across restarts and differ between namespaces.
    pub fn new(spec: NamespaceSpec, subnqn: &str) -> Result<Self, RegistryError> {
        let bad = |why: &'static str| RegistryError::BadNamespace {
            nqn: subnqn.into(),
            nsid: spec.nsid,
            why,
        };
        if spec.nsid.0 == 0 || spec.nsid.0 >= 0xFFFF_FFFE {
            return Err(bad("nsid must be between 1 and 0xfffffffd"));
        }
        if !spec.block_size.is_power_of_two() || !(512..=65536).contains(&spec.block_size) {
            return Err(bad("block size must be a power of two from 512 to 65536"));
        }
        let block_shift = u8::try_from(spec.block_size.trailing_zeros()).unwrap_or(9);
        let blocks = spec.backend.size() >> block_shift;
        if blocks == 0 {
            return Err(bad("backend is smaller than one block"));
        }
        let uuid = spec.uuid.unwrap_or_else(|| derive_uuid(subnqn, spec.nsid));
        let nguid = spec
            .nguid
            .filter(|id| id.iter().any(|&b| b != 0))
            .unwrap_or_else(|| derive_id(b"nguid", subnqn, spec.nsid));
        let eui64 = spec
            .eui64
            .filter(|id| id.iter().any(|&b| b != 0))
            .unwrap_or_else(|| derive_eui64(subnqn, spec.nsid));
        Ok(Self {
            nsid: spec.nsid,
            read_only: spec.read_only || spec.backend.read_only(),
            backend: spec.backend,
            block_size: spec.block_size,
            block_shift,
            blocks,
            uuid,
            nguid,
            eui64,
            stats: IoStats::default(),
        })
    }

    pub fn stats(&self) -> &IoStats {
        &self.stats
    }

    pub fn nsid(&self) -> Nsid {
        self.nsid
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// log2 of the block size.
    pub fn block_shift(&self) -> u8 {
        self.block_shift
    }

    /// Capacity in logical blocks.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    pub fn uuid(&self) -> [u8; 16] {
        self.uuid
    }

    pub fn nguid(&self) -> [u8; 16] {
        self.nguid
    }

    pub fn eui64(&self) -> [u8; 8] {
        self.eui64
    }

    /// Identify Namespace (CNS 0x00).
    pub(crate) fn identify(&self) -> IdentifyNamespace {
        IdentifyNamespace {
            nsze: self.blocks,
            ncap: self.blocks,
            nuse: self.blocks,
            nsfeat: 0,
            nlbaf: 0,
            flbas: 0,
            nmic: NMIC_SHARED,
            // Deallocated blocks read back as zeroes (the backend contract).
            dlfeat: 0x01,
            anagrpid: 0,
            nsattr: if self.read_only {
                NSATTR_WRITE_PROTECTED
            } else {
                0
            },
            nguid: self.nguid,
            eui64: self.eui64,
            lbaf0_ms: 0,
            lbaf0_lbads: self.block_shift,
            lbaf0_rp: 0,
        }
    }

    /// Namespace identification descriptors (CNS 0x03).
    pub(crate) fn descriptors(&self) -> [NsDescriptor; 4] {
        [
            NsDescriptor::Eui64(self.eui64),
            NsDescriptor::Nguid(self.nguid),
            NsDescriptor::Uuid(self.uuid),
            NsDescriptor::Csi(CSI_NVM),
        ]
    }
}

/// 128 deterministic bits from a domain tag, the subsystem NQN and the NSID. Two FNV-1a-64
/// streams with different seeds, each finished with a SplitMix64 mix: not cryptographic, only
/// stable across builds (unlike `std`'s hasher) and well spread. Never all-zero.
fn derive_id(domain: &[u8], subnqn: &str, nsid: Nsid) -> [u8; 16] {
    fn fnv(seed: u64, parts: &[&[u8]]) -> u64 {
        let mut h = seed;
        for part in parts {
            for &b in *part {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0000_0100_0000_01B3);
            }
            // Separator so ("ab","c") and ("a","bc") differ.
            h ^= 0xFF;
            h = h.wrapping_mul(0x0000_0100_0000_01B3);
        }
        let mut z = h.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    let parts: [&[u8]; 3] = [domain, subnqn.as_bytes(), &nsid.0.to_le_bytes()];
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&fnv(0xCBF2_9CE4_8422_2325, &parts).to_be_bytes());
    out[8..].copy_from_slice(&fnv(0x6C62_272E_07BB_0142, &parts).to_be_bytes());
    if out.iter().all(|&b| b == 0) {
        out[15] = 1;
    }
    out
}

/// A UUID version 8 (RFC 9562: custom, here name-derived) with the RFC variant bits.
fn derive_uuid(subnqn: &str, nsid: Nsid) -> [u8; 16] {
    let mut id = derive_id(b"uuid", subnqn, nsid);
    id[6] = (id[6] & 0x0F) | 0x80;
    id[8] = (id[8] & 0x3F) | 0x80;
    id
}

/// An EUI-64 marked locally administered and unicast, since it comes from no IEEE OUI.
fn derive_eui64(subnqn: &str, nsid: Nsid) -> [u8; 8] {
    let full = derive_id(b"eui64", subnqn, nsid);
    let mut id = [0u8; 8];
    id.copy_from_slice(&full[..8]);
    id[0] = (id[0] & 0xFC) | 0x02;
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_stable_distinct_and_nonzero() {
        let a = derive_id(b"nguid", "nqn.a", Nsid(1));
        assert_eq!(a, derive_id(b"nguid", "nqn.a", Nsid(1)));
        assert_ne!(a, derive_id(b"nguid", "nqn.a", Nsid(2)));
        assert_ne!(a, derive_id(b"nguid", "nqn.b", Nsid(1)));
        assert_ne!(a, derive_id(b"uuid", "nqn.a", Nsid(1)));
        assert!(a.iter().any(|&b| b != 0));
        let u = derive_uuid("nqn.a", Nsid(1));
        assert_eq!(u[6] >> 4, 8);
        assert_eq!(u[8] >> 6, 0b10);
        assert_eq!(derive_eui64("nqn.a", Nsid(1))[0] & 0x03, 0x02);
    }
}
