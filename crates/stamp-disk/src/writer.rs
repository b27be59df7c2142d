//! The writing side: [`DiskWriter`] takes a disk's contents as ascending extents and makes an
//! image; [`CreateOptions`] holds the `-o key=val` options of `convert` and `create`.

use std::path::PathBuf;

use serde::Serialize;

use crate::{Error, Extent, Format, Result};

/// A streaming writer of one image file.
///
/// Extents arrive in ascending order without overlap; gaps between them are zeros. Nothing is
/// visible at the destination path until [`DiskWriter::finish`] succeeds; a writer dropped
/// without `finish` removes what it wrote.
pub trait DiskWriter: Send {
    /// Writes the next extent.
    fn write_extent(&mut self, e: Extent) -> Result<()>;

    /// Writes the metadata, flushes, and renames the image into place.
    fn finish(self: Box<Self>) -> Result<DiskSummary>;
}

/// What a writer produced.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct DiskSummary {
    /// The image written.
    pub path: PathBuf,
    /// Its format.
    pub format: String,
    /// Its virtual size.
    pub virtual_size: u64,
    /// Size of the image file in bytes.
    pub file_size: u64,
    /// Bytes of guest data stored (before compression).
    pub data_bytes: u64,
}

/// Compression algorithm for compressed qcow2 clusters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Deflate (qcow2's `zlib`), the default.
    #[default]
    Zlib,
    /// Zstandard (qcow2 v3 only).
    Zstd,
}

/// Options for creating an image, as given with `-o key=val,...` and `-c`.
///
/// Each writer takes the options that apply to its format and refuses the others by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CreateOptions {
    /// Compress data (`-c`): qcow2 compressed clusters. By default, off.
    pub compress: bool,
    /// `subformat=`: VMDK `monolithicSparse`/`streamOptimized`, VHD/VHDX `dynamic`/`fixed`.
    pub subformat: Option<String>,
    /// `cluster_size=` (qcow2) in bytes.
    pub cluster_size: Option<u64>,
    /// `compression_type=` (qcow2).
    pub compression_type: Option<Compression>,
    /// `compat=` (qcow2): `0.10` or `1.1` (also `v2`/`v3`).
    pub compat: Option<String>,
    /// `backing_file=` (qcow2 create).
    pub backing_file: Option<PathBuf>,
    /// `backing_fmt=` (qcow2 create).
    pub backing_fmt: Option<Format>,
    /// `adapter_type=` (VMDK): `ide`, `lsilogic`, `buslogic`, `legacyESX`.
    pub adapter_type: Option<String>,
    /// `force_size=on` (VHD): keep the exact size and align fixed VHDs to whole MiB.
    pub force_size: bool,
    /// `block_size=` (VHDX) in bytes.
    pub block_size: Option<u64>,
    /// Keys that were given and that the chosen format must accept, in the order given.
    pub given: Vec<String>,
}

impl CreateOptions {
    /// Parses a comma-separated `key=val` list as qemu-img's `-o` takes it (`-o a=1,b=2`).
    pub fn parse(list: &str) -> Result<Self> {
        let mut o = CreateOptions::default();
        o.merge(list)?;
        Ok(o)
    }

    /// Adds the options in `list` to these.
    pub fn merge(&mut self, list: &str) -> Result<()> {
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (key, val) = item.split_once('=').ok_or_else(|| {
                Error::InvalidOption(format!("option '{item}' needs a value: write {item}=VALUE"))
            })?;
            let key = key.trim();
            let val = val.trim();
            let bad = |what: &str| Error::InvalidOption(format!("option {key}={val}: {what}"));
            match key {
                "subformat" => self.subformat = Some(val.to_string()),
                "cluster_size" => self.cluster_size = Some(parse_size(val).map_err(|e| bad(&e))?),
                "block_size" => self.block_size = Some(parse_size(val).map_err(|e| bad(&e))?),
                "compression_type" => {
                    self.compression_type = Some(match val {
                        "zlib" => Compression::Zlib,
                        "zstd" => Compression::Zstd,
                        _ => return Err(bad("expected zlib or zstd")),
                    })
                }
                "compat" => self.compat = Some(val.to_string()),
                "backing_file" => self.backing_file = Some(PathBuf::from(val)),
                "backing_fmt" => self.backing_fmt = Some(val.parse()?),
                "adapter_type" => self.adapter_type = Some(val.to_string()),
                "force_size" => self.force_size = parse_bool(val).map_err(|e| bad(&e))?,
                _ => {
                    return Err(Error::InvalidOption(format!(
                        "unknown option '{key}' (known: subformat, cluster_size, compression_type, compat, backing_file, backing_fmt, adapter_type, force_size, block_size)"
                    )));
                }
            }
            self.given.push(key.to_string());
        }
        Ok(())
    }

    /// Refuses any given option not in `allowed`, naming the format.
    pub fn allow_only(&self, format: Format, allowed: &[&str]) -> Result<()> {
        if self.compress && !allowed.contains(&"compress") {
            return Err(Error::InvalidOption(format!(
                "{format} does not support compression (-c); use qcow2, or vmdk with subformat=streamOptimized"
            )));
        }
        for key in &self.given {
            if !allowed.contains(&key.as_str()) {
                let list: Vec<_> = allowed
                    .iter()
                    .filter(|k| **k != "compress")
                    .copied()
                    .collect();
                return Err(Error::InvalidOption(format!(
                    "{format} does not take option '{key}' (it takes: {})",
                    if list.is_empty() {
                        "none".to_string()
                    } else {
                        list.join(", ")
                    }
                )));
            }
        }
        Ok(())
    }
}

/// Parses `on`/`off`-style booleans as qemu-img does.
fn parse_bool(s: &str) -> std::result::Result<bool, String> {
    match s {
        "on" | "yes" | "true" | "1" => Ok(true),
        "off" | "no" | "false" | "0" => Ok(false),
        _ => Err("expected on or off".into()),
    }
}

/// Parses a size with an optional K/M/G/T/P/E suffix (powers of 1024; `B` or none for bytes).
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let shift = match suffix
        .trim()
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        "P" => 50,
        "E" => 60,
        _ => {
            return Err(format!(
                "'{s}' is not a size (use a number with K, M, G or T)"
            ));
        }
    };
    let bad = || format!("'{s}' is not a size (use a number with K, M, G or T)");
    if num.is_empty() {
        return Err(bad());
    }
    if let Some((whole, frac)) = num.split_once('.') {
        let whole: u64 = whole.parse().map_err(|_| bad())?;
        let frac_val: f64 = format!("0.{frac}").parse().map_err(|_| bad())?;
        let unit = 1u64.checked_shl(shift).ok_or_else(bad)?;
        let v = whole
            .checked_mul(unit)
            .and_then(|w| w.checked_add((frac_val * unit as f64) as u64))
            .ok_or_else(|| format!("'{s}' is too large"))?;
        return Ok(v);
    }
    let n: u64 = num.parse().map_err(|_| bad())?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("'{s}' is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("64K").unwrap(), 65536);
        assert_eq!(parse_size("2M").unwrap(), 2 << 20);
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_size("10GiB").unwrap(), 10 << 30);
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999E").is_err());
    }

    #[test]
    fn options_parse_and_refuse_unknown_keys() {
        let o = CreateOptions::parse("subformat=streamOptimized,cluster_size=2M").unwrap();
        assert_eq!(o.subformat.as_deref(), Some("streamOptimized"));
        assert_eq!(o.cluster_size, Some(2 << 20));
        assert!(CreateOptions::parse("bogus=1").is_err());
        assert!(CreateOptions::parse("subformat").is_err());
        let o = CreateOptions::parse("cluster_size=4K").unwrap();
        assert!(o.allow_only(Format::Vhd, &["subformat"]).is_err());
        assert!(o.allow_only(Format::Qcow2, &["cluster_size"]).is_ok());
    }
}
