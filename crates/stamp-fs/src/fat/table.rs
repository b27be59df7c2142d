//! The file allocation table: cluster chains as 12-, 16- or 28-bit entries.

use super::layout::{FatType, SECTOR};

/// The FAT itself, up to the last used entry: `next[c]` is the value of entry `c`.
pub(crate) fn table(kind: FatType, entries: &[u32]) -> Vec<u8> {
    let mut out = Vec::new();
    match kind {
        FatType::Fat12 => {
            out.resize((entries.len() * 3).div_ceil(2), 0);
            for (i, e) in entries.iter().enumerate() {
                let v = (*e & 0xFFF) as u16;
                let at = i * 3 / 2;
                if i % 2 == 0 {
                    out[at] = v as u8;
                    out[at + 1] |= (v >> 8) as u8;
                } else {
                    out[at] |= ((v & 0xF) << 4) as u8;
                    out[at + 1] = (v >> 4) as u8;
                }
            }
        }
        FatType::Fat16 => {
            for e in entries {
                out.extend_from_slice(&(*e as u16).to_le_bytes());
            }
        }
        FatType::Fat32 => {
            for e in entries {
                out.extend_from_slice(&(*e & 0x0FFF_FFFF).to_le_bytes());
            }
        }
    }
    out.resize(out.len().next_multiple_of(SECTOR as usize), 0);
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn fat12_packs_two_entries_in_three_bytes() {
        let t = table(FatType::Fat12, &[0xFF8, 0xFFF, 0x003, 0xFFF]);
        assert_eq!(&t[..6], &[0xF8, 0xFF, 0xFF, 0x03, 0xF0, 0xFF]);
        assert_eq!(t.len(), 512);
    }
}
