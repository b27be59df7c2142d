#![no_main]
//! Fuzz target: arbitrary bytes as the systemd-stub of a UKI; see `build_common::pe_stub`.

mod build_common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| build_common::pe_stub(data));
