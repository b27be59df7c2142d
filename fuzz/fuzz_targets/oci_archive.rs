#![no_main]
//! Fuzz target: arbitrary bytes through `stamp_oci` (archive); see `oci_common::archive`.

mod oci_common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    oci_common::archive(data);
});
