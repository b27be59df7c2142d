//! Property: a random sparse disk survives a chain through every writer and reader in turn
//! (raw → qcow2 → vmdk → vhd → vhdx → vdi → qcow2 -c → vmdk stream → ova → raw), byte for byte.

use proptest::prelude::*;
use stamp_disk::Format;

use super::common::*;

/// Each step: output format, `-o` options, compress.
const CHAIN: &[(Format, &str, bool)] = &[
    (Format::Qcow2, "", false),
    (Format::Vmdk, "", false),
    (Format::Vhd, "force_size=on", false),
    (Format::Vhdx, "block_size=1M", false),
    (Format::Vdi, "", false),
    (Format::Qcow2, "cluster_size=4K,compression_type=zstd", true),
    (Format::Vmdk, "subformat=streamOptimized", false),
    (Format::Ova, "", false),
    (Format::Raw, "", false),
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn random_disks_survive_every_writer_and_reader(
        mib in 1u64..24,
        tail in prop_oneof![Just(0u64), 1u64..2048].prop_map(|s| s * 512),
        runs in 0usize..24,
        seed in any::<u64>(),
    ) {
        let d = tmp();
        let size = (mib << 20) + tail;
        let src = d.path().join("src.raw");
        random_sparse_raw(&src, size, runs, seed);
        let want = std::fs::read(&src).unwrap();
        let mut prev = src;
        for (i, (fmt, opts, compress)) in CHAIN.iter().enumerate() {
            let next = d.path().join(format!("step{i}.{fmt}"));
            stamp_convert(&prev, &next, *fmt, opts, *compress);
            let got = stamp_read(&next);
            prop_assert_eq!(got.len(), want.len(), "virtual size after {} {}", fmt, opts);
            let first = got.iter().zip(&want).position(|(a, b)| a != b);
            prop_assert!(first.is_none(), "after {} {}: first difference at {:?}", fmt, opts, first);
            prev = next;
        }
    }
}
