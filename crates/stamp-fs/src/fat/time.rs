//! FAT timestamps: local time (taken as UTC) with 2-second resolution, 1980 to 2107.

use crate::Timestamp;
use crate::tree::civil_from_days;

/// A FAT date and time: `(date, time, tenths)` as stored in a directory entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FatTime {
    /// Bits 15-9 year since 1980, 8-5 month, 4-0 day.
    pub date: u16,
    /// Bits 15-11 hour, 10-5 minute, 4-0 second / 2.
    pub time: u16,
    /// Hundredths of a second beyond `time` (0..=199), for the creation time.
    pub tenths: u8,
}

/// 1980-01-01 00:00:00 UTC.
const MIN: i64 = 315_532_800;
/// 2107-12-31 23:59:58 UTC.
const MAX: i64 = 4_354_819_198;

/// Converts `t`, clamped to `limit` first, then to FAT's range (earlier dates become 1980-01-01).
pub(crate) fn fat_time(t: Timestamp, limit: Option<i64>) -> FatTime {
    let t = t.clamp_to(limit.map(Timestamp::from_secs));
    let (sec, nsec) = if t.sec < MIN {
        (MIN, 0)
    } else if t.sec > MAX {
        (MAX, 0)
    } else {
        (t.sec, t.nsec)
    };
    let days = sec.div_euclid(86_400);
    let secs = sec.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let (h, mi, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    FatTime {
        date: (((y - 1980) as u16) << 9) | ((m as u16) << 5) | d as u16,
        time: ((h as u16) << 11) | ((mi as u16) << 5) | (s / 2) as u16,
        tenths: ((s % 2) * 100) as u8 + (nsec / 10_000_000).min(99) as u8,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn converts_clamps_and_floors_at_1980() {
        // 2021-03-04 05:06:07.5 UTC
        let t = fat_time(
            Timestamp {
                sec: 1_614_834_367,
                nsec: 500_000_000,
            },
            None,
        );
        assert_eq!(t.date, (41 << 9) | (3 << 5) | 4);
        assert_eq!(t.time, (5 << 11) | (6 << 5) | 3);
        assert_eq!(t.tenths, 150);
        let early = fat_time(Timestamp::from_secs(0), None);
        assert_eq!(early.date, (1 << 5) | 1);
        assert_eq!(early.time, 0);
        let clamped = fat_time(Timestamp::from_secs(2_000_000_000), Some(MIN + 86_400));
        assert_eq!(clamped.date, (1 << 5) | 2);
        let late = fat_time(Timestamp::from_secs(i64::MAX), None);
        assert_eq!(late.date, (127 << 9) | (12 << 5) | 31);
    }
}
