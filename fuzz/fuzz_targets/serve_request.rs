#![no_main]
//! Fuzz target: arbitrary bytes as a signed request to stamp serve; see `aws_common::serve_request`.

mod aws_common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| aws_common::serve_request(data));
