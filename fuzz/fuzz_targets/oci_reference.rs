#![no_main]
//! Fuzz target: arbitrary bytes through `stamp_oci` (reference); see `oci_common::reference`.

mod oci_common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| oci_common::reference(data));
