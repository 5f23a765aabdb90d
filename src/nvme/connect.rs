//! Fabrics Connect: the command fields and the 1024-byte Connect data (NVMe-oF 1.1, 3.3).

use super::Sqe;

/// Length of the Connect data that follows the command.
pub const CONNECT_DATA_LEN: usize = 1024;

/// Length of an NQN field in the Connect data (NUL-terminated inside it).
pub const NQN_FIELD_LEN: usize = 256;

/// Controller ID a host sends to ask for any controller in the dynamic model.
pub const CNTLID_DYNAMIC: u16 = 0xFFFF;

/// CATTR bit 2: the host disables SQ flow control (no SQHD updates needed).
pub const CATTR_DISABLE_SQ_FLOW_CONTROL: u8 = 0x04;

/// Byte offsets of the Connect command fields inside the SQE, as reported in IPO.
pub mod sqe_offset {
    pub const RECFMT: u16 = 0x28;
    pub const QID: u16 = 0x2A;
    pub const SQSIZE: u16 = 0x2C;
    pub const CATTR: u16 = 0x2E;
    pub const KATO: u16 = 0x30;
}

/// Byte offsets of the Connect data fields, as reported in IPO.
pub mod data_offset {
    pub const HOSTID: u16 = 0x000;
    pub const CNTLID: u16 = 0x010;
    pub const SUBNQN: u16 = 0x100;
    pub const HOSTNQN: u16 = 0x200;
}

/// Byte ranges of the Connect data.
mod field {
    use core::ops::Range;
    pub const HOSTID: Range<usize> = 0..16;
    pub const CNTLID: Range<usize> = 16..18;
    pub const SUBNQN: Range<usize> = 256..512;
    pub const HOSTNQN: Range<usize> = 512..768;
}

/// The Connect command fields in dwords 10 to 12.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectCmd {
    /// Record format; only 0 is defined.
    pub recfmt: u16,
    /// Queue to create: 0 is the admin queue.
    pub qid: u16,
    /// Submission queue size, 0-based.
    pub sqsize: u16,
    /// Connect attributes (priority, SQ flow control disable).
    pub cattr: u8,
    /// Keep Alive Timeout in milliseconds (admin queue only).
    pub kato: u32,
}

impl ConnectCmd {
    pub fn parse(sqe: &Sqe) -> Self {
        let b = sqe.as_bytes();
        let word = |at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
        Self {
            recfmt: word(40),
            qid: word(42),
            sqsize: word(44),
            cattr: b[46],
            kato: sqe.cdw(12),
        }
    }

    /// Writes the fields into `sqe`, leaving every other byte alone.
    pub fn emit(&self, sqe: &mut Sqe) {
        let b = sqe.bytes_mut();
        b[40..42].copy_from_slice(&self.recfmt.to_le_bytes());
        b[42..44].copy_from_slice(&self.qid.to_le_bytes());
        b[44..46].copy_from_slice(&self.sqsize.to_le_bytes());
        b[46] = self.cattr;
        b[48..52].copy_from_slice(&self.kato.to_le_bytes());
    }

    pub fn sq_flow_control_disabled(&self) -> bool {
        self.cattr & CATTR_DISABLE_SQ_FLOW_CONTROL != 0
    }
}

/// Why Connect data could not be read; `ipo` says which field for the Connect response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConnectDataError {
    #[error("connect data is {0} bytes, expected 1024")]
    Truncated(usize),
    #[error("subsystem NQN is not NUL-terminated UTF-8")]
    BadSubnqn,
    #[error("host NQN is not NUL-terminated UTF-8")]
    BadHostnqn,
}

impl ConnectDataError {
    /// Invalid Parameter Offset of the offending field.
    pub fn ipo(&self) -> u16 {
        match self {
            Self::Truncated(_) => data_offset::HOSTID,
            Self::BadSubnqn => data_offset::SUBNQN,
            Self::BadHostnqn => data_offset::HOSTNQN,
        }
    }
}

/// The Connect data (NVMe-oF 1.1, Figure 21).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnectData {
    pub hostid: [u8; 16],
    pub cntlid: u16,
    pub subnqn: String,
    pub hostnqn: String,
}

impl ConnectData {
    pub fn parse(buf: &[u8]) -> Result<Self, ConnectDataError> {
        let b = buf
            .get(..CONNECT_DATA_LEN)
            .ok_or(ConnectDataError::Truncated(buf.len()))?;
        let mut hostid = [0u8; 16];
        hostid.copy_from_slice(&b[field::HOSTID]);
        Ok(Self {
            hostid,
            cntlid: u16::from_le_bytes([b[16], b[17]]),
            subnqn: nqn_from_field(&b[field::SUBNQN]).ok_or(ConnectDataError::BadSubnqn)?,
            hostnqn: nqn_from_field(&b[field::HOSTNQN]).ok_or(ConnectDataError::BadHostnqn)?,
        })
    }

    /// Writes all 1024 bytes into the start of `buf` (reserved bytes zeroed).
    ///
    /// # Panics
    /// If `buf` is shorter than 1024 bytes or an NQN is 256 bytes or longer.
    pub fn emit(&self, buf: &mut [u8]) {
        let b = &mut buf[..CONNECT_DATA_LEN];
        b.fill(0);
        b[field::HOSTID].copy_from_slice(&self.hostid);
        b[field::CNTLID].copy_from_slice(&self.cntlid.to_le_bytes());
        assert!(self.subnqn.len() < NQN_FIELD_LEN && self.hostnqn.len() < NQN_FIELD_LEN);
        b[field::SUBNQN.start..field::SUBNQN.start + self.subnqn.len()]
            .copy_from_slice(self.subnqn.as_bytes());
        b[field::HOSTNQN.start..field::HOSTNQN.start + self.hostnqn.len()]
            .copy_from_slice(self.hostnqn.as_bytes());
    }

    /// The 1024 bytes [`emit`](Self::emit) writes, as a Connect command's data.
    ///
    /// # Panics
    /// If an NQN is 256 bytes or longer.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut data = vec![0u8; CONNECT_DATA_LEN];
        self.emit(&mut data);
        data
    }
}

/// An NQN field must hold a NUL within its 256 bytes; the text before it is the NQN.
fn nqn_from_field(field: &[u8]) -> Option<String> {
    let end = field.iter().position(|&b| b == 0)?;
    core::str::from_utf8(&field[..end]).ok().map(str::to_owned)
}

/// Completion dword 0 for "Connect Invalid Parameters" (NVMe-oF 1.1, Figure 23): IATTR in
/// byte 0 (1 = the field is in the Connect data, 0 = in the SQE) and IPO in bytes 3:2.
pub fn invalid_parameter_dw0(in_data: bool, ipo: u16) -> u32 {
    u32::from(in_data) | (u32::from(ipo) << 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> Vec<u8> {
        let mut raw = vec![0u8; CONNECT_DATA_LEN];
        raw[0..16].copy_from_slice(&[0x11; 16]);
        raw[16..18].copy_from_slice(&[0xFF, 0xFF]);
        raw[256..256 + 9].copy_from_slice(b"nqn.a:sub");
        raw[512..512 + 10].copy_from_slice(b"nqn.a:host");
        raw
    }

    #[test]
    fn data_parse_and_emit_into_junk() {
        let data = ConnectData::parse(&fixture()).expect("valid");
        assert_eq!(data.cntlid, CNTLID_DYNAMIC);
        assert_eq!(data.subnqn, "nqn.a:sub");
        assert_eq!(data.hostnqn, "nqn.a:host");
        let mut junk = vec![0xA5u8; CONNECT_DATA_LEN + 4];
        data.emit(&mut junk);
        assert_eq!(&junk[..CONNECT_DATA_LEN], &fixture()[..]);
        assert_eq!(&junk[CONNECT_DATA_LEN..], &[0xA5; 4]);
    }

    #[test]
    fn unterminated_nqn_names_its_offset() {
        let mut raw = fixture();
        raw[256..512].fill(b'x');
        let err = ConnectData::parse(&raw).expect_err("no NUL");
        assert_eq!(err, ConnectDataError::BadSubnqn);
        assert_eq!(err.ipo(), 256);
        assert_eq!(
            ConnectData::parse(&raw[..100]),
            Err(ConnectDataError::Truncated(100))
        );
    }

    #[test]
    fn command_fields_round_trip() {
        let cmd = ConnectCmd {
            recfmt: 0,
            qid: 3,
            sqsize: 127,
            cattr: CATTR_DISABLE_SQ_FLOW_CONTROL,
            kato: 15_000,
        };
        let mut sqe = Sqe::new(0x7F, 9);
        sqe.set_fctype(0x01);
        cmd.emit(&mut sqe);
        assert_eq!(sqe.as_bytes()[42], 3);
        assert_eq!(sqe.as_bytes()[44], 127);
        assert_eq!(ConnectCmd::parse(&sqe), cmd);
        assert!(cmd.sq_flow_control_disabled());
        assert_eq!(invalid_parameter_dw0(true, 0x100), 0x0100_0001);
    }
}
