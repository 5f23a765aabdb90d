//! Little-endian field helpers shared by the fixed-layout data structures (identify pages, log
//! pages). Callers slice with constant offsets inside buffers whose length they checked.

pub(crate) fn get_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

pub(crate) fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub(crate) fn get_u64(b: &[u8], at: usize) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(raw)
}

pub(crate) fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

pub(crate) fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

pub(crate) fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// ASCII field padded with spaces (SN, MN, FR): the text is cut to the field's width.
pub(crate) fn put_padded(b: &mut [u8], range: core::ops::Range<usize>, text: &str) {
    let field = &mut b[range];
    field.fill(b' ');
    let n = text.len().min(field.len());
    field[..n].copy_from_slice(&text.as_bytes()[..n]);
}

/// Reads a space-padded ASCII field without its padding.
pub(crate) fn get_padded(b: &[u8], range: core::ops::Range<usize>) -> String {
    String::from_utf8_lossy(&b[range])
        .trim_end_matches([' ', '\0'])
        .to_owned()
}

/// NUL-padded string field (SUBNQN, TRADDR, TRSVCID): cut to leave room for one NUL.
pub(crate) fn put_nul_padded(b: &mut [u8], range: core::ops::Range<usize>, text: &str) {
    let field = &mut b[range];
    field.fill(0);
    let n = text.len().min(field.len() - 1);
    field[..n].copy_from_slice(&text.as_bytes()[..n]);
}

/// Reads a NUL-padded string field up to its first NUL.
pub(crate) fn get_nul_padded(b: &[u8], range: core::ops::Range<usize>) -> String {
    let field = &b[range];
    let end = field.iter().position(|&c| c == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}
