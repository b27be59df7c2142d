#![no_main]
//! Fuzz target: arbitrary bytes as an EC2 XML response; see `aws_common::ec2_response`.

mod aws_common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| aws_common::ec2_response(data));
