//! `stamp check`: qemu-img's exit codes (0 clean, 2 corruption, 3 leaks only, 1 could not check).

use anyhow::Result;

use anyhow::Context;

use super::{parse_format, print_json};
use crate::cli::CheckArgs;

pub fn run(a: CheckArgs) -> Result<u8> {
    let opts = stamp_disk::OpenOptions {
        format: parse_format(a.format.as_deref())?,
        for_check: true,
        ..Default::default()
    };
    let reader = stamp_disk::open_with(&a.file, &opts)
        .with_context(|| format!("cannot check {}", a.file.display()))?;
    let info = reader.info();
    let report = reader.check()?;
    let code = report.exit_code() as u8;
    if a.json {
        #[derive(serde::Serialize)]
        struct Out<'a> {
            filename: &'a str,
            format: &'a str,
            result: &'static str,
            #[serde(flatten)]
            report: &'a stamp_disk::CheckReport,
        }
        print_json(&Out {
            filename: &info.filename,
            format: &info.format,
            result: match code {
                0 => "clean",
                2 => "corrupt",
                _ => "leaks",
            },
            report: &report,
        })?;
        return Ok(code);
    }
    for c in &report.corruptions {
        println!("ERROR {c}");
    }
    for l in &report.leaks {
        println!("Leaked cluster {l}");
    }
    match code {
        0 => println!("No errors were found on the image."),
        2 => {
            println!(
                "\n{} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.",
                report.corruptions.len()
            );
        }
        _ => println!(
            "\n{} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.",
            report.leaks.len()
        ),
    }
    if report.total_clusters > 0 {
        println!(
            "{}/{} = {:.2}% allocated",
            report.allocated_clusters,
            report.total_clusters,
            report.allocated_clusters as f64 * 100.0 / report.total_clusters as f64
        );
    }
    Ok(code)
}
