//! raw tests.

use super::common::*;
use stamp_disk::Format;

#[test]
fn raw_round_trip_keeps_holes_and_data() {
    let d = tmp();
    let src = d.path().join("src.raw");
    random_sparse_raw(&src, 32 << 20, 20, 1);
    let s = assert_reads_like_qemu(&src);
    let dst = d.path().join("dst.raw");
    stamp_convert(&src, &dst, Format::Raw, "", false);
    assert_eq!(std::fs::read(&dst).unwrap(), s);
    assert_qemu_identical(&src, &dst);
    use std::os::unix::fs::MetadataExt;
    let blocks = std::fs::metadata(&dst).unwrap().blocks() * 512;
    assert!(
        blocks < 16 << 20,
        "output not sparse: {blocks} bytes allocated"
    );
}
