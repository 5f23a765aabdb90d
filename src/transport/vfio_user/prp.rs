//! Physical Region Page entries (NVMe Base 2.0, 4.1.1): where a PCIe command's data is in
//! guest memory, walked into segments with every entry checked, and the copies between a
//! buffer of ours and those segments.
//!
//! The memory page is 4 KiB (CC.MPS 0). PRP1 is the first page and may start at a dword
//! aligned offset in it. If the data ends in the next page, PRP2 is that page; if it goes
//! further, PRP2 points to a PRP list (dword aligned, anywhere in its page) of page entries,
//! and a list that needs more entries than fit to the end of its page gives its last entry
//! to the next list page. Every entry after PRP1 has offset 0.
//!
//! The lists are in guest memory, which the guest may rewrite while we read it: each list
//! chunk is copied out once, then checked; the work is bounded by the transfer length.

use crate::nvme::Status;
use crate::transport::vfio_user::memory::{GuestMemory, Prot};

/// The memory page size (CC.MPS 0).
pub const PAGE_SIZE: usize = 4096;

/// The longest transfer walked: the largest `max_io_size` a listener may have (MDTS), which
/// the controller checks first; longer is Invalid Field in Command.
pub const MAX_TRANSFER_LEN: usize = 8 << 20;

/// Bytes of one PRP entry.
const ENTRY_LEN: usize = 8;

const PAGE: u64 = PAGE_SIZE as u64;

/// A run of guest memory that holds part of a command's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub gpa: u64,
    pub len: usize,
}

/// Walks PRP1 and PRP2 of a command that moves `len` bytes into `out` (cleared first;
/// reused by the caller, so the steady state allocates nothing). Adjacent pages become one
/// segment; every page is checked to be mapped with a file (whether it may be read or written
/// is checked by the copy). On error `out` holds nothing of use.
///
/// Statuses: PRP1 not dword aligned or `len` beyond [`MAX_TRANSFER_LEN`]: Invalid Field;
/// an entry after PRP1 with an offset, a list pointer not dword aligned or with no room
/// for an entry in its page: Invalid PRP Offset; a zero entry, or an entry or list outside
/// guest memory: Data Transfer Error.
pub fn prp_segments(
    mem: &GuestMemory,
    prp1: u64,
    prp2: u64,
    len: usize,
    out: &mut Vec<Segment>,
) -> Result<(), Status> {
    out.clear();
    if len == 0 {
        return Ok(());
    }
    if len > MAX_TRANSFER_LEN || prp1 & 0x3 != 0 {
        return Err(Status::INVALID_FIELD.with_dnr());
    }
    if prp1 == 0 {
        return Err(Status::DATA_TRANSFER_ERROR);
    }
    let first = len.min(PAGE_SIZE - page_offset(prp1));
    push(mem, out, prp1, first)?;
    let mut remaining = len - first;
    if remaining == 0 {
        return Ok(());
    }
    if remaining <= PAGE_SIZE {
        page_entry(prp2)?;
        return push(mem, out, prp2, remaining);
    }
    if prp2 & 0x3 != 0 {
        return Err(Status::INVALID_PRP_OFFSET.with_dnr());
    }
    let mut list = prp2;
    let mut chunk = [0u8; PAGE_SIZE];
    loop {
        // Entries from the list pointer to the end of its page.
        let room = (PAGE_SIZE - page_offset(list)) / ENTRY_LEN;
        let needed = remaining.div_ceil(PAGE_SIZE);
        let chains = needed > room;
        let count = needed.min(room);
        if count == 0 {
            return Err(Status::INVALID_PRP_OFFSET.with_dnr());
        }
        let entries = &mut chunk[..count * ENTRY_LEN];
        mem.read(list, entries).map_err(|e| e.to_status())?;
        let data = if chains { count - 1 } else { count };
        for entry in entries.chunks_exact(ENTRY_LEN).take(data) {
            let page = decode(entry);
            page_entry(page)?;
            let n = remaining.min(PAGE_SIZE);
            push(mem, out, page, n)?;
            remaining -= n;
        }
        if !chains {
            return Ok(());
        }
        // The last entry of the page points to the next list page, itself a page entry.
        let next = decode(&entries[(count - 1) * ENTRY_LEN..]);
        page_entry(next)?;
        list = next;
    }
}

/// Copies `data` into the guest at `segments`, which must hold exactly `data.len()` bytes
/// (else Internal Error: the caller's mistake, nothing is written). A segment that is no
/// longer mapped, or not writable, is a Data Transfer Error.
pub fn copy_to_guest(mem: &GuestMemory, segments: &[Segment], data: &[u8]) -> Result<(), Status> {
    same_len(segments, data.len())?;
    let mut done = 0;
    for seg in segments {
        mem.write(seg.gpa, &data[done..done + seg.len])
            .map_err(|e| e.to_status())?;
        done += seg.len;
    }
    Ok(())
}

/// Copies the guest's bytes at `segments` into `buf`, which must be exactly as long (else
/// Internal Error). A segment no longer mapped, or not readable, is a Data Transfer Error.
pub fn copy_from_guest(
    mem: &GuestMemory,
    segments: &[Segment],
    buf: &mut [u8],
) -> Result<(), Status> {
    same_len(segments, buf.len())?;
    let mut done = 0;
    for seg in segments {
        mem.read(seg.gpa, &mut buf[done..done + seg.len])
            .map_err(|e| e.to_status())?;
        done += seg.len;
    }
    Ok(())
}

fn same_len(segments: &[Segment], len: usize) -> Result<(), Status> {
    let total = segments
        .iter()
        .try_fold(0usize, |sum, seg| sum.checked_add(seg.len));
    if total == Some(len) {
        Ok(())
    } else {
        Err(Status::INTERNAL_ERROR)
    }
}

/// Checks an entry after PRP1: a page (offset 0), and not zero (an entry the host did not
/// fill; no guest uses page 0 for I/O).
fn page_entry(entry: u64) -> Result<(), Status> {
    if page_offset(entry) != 0 {
        return Err(Status::INVALID_PRP_OFFSET.with_dnr());
    }
    if entry == 0 {
        return Err(Status::DATA_TRANSFER_ERROR);
    }
    Ok(())
}

/// Appends `gpa..gpa + len` after checking it is mapped, merged with the last segment when
/// it continues it.
fn push(mem: &GuestMemory, out: &mut Vec<Segment>, gpa: u64, len: usize) -> Result<(), Status> {
    let wide = u64::try_from(len).map_err(|_| Status::DATA_TRANSFER_ERROR)?;
    mem.check(gpa, wide, Prot::NONE)
        .map_err(|e| e.to_status())?;
    if let Some(last) = out.last_mut() {
        let end = u64::try_from(last.len)
            .ok()
            .and_then(|l| last.gpa.checked_add(l));
        if end == Some(gpa) {
            last.len += len;
            return Ok(());
        }
    }
    out.push(Segment { gpa, len });
    Ok(())
}

fn page_offset(addr: u64) -> usize {
    // Below PAGE_SIZE, so it fits.
    usize::try_from(addr % PAGE).unwrap_or(0)
}

/// One little-endian entry from its 8 bytes.
fn decode(entry: &[u8]) -> u64 {
    let mut bytes = [0u8; ENTRY_LEN];
    bytes.copy_from_slice(&entry[..ENTRY_LEN]);
    u64::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::mmap::{MapProt, Mapping, memfd};
    use crate::transport::vfio_user::memory::tests::Guest;

    const BASE: u64 = 0x10_0000;

    /// The guest address of page `n` of the test's RAM.
    fn page(n: u64) -> u64 {
        BASE + n * PAGE
    }

    fn seg(gpa: u64, len: usize) -> Segment {
        Segment { gpa, len }
    }

    fn guest() -> Guest {
        Guest::new(BASE, 64)
    }

    /// Writes PRP list entries at `gpa`.
    fn list(g: &Guest, gpa: u64, entries: &[u64]) {
        let bytes: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
        g.poke(gpa, &bytes);
    }

    fn walk(g: &Guest, prp1: u64, prp2: u64, len: usize) -> Result<Vec<Segment>, Status> {
        let mut out = vec![seg(1, 1)];
        prp_segments(&g.mem, prp1, prp2, len, &mut out).map(|()| out)
    }

    #[test]
    fn one_page_with_an_offset_ignores_prp2() {
        let g = guest();
        let junk = 0xDEAD_BEEF_0003;
        assert_eq!(
            walk(&g, page(1) + 0x100, junk, 0x200),
            Ok(vec![seg(page(1) + 0x100, 0x200)])
        );
        assert_eq!(
            walk(&g, page(1) + 0x800, junk, 0x800),
            Ok(vec![seg(page(1) + 0x800, 0x800)]),
            "up to the end of the page"
        );
        assert_eq!(walk(&g, page(1), junk, 0), Ok(vec![]), "no data");
    }

    #[test]
    fn two_pages_and_adjacent_ones_merged() {
        let g = guest();
        assert_eq!(
            walk(&g, page(1) + 0x1800 - 0x1000, page(5), 0x1000),
            Ok(vec![seg(page(1) + 0x800, 0x800), seg(page(5), 0x800)])
        );
        assert_eq!(
            walk(&g, page(1) + 0x800, page(2), 0x1000),
            Ok(vec![seg(page(1) + 0x800, 0x1000)])
        );
        assert_eq!(
            walk(&g, page(1), page(7), 0x2000),
            Ok(vec![seg(page(1), 0x1000), seg(page(7), 0x1000)]),
            "exactly two pages: PRP2 is still a page"
        );
    }

    #[test]
    fn a_list() {
        let g = guest();
        list(&g, page(10), &[page(20), page(21), page(30), page(22)]);
        assert_eq!(
            walk(&g, page(1), page(10), 5 * PAGE_SIZE),
            Ok(vec![
                seg(page(1), PAGE_SIZE),
                seg(page(20), 2 * PAGE_SIZE),
                seg(page(30), PAGE_SIZE),
                seg(page(22), PAGE_SIZE),
            ])
        );
        // Exactly three pages need a list of two entries; a short last page ends the data.
        assert_eq!(
            walk(&g, page(1), page(10), 3 * PAGE_SIZE),
            Ok(vec![seg(page(1), PAGE_SIZE), seg(page(20), 2 * PAGE_SIZE)])
        );
        assert_eq!(
            walk(&g, page(1) + 0x200, page(10), 2 * PAGE_SIZE),
            Ok(vec![
                seg(page(1) + 0x200, 0xE00),
                seg(page(20), PAGE_SIZE + 0x200)
            ]),
            "two pages from an offset span three"
        );
        assert_eq!(
            walk(&g, page(1), page(10), 4 * PAGE_SIZE + 1),
            Ok(vec![
                seg(page(1), PAGE_SIZE),
                seg(page(20), 2 * PAGE_SIZE),
                seg(page(30), PAGE_SIZE),
                seg(page(22), 1),
            ])
        );
    }

    #[test]
    fn a_list_with_an_offset() {
        let g = guest();
        list(&g, page(10) + 0x804, &[page(3), page(4), page(9)]);
        assert_eq!(
            walk(&g, page(2), page(10) + 0x804, 4 * PAGE_SIZE),
            Ok(vec![seg(page(2), 3 * PAGE_SIZE), seg(page(9), PAGE_SIZE)])
        );
        // Two entries fit between 0xFF0 and the end of the page: no chain for two.
        list(&g, page(11) + 0xFF0, &[page(5), page(7)]);
        assert_eq!(
            walk(&g, page(2), page(11) + 0xFF0, 3 * PAGE_SIZE),
            Ok(vec![
                seg(page(2), PAGE_SIZE),
                seg(page(5), PAGE_SIZE),
                seg(page(7), PAGE_SIZE)
            ])
        );
    }

    #[test]
    fn a_chained_list() {
        let g = guest();
        // A full page of 511 data entries and the pointer to a second list page with three.
        let data = |i: u64| page(40 + 2 * (i % 8));
        let mut first: Vec<u64> = (0..511).map(data).collect();
        first.push(page(12));
        list(&g, page(11), &first);
        list(&g, page(12), &[page(50), page(51), page(60)]);
        let len = (1 + 511 + 3) * PAGE_SIZE - 100;
        let out = walk(&g, page(1), page(11), len).expect("walk");
        let mut want = vec![seg(page(1), PAGE_SIZE)];
        want.extend((0..511).map(|i| seg(data(i), PAGE_SIZE)));
        want.push(seg(page(50), 2 * PAGE_SIZE));
        want.push(seg(page(60), PAGE_SIZE - 100));
        assert_eq!(out.len(), want.len());
        assert_eq!(out, want);

        // From an offset where one entry fits before the pointer, and where only the pointer
        // does.
        list(&g, page(13) + 0xFF0, &[page(30), page(14)]);
        list(&g, page(14), &[page(31), page(33)]);
        assert_eq!(
            walk(&g, page(1), page(13) + 0xFF0, 4 * PAGE_SIZE),
            Ok(vec![
                seg(page(1), PAGE_SIZE),
                seg(page(30), 2 * PAGE_SIZE),
                seg(page(33), PAGE_SIZE)
            ])
        );
        list(&g, page(15) + 0xFF8, &[page(14)]);
        assert_eq!(
            walk(&g, page(1), page(15) + 0xFF8, 3 * PAGE_SIZE),
            Ok(vec![
                seg(page(1), PAGE_SIZE),
                seg(page(31), PAGE_SIZE),
                seg(page(33), PAGE_SIZE)
            ])
        );
    }

    #[test]
    fn hostile_entries_get_their_status() {
        let g = guest();
        let field = Status::INVALID_FIELD.with_dnr();
        let offset = Status::INVALID_PRP_OFFSET.with_dnr();
        let transfer = Status::DATA_TRANSFER_ERROR;
        assert_eq!(offset.sc, 0x13);
        assert_eq!(
            walk(&g, page(1) + 2, 0, 16),
            Err(field),
            "PRP1 not dword aligned"
        );
        assert_eq!(walk(&g, 0, 0, 16), Err(transfer), "PRP1 zero");
        assert_eq!(
            walk(&g, page(64), 0, 16),
            Err(transfer),
            "PRP1 past the RAM"
        );
        assert_eq!(
            walk(&g, BASE - 4, 0, 8),
            Err(transfer),
            "PRP1 runs before the RAM"
        );

        assert_eq!(
            walk(&g, page(1), page(2) + 8, 0x2000),
            Err(offset),
            "PRP2 page offset"
        );
        assert_eq!(walk(&g, page(1), 0, 0x2000), Err(transfer), "PRP2 zero");
        assert_eq!(
            walk(&g, page(63) + 0x800, page(64), 0x1000),
            Err(transfer),
            "PRP2 outside"
        );

        assert_eq!(
            walk(&g, page(1), page(10) + 2, 0x3000),
            Err(offset),
            "list not dword aligned"
        );
        assert_eq!(
            walk(&g, page(1), page(10) + 0xFFC, 0x3000),
            Err(offset),
            "no room for an entry"
        );
        assert_eq!(
            walk(&g, page(1), page(64), 0x3000),
            Err(transfer),
            "list outside"
        );
        assert_eq!(
            walk(&g, page(1), page(63) + 0xFF8, 0x3000),
            Err(transfer),
            "chain pointer not filled"
        );

        list(&g, page(10), &[page(3), page(4) + 0x10]);
        assert_eq!(
            walk(&g, page(1), page(10), 0x3000),
            Err(offset),
            "entry with an offset"
        );
        list(&g, page(10), &[page(3), 0]);
        assert_eq!(
            walk(&g, page(1), page(10), 0x3000),
            Err(transfer),
            "zero entry"
        );
        list(&g, page(10), &[page(3), page(900)]);
        assert_eq!(
            walk(&g, page(1), page(10), 0x3000),
            Err(transfer),
            "entry outside"
        );
        list(&g, page(10), &[page(3), BASE - PAGE]);
        assert_eq!(
            walk(&g, page(1), page(10), 0x3000),
            Err(transfer),
            "entry below the RAM"
        );

        let mut chained: Vec<u64> = (0..511).map(|_| page(3)).collect();
        chained.push(page(11) + 0x20);
        list(&g, page(10), &chained);
        assert_eq!(
            walk(&g, page(1), page(10), 600 * PAGE_SIZE),
            Err(offset),
            "chain with an offset"
        );
        chained[511] = 0;
        list(&g, page(10), &chained);
        assert_eq!(
            walk(&g, page(1), page(10), 600 * PAGE_SIZE),
            Err(transfer),
            "chain to zero"
        );
        chained[511] = page(64);
        list(&g, page(10), &chained);
        assert_eq!(
            walk(&g, page(1), page(10), 600 * PAGE_SIZE),
            Err(transfer),
            "chain outside"
        );
    }

    #[test]
    fn enormous_lengths_and_looping_lists_are_bounded() {
        let g = guest();
        for len in [MAX_TRANSFER_LEN + 1, usize::MAX] {
            assert_eq!(
                walk(&g, page(1), page(10), len),
                Err(Status::INVALID_FIELD.with_dnr())
            );
        }
        // A list page that chains to itself: walked only as far as the length needs.
        let mut looping: Vec<u64> = (0..511).map(|_| page(3)).collect();
        looping.push(page(10));
        list(&g, page(10), &looping);
        let out = walk(&g, page(1), page(10), MAX_TRANSFER_LEN).expect("walk");
        assert_eq!(out.len(), MAX_TRANSFER_LEN / PAGE_SIZE);
        assert!(out[1..].iter().all(|s| *s == seg(page(3), PAGE_SIZE)));
        // An all-zero list fails at its first entry.
        assert_eq!(
            walk(&g, page(1), page(20), MAX_TRANSFER_LEN),
            Err(Status::DATA_TRANSFER_ERROR)
        );
    }

    #[test]
    fn copies_land_byte_for_byte() {
        let g = guest();
        list(&g, page(10) + 0x10, &[page(30), page(31), page(20)]);
        let len = 2 * PAGE_SIZE + 0x223;
        let prp1 = page(1) + 0xF00;
        let mut segs = Vec::new();
        prp_segments(&g.mem, prp1, page(10) + 0x10, len, &mut segs).expect("walk");
        assert_eq!(
            segs,
            [
                seg(prp1, 0x100),
                seg(page(30), 2 * PAGE_SIZE),
                seg(page(20), 0x123)
            ]
        );
        let data: Vec<u8> = (0..len).map(|i| (i * 7).to_le_bytes()[0]).collect();
        copy_to_guest(&g.mem, &segs, &data).expect("copy to guest");
        let mut seen = g.peek(prp1, 0x100);
        seen.extend(g.peek(page(30), 2 * PAGE_SIZE));
        seen.extend(g.peek(page(20), 0x123));
        assert_eq!(seen, data);
        assert_eq!(g.peek(page(20) + 0x123, 1), [0], "nothing past the end");
        assert_eq!(g.peek(prp1 - 1, 1), [0], "nothing before the start");

        let pattern: Vec<u8> = (0..len).map(|i| (i * 13 % 253).to_le_bytes()[0]).collect();
        g.poke(prp1, &pattern[..0x100]);
        g.poke(page(30), &pattern[0x100..0x2100]);
        g.poke(page(20), &pattern[0x2100..]);
        let mut buf = vec![0u8; len];
        copy_from_guest(&g.mem, &segs, &mut buf).expect("copy from guest");
        assert_eq!(buf, pattern);

        let internal = Err(Status::INTERNAL_ERROR);
        assert_eq!(copy_to_guest(&g.mem, &segs, &data[1..]), internal);
        assert_eq!(
            copy_from_guest(&g.mem, &segs, &mut vec![0; len + 1]),
            internal
        );
        assert_eq!(
            g.peek(page(20), 4),
            pattern[0x2100..0x2104],
            "a refused copy writes nothing"
        );
    }

    #[test]
    fn copies_fail_on_unmapped_and_read_only_memory() {
        let mut g = guest();
        let fd = memfd(0x2000).expect("memfd");
        let rom = Mapping::new(&fd, 0, 0x2000, MapProt::ReadWrite).expect("map");
        rom.write_at(0, &[0x5A; 0x2000]).expect("fill");
        g.mem
            .map(0x1000_0000, 0x2000, Prot::READ, Some((fd, 0)))
            .expect("map read-only");
        let mut segs = Vec::new();
        prp_segments(&g.mem, 0x1000_0000, 0x1000_1000, 0x2000, &mut segs).expect("walk");
        assert_eq!(segs, [seg(0x1000_0000, 0x2000)]);
        let mut buf = vec![0; 0x2000];
        copy_from_guest(&g.mem, &segs, &mut buf).expect("readable");
        assert_eq!(buf, vec![0x5A; 0x2000]);
        assert_eq!(
            copy_to_guest(&g.mem, &segs, &buf),
            Err(Status::DATA_TRANSFER_ERROR)
        );

        // The map changes between the walk and the copy.
        prp_segments(&g.mem, page(1), page(2), 0x2000, &mut segs).expect("walk");
        g.mem.unmap(BASE, 64 * PAGE).expect("unmap");
        assert_eq!(
            copy_to_guest(&g.mem, &segs, &buf),
            Err(Status::DATA_TRANSFER_ERROR)
        );
        assert_eq!(
            copy_from_guest(&g.mem, &segs, &mut buf),
            Err(Status::DATA_TRANSFER_ERROR)
        );
    }
}
