#![no_main]
//! Fuzz target: arbitrary bytes as an EC2 import manifest; see `aws_common::serve_manifest`.

mod aws_common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| aws_common::serve_manifest(data));
