//! Helpers shared by stamp-serve's integration tests.
#![allow(dead_code)]

pub mod pg;
