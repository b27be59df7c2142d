#![no_main]
//! Fuzz target: arbitrary text as a stamp.toml recipe; see `build_common::recipe`.

mod build_common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| build_common::recipe(data));
