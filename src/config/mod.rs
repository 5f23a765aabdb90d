//! The declaration: the typed model of `target.toml`.
//!
//! Interim: parsing and the model only. Full diagnostics, schema and semantic rules come with
//! the `check` work.

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub const DEFAULT_CONTROL_SOCKET: &str = "/var/tmp/nvmf-tgt.sock";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub target: TargetSection,
    #[serde(default)]
    pub transport: Transports,
    #[serde(default)]
    pub host: Vec<HostEntry>,
    #[serde(default)]
    pub subsystem: Vec<Subsystem>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TargetSection {
    pub name: Option<String>,
    pub interrupt_mode: bool,
    pub core_mask: CoreMask,
    pub control_socket: PathBuf,
    pub busy_poll_us: u32,
}

impl Default for TargetSection {
    fn default() -> Self {
        Self {
            name: None,
            interrupt_mode: false,
            core_mask: CoreMask(vec![0]),
            control_socket: PathBuf::from(DEFAULT_CONTROL_SOCKET),
            busy_poll_us: 50,
        }
    }
}

/// CPUs for reactors, from "0x3" or "0-1,4".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreMask(Vec<usize>);

impl CoreMask {
    pub fn cores(&self) -> Vec<usize> {
        self.0.clone()
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let mut cores = Vec::new();
        if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
            let mask = u128::from_str_radix(hex, 16).map_err(|e| format!("bad hex mask: {e}"))?;
            cores.extend((0..128).filter(|bit| mask & (1u128 << bit) != 0));
        } else {
            for part in text.split(',') {
                let (a, b) = part.split_once('-').unwrap_or((part, part));
                let a: usize = a.trim().parse().map_err(|_| format!("bad CPU {a:?}"))?;
                let b: usize = b.trim().parse().map_err(|_| format!("bad CPU {b:?}"))?;
                if a > b {
                    return Err(format!("bad CPU range {part:?}"));
                }
                cores.extend(a..=b);
            }
        }
        cores.sort_unstable();
        cores.dedup();
        if cores.is_empty() {
            return Err("core mask selects no CPU".into());
        }
        Ok(Self(cores))
    }
}

impl<'de> Deserialize<'de> for CoreMask {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transports {
    pub tcp: Option<TcpTransport>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TcpTransport {
    pub max_queue_depth: u32,
    pub max_io_qpairs_per_ctrlr: u32,
    pub in_capsule_data_size: u32,
    pub max_io_size: u32,
    pub io_unit_size: u32,
    pub max_aq_depth: u32,
    pub c2h_success: bool,
}

impl Default for TcpTransport {
    fn default() -> Self {
        Self {
            max_queue_depth: 128,
            max_io_qpairs_per_ctrlr: 127,
            in_capsule_data_size: 4096,
            max_io_size: 131_072,
            io_unit_size: 131_072,
            max_aq_depth: 128,
            c2h_success: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostEntry {
    pub name: String,
    pub nqn: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subsystem {
    pub nqn: String,
    #[serde(default = "default_serial")]
    pub serial: String,
    #[serde(default = "default_model")]
    pub model: String,
    #[serde(default)]
    pub allow_any_host: bool,
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default = "default_max_namespaces")]
    pub max_namespaces: u32,
    #[serde(default)]
    pub listener: Vec<Listener>,
    #[serde(default)]
    pub namespace: Vec<Namespace>,
}

fn default_serial() -> String {
    "NVMFTGT00000001".into()
}

fn default_model() -> String {
    "nvmf-tgt".into()
}

fn default_max_namespaces() -> u32 {
    32
}

impl Subsystem {
    /// Host NQNs allowed, with `[[host]]` names resolved.
    pub fn host_nqns(&self, config: &Config) -> Vec<String> {
        self.hosts
            .iter()
            .map(|h| {
                config
                    .host
                    .iter()
                    .find(|e| &e.name == h)
                    .map_or_else(|| h.clone(), |e| e.nqn.clone())
            })
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    Tcp,
    Rdma,
    Vfiouser,
    Fc,
}

impl core::fmt::Display for TransportKind {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Rdma => "rdma",
            Self::Vfiouser => "vfiouser",
            Self::Fc => "fc",
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub transport: TransportKind,
    pub address: Option<String>,
    pub port: Option<u16>,
    pub path: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Namespace {
    pub nsid: u32,
    #[serde(flatten)]
    pub backend: Backend,
    #[serde(default)]
    pub read_only: bool,
    #[serde(default = "default_block_size")]
    pub block_size: u32,
    #[serde(default)]
    pub uuid: Option<[u8; 16]>,
    #[serde(default)]
    pub nguid: Option<[u8; 16]>,
    #[serde(default)]
    pub eui64: Option<[u8; 8]>,
}

fn default_block_size() -> u32 {
    512
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Ram {
        #[serde(deserialize_with = "size")]
        size: u64,
    },
    Null {
        #[serde(deserialize_with = "size")]
        size: u64,
    },
    File {
        path: PathBuf,
        #[serde(default)]
        direct: bool,
    },
}

fn size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Bytes(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Bytes(n) => Ok(n),
        Raw::Text(t) => parse_size(&t).map_err(serde::de::Error::custom),
    }
}

/// "1GiB", "512MiB", "4k", "4096".
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("bad size {text:?}"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        _ => return Err(format!("unknown size unit in {text:?}")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {text:?} is too large"))
}

/// Reads and parses a declaration.
pub fn load(path: &Path) -> anyhow::Result<Config> {
    let text = std::fs::read_to_string(path)?;
    Ok(toml::from_str(&text)?)
}
