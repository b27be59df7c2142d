//! One module per verb; each turns parsed arguments into library calls and prints the result.

mod app;
mod archive;
mod aws;
mod build;
mod check;
mod compare;
mod convert;
mod create;
mod gc;
mod images;
mod info;
mod machine;
mod mkdisk;
mod mkfs;
mod names;
mod pull;
mod push;
mod registry;
mod serve;
mod tasks;

use anyhow::{Context, Result};
use stamp_disk::Format;

use crate::cli::Command;

use crate::progress::CancelFlag;
pub use app::dispatch_argv0;

/// Runs a command; returns the process exit code for outcomes that are not errors (check, compare).
pub fn run(command: Command, cancel: &CancelFlag) -> Result<u8> {
    match command {
        Command::Convert(a) => convert::run(a, cancel),
        Command::Info(a) => info::run(a),
        Command::Check(a) => check::run(a),
        Command::Compare(a) => compare::run(a, cancel),
        Command::Create(a) => create::run(a),
        Command::Mkfs(a) => mkfs::run(a, cancel),
        Command::Mkdisk(a) => mkdisk::run(a, cancel),
        Command::Pull(a) => pull::run(a, cancel),
        Command::Push(a) => push::run(a, cancel),
        Command::Images(a) => images::run_images(a),
        Command::Inspect(a) => match machine::run_inspect(&a)? {
            Some(code) => Ok(code),
            None => images::run_inspect(a),
        },
        Command::Tag(a) => names::run_tag(a),
        Command::Rmi(a) => names::run_rmi(a),
        Command::Gc(a) => gc::run_gc(a),
        Command::Fsck(a) => gc::run_fsck(a),
        Command::Import(a) => archive::run_import(a),
        Command::Export(a) => archive::run_export(a),
        Command::Tasks(a) => tasks::run(a),
        Command::Serve(a) => serve::run(a, cancel),
        Command::Build(a) => build::run(a, cancel),
        Command::Run(a) => machine::run_run(a, cancel),
        Command::Ps(a) => machine::run_ps(a),
        Command::Start(a) => machine::run_start(a, cancel),
        Command::Stop(a) => machine::run_stop(a),
        Command::Restart(a) => machine::run_restart(a),
        Command::Pause(a) => machine::run_pause(a, true),
        Command::Unpause(a) => machine::run_pause(a, false),
        Command::Rm(a) => machine::run_rm(a),
        Command::Logs(a) => machine::run_logs(a),
        Command::App(c) => app::run(c),
    }
}

/// Parses an optional `-f`/`-O` format name.
fn parse_format(name: Option<&str>) -> Result<Option<Format>> {
    name.map(|n| n.parse::<Format>().context("invalid format"))
        .transpose()
}

/// Opens an image with an optional forced format, with the path in the error.
fn open(path: &std::path::Path, format: Option<Format>) -> Result<Box<dyn stamp_disk::DiskReader>> {
    stamp_disk::open(path, format).with_context(|| format!("cannot open {}", path.display()))
}

/// Prints `value` as pretty JSON on stdout with a schema version.
fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    let mut v = serde_json::to_value(value)?;
    if let Some(obj) = v.as_object_mut() {
        obj.insert("schema_version".into(), serde_json::Value::from(1));
    }
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

/// Formats a byte count as qemu-img does ("10 MiB", "1.5 GiB").
fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else {
        let n = format!("{v:.3}");
        format!(
            "{} {}",
            n.trim_end_matches('0').trim_end_matches('.'),
            UNITS[i]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::human_size;

    #[test]
    fn sizes_print_like_qemu_img() {
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(10 << 20), "10 MiB");
        assert_eq!(human_size(3 << 29), "1.5 GiB");
    }
}
