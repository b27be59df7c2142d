#![no_main]
//! Fuzz target: arbitrary bytes through `stamp_oci` (manifest); see `oci_common::manifest`.

mod oci_common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    oci_common::manifest(data);
});
