//! End-to-end tests of the `stamp` binary against qemu-img, the reference tool: real-world images,
//! exit codes, error messages, and clean-up on interruption.

#![allow(clippy::unwrap_used)]

#[path = "../../../stamp-aws/tests/support/mod.rs"]
mod aws_support;
#[path = "../../../stamp-machine/tests/support/busybox.rs"]
mod busybox;
mod common;
#[path = "../../../stamp-machine/tests/support/container.rs"]
mod container_support;
#[path = "../../../stamp-machine/tests/support/fake_firecracker.rs"]
mod fake_firecracker;
#[path = "../../../stamp-serve/tests/support/http.rs"]
mod http_support;
#[path = "../../../stamp-serve/tests/support/pg.rs"]
mod pg_support;
#[path = "../../../stamp-oci/tests/support/mod.rs"]
mod support;

mod app;
mod aws;
mod aws_push;
mod aws_via;
mod build;
mod compare;
mod convert;
mod debian;
mod fixtures;
mod machine;
mod machine_systemd;
mod mkfs;
mod oci;
mod qemu;
mod serve;
mod usage;
