#![no_main]
//! Fuzz target: arbitrary bytes opened as raw through `stamp_disk::open`.

mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| common::exercise(data, Some(stamp_disk::Format::Raw)));
