#![no_main]
//! Fuzz target: arbitrary bytes as an EC2 Query API request body; see `aws_common::ec2_request`.

mod aws_common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| aws_common::ec2_request(data));
