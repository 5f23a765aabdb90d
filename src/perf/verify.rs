//! The `--verify` block format: every logical block written starts with a magic, its LBA and
//! a generation, and the rest is a pattern derived from both. A read is right when every
//! block carries the LBA it was read from, a consistent pattern and, when this run wrote it,
//! the generation of the last completed write.

const MAGIC: [u8; 8] = *b"NVMFPERF";
const STAMP_LEN: usize = 24;

/// Why a block read back is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mismatch {
    /// No magic: never written by nvmf-perf (or overwritten by something else).
    NoStamp { lba: u64 },
    /// Written for another LBA.
    WrongLba { lba: u64, found: u64 },
    /// An older (or newer) write than the last one this run completed.
    WrongGeneration { lba: u64, expected: u64, found: u64 },
    /// The stamp is right but the pattern after it is not.
    Corrupt { lba: u64, offset: usize },
}

impl core::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoStamp { lba } => write!(f, "lba {lba}: no verify stamp (never written?)"),
            Self::WrongLba { lba, found } => write!(f, "lba {lba}: holds the block of lba {found}"),
            Self::WrongGeneration {
                lba,
                expected,
                found,
            } => write!(
                f,
                "lba {lba}: generation {found:#x}, last written {expected:#x}"
            ),
            Self::Corrupt { lba, offset } => write!(f, "lba {lba}: wrong byte at offset {offset}"),
        }
    }
}

fn seed(lba: u64, generation: u64) -> u64 {
    // splitmix64 finalizer: neighbouring LBAs and generations get unrelated patterns.
    let mut z = lba ^ generation.rotate_left(29) ^ 0x9E37_79B9_7F4A_7C15;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn pattern_word(seed: u64, index: usize) -> [u8; 8] {
    seed.wrapping_add((index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .to_le_bytes()
}

fn fill(block: &mut [u8], lba: u64, generation: u64) {
    block[..8].copy_from_slice(&MAGIC);
    block[8..16].copy_from_slice(&lba.to_le_bytes());
    block[16..24].copy_from_slice(&generation.to_le_bytes());
    let s = seed(lba, generation);
    for (i, chunk) in block[STAMP_LEN..].chunks_mut(8).enumerate() {
        let word = pattern_word(s, i);
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
}

/// Fills `buf` (whole blocks of `block_size` bytes, first at `slba`) with stamped blocks.
pub fn stamp(buf: &mut [u8], block_size: usize, slba: u64, generation: u64) {
    for (i, block) in buf.chunks_exact_mut(block_size).enumerate() {
        fill(block, slba + i as u64, generation);
    }
}

/// Checks the blocks of a read at `slba`; `expected` is the generation of this run's last
/// completed write of that range, if any. Reports the first wrong block.
pub fn check(
    buf: &[u8],
    block_size: usize,
    slba: u64,
    expected: Option<u64>,
) -> Result<(), Mismatch> {
    for (i, block) in buf.chunks_exact(block_size).enumerate() {
        let lba = slba + i as u64;
        if block.len() < STAMP_LEN || block[..8] != MAGIC {
            return Err(Mismatch::NoStamp { lba });
        }
        let word = |at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&block[at..at + 8]);
            u64::from_le_bytes(w)
        };
        let (found_lba, generation) = (word(8), word(16));
        if found_lba != lba {
            return Err(Mismatch::WrongLba {
                lba,
                found: found_lba,
            });
        }
        if let Some(expected) = expected.filter(|&e| e != generation) {
            return Err(Mismatch::WrongGeneration {
                lba,
                expected,
                found: generation,
            });
        }
        let s = seed(lba, generation);
        for (j, chunk) in block[STAMP_LEN..].chunks(8).enumerate() {
            if chunk != &pattern_word(s, j)[..chunk.len()] {
                return Err(Mismatch::Corrupt {
                    lba,
                    offset: STAMP_LEN + j * 8,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamped_blocks_verify_and_damage_is_found() {
        let mut buf = vec![0u8; 4096];
        assert_eq!(check(&buf, 512, 8, None), Err(Mismatch::NoStamp { lba: 8 }));
        stamp(&mut buf, 512, 8, 77);
        assert_eq!(check(&buf, 512, 8, None), Ok(()));
        assert_eq!(check(&buf, 512, 8, Some(77)), Ok(()));
        assert_eq!(
            check(&buf, 512, 8, Some(78)),
            Err(Mismatch::WrongGeneration {
                lba: 8,
                expected: 78,
                found: 77
            })
        );
        assert_eq!(
            check(&buf, 512, 16, None),
            Err(Mismatch::WrongLba { lba: 16, found: 8 })
        );
        buf[3 * 512 + 100] ^= 0x10;
        assert_eq!(
            check(&buf, 512, 8, None),
            Err(Mismatch::Corrupt {
                lba: 11,
                offset: 96
            })
        );
    }
}
