//! What a run asks for, parsed from command-line strings: the SPDK transport ID
//! (`trtype:tcp traddr:... trsvcid:... subnqn:...`, or `trtype:vfiouser traddr:DIR`), sizes
//! such as `4k` or `128KiB`, and the access pattern. No I/O here but name resolution.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OptionsError {
    #[error("transport ID entry {0:?} is not key:value")]
    NotKeyValue(String),
    #[error(
        "unknown transport ID key {0:?} (known: trtype, adrfam, traddr, trsvcid, subnqn, hostnqn)"
    )]
    UnknownKey(String),
    #[error("trtype must be tcp or vfiouser, not {0:?}")]
    Trtype(String),
    #[error("adrfam must be ipv4 or ipv6, not {0:?}")]
    Adrfam(String),
    #[error("{0} is missing (give it in -r or as a flag)")]
    Missing(&'static str),
    #[error("bad port {0:?}")]
    Port(String),
    #[error("cannot resolve {0}")]
    Resolve(String),
    #[error("bad size {0:?} (examples: 4096, 4k, 128KiB, 1M)")]
    Size(String),
}

/// The SPDK transport-ID fields nvmf-perf understands; absent ones are `None`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TransportId {
    /// `None` means tcp.
    pub trtype: Option<Trtype>,
    pub adrfam: Option<Adrfam>,
    pub traddr: Option<String>,
    pub trsvcid: Option<String>,
    pub subnqn: Option<String>,
    pub hostnqn: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trtype {
    Tcp,
    /// vfio-user: `traddr` is the listener's directory (SPDK's), or the socket `DIR/cntrl`.
    VfioUser,
}

/// The name of a vfio-user controller's socket in its directory (SPDK's and the target's).
pub const VFIO_USER_SOCKET: &str = "cntrl";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adrfam {
    Ipv4,
    Ipv6,
}

impl TransportId {
    /// Parses `key:value` pairs separated by spaces; keys and trtype/adrfam values are
    /// case-insensitive, NQNs and addresses are kept as written (NQNs contain colons).
    pub fn parse(text: &str) -> Result<Self, OptionsError> {
        let mut id = Self::default();
        for entry in text.split_whitespace() {
            let (key, value) = entry
                .split_once(':')
                .or_else(|| entry.split_once('='))
                .ok_or_else(|| OptionsError::NotKeyValue(entry.into()))?;
            let value = value.to_string();
            match key.to_ascii_lowercase().as_str() {
                "trtype" => {
                    id.trtype = Some(match value.to_ascii_lowercase().as_str() {
                        "tcp" => Trtype::Tcp,
                        "vfiouser" | "vfio-user" => Trtype::VfioUser,
                        _ => return Err(OptionsError::Trtype(value)),
                    });
                }
                "adrfam" => {
                    id.adrfam = Some(match value.to_ascii_lowercase().as_str() {
                        "ipv4" => Adrfam::Ipv4,
                        "ipv6" => Adrfam::Ipv6,
                        _ => return Err(OptionsError::Adrfam(value)),
                    });
                }
                "traddr" => id.traddr = Some(value),
                "trsvcid" => id.trsvcid = Some(value),
                "subnqn" => id.subnqn = Some(value),
                "hostnqn" => id.hostnqn = Some(value),
                _ => return Err(OptionsError::UnknownKey(key.into())),
            }
        }
        Ok(id)
    }

    /// The vfio-user socket: `traddr` if it names `.../cntrl`, else `traddr/cntrl`.
    pub fn vfio_user_socket(&self) -> Result<PathBuf, OptionsError> {
        let path = PathBuf::from(
            self.traddr
                .as_deref()
                .ok_or(OptionsError::Missing("traddr"))?,
        );
        if path.file_name().is_some_and(|n| n == VFIO_USER_SOCKET) {
            Ok(path)
        } else {
            Ok(path.join(VFIO_USER_SOCKET))
        }
    }

    /// The socket address to connect to, honoring `adrfam` when a name resolves to both.
    pub fn socket_addr(&self) -> Result<SocketAddr, OptionsError> {
        let host = self
            .traddr
            .as_deref()
            .ok_or(OptionsError::Missing("traddr"))?;
        let port = self.trsvcid.as_deref().unwrap_or("4420");
        let port: u16 = port.parse().map_err(|_| OptionsError::Port(port.into()))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let shown = format!("{host} port {port}");
        let addrs = (host, port)
            .to_socket_addrs()
            .map_err(|_| OptionsError::Resolve(shown.clone()))?;
        addrs
            .into_iter()
            .find(|a| match self.adrfam {
                Some(Adrfam::Ipv4) => a.is_ipv4(),
                Some(Adrfam::Ipv6) => a.is_ipv6(),
                None => true,
            })
            .ok_or(OptionsError::Resolve(shown))
    }
}

/// Parses a byte count as the declaration writes sizes: a plain number, or one with a unit
/// in powers of 1024 (`k`, `K`, `KB`, `KiB` all mean 1024).
pub fn parse_size(text: &str) -> Result<u64, OptionsError> {
    crate::config::parse_size(text).map_err(|_| OptionsError::Size(text.into()))
}

/// The access pattern (`-w`), as spdk_nvme_perf names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pattern {
    Read,
    Write,
    Randread,
    Randwrite,
    Rw,
    Randrw,
}

impl Pattern {
    /// The name `-w` takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Randread => "randread",
            Self::Randwrite => "randwrite",
            Self::Rw => "rw",
            Self::Randrw => "randrw",
        }
    }

    pub fn is_random(self) -> bool {
        matches!(self, Self::Randread | Self::Randwrite | Self::Randrw)
    }

    /// Percentage of reads: fixed for pure patterns, `rwmixread` for mixed ones.
    pub fn read_percent(self, rwmixread: u8) -> u8 {
        match self {
            Self::Read | Self::Randread => 100,
            Self::Write | Self::Randwrite => 0,
            Self::Rw | Self::Randrw => rwmixread.min(100),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_id_spdk_syntax() {
        let id = TransportId::parse(
            "trtype:TCP ADRFAM:IPv4 traddr:127.0.0.1 trsvcid:4421 \
             subnqn:nqn.2016-06.io.spdk:cnode1 hostnqn:nqn.2014-08.org.nvmexpress:uuid:1",
        )
        .expect("parse");
        assert_eq!(id.adrfam, Some(Adrfam::Ipv4));
        assert_eq!(id.subnqn.as_deref(), Some("nqn.2016-06.io.spdk:cnode1"));
        assert_eq!(
            id.hostnqn.as_deref(),
            Some("nqn.2014-08.org.nvmexpress:uuid:1")
        );
        assert_eq!(
            id.socket_addr().expect("addr"),
            "127.0.0.1:4421".parse().expect("literal")
        );
    }

    #[test]
    fn vfio_user_transport_id_names_the_directory_or_the_socket() {
        let id = TransportId::parse("trtype:VFIOUSER traddr:/var/run/vm0").expect("parse");
        assert_eq!(id.trtype, Some(Trtype::VfioUser));
        assert_eq!(
            id.vfio_user_socket().expect("socket"),
            PathBuf::from("/var/run/vm0/cntrl")
        );
        let id = TransportId::parse("trtype:vfiouser traddr:/var/run/vm0/cntrl").expect("parse");
        assert_eq!(
            id.vfio_user_socket().expect("socket"),
            PathBuf::from("/var/run/vm0/cntrl")
        );
        assert_eq!(
            TransportId::parse("trtype:vfiouser").map(|id| id.vfio_user_socket()),
            Ok(Err(OptionsError::Missing("traddr")))
        );
    }

    #[test]
    fn transport_id_errors() {
        assert_eq!(
            TransportId::parse("trtype:rdma"),
            Err(OptionsError::Trtype("rdma".into()))
        );
        assert_eq!(
            TransportId::parse("bogus:1"),
            Err(OptionsError::UnknownKey("bogus".into()))
        );
        assert_eq!(
            TransportId::parse("traddr"),
            Err(OptionsError::NotKeyValue("traddr".into()))
        );
        let id = TransportId::parse("traddr:::1 trsvcid:4420 adrfam:ipv6").expect("v6");
        assert!(id.socket_addr().expect("addr").is_ipv6());
        assert_eq!(
            TransportId::default().socket_addr(),
            Err(OptionsError::Missing("traddr"))
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("128KiB"), Ok(128 << 10));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("2gb"), Ok(2 << 30));
        assert!(parse_size("4q").is_err());
        assert!(parse_size("k").is_err());
    }

    #[test]
    fn read_percent() {
        assert_eq!(Pattern::Randread.read_percent(30), 100);
        assert_eq!(Pattern::Write.read_percent(30), 0);
        assert_eq!(Pattern::Randrw.read_percent(70), 70);
        assert!(Pattern::Randrw.is_random() && !Pattern::Rw.is_random());
    }
}
