//! qcow2 tests.

#[allow(unused_imports)]
use super::common::*;
