//! `stamp mkdisk`: a GPT disk whose partitions are made from directories or tars.

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use stamp_disk::Extent;
use stamp_fs::Image;
use stamp_fs::ext4::ext4;
use stamp_fs::fat::fat;
use stamp_fs::gpt::{GptOptions, Partition, PartitionType, gpt_disk};
use stamp_fs::source::Loaded;

use super::mkfs::{ext4_options, fat_options, load, output_format, size_arg, write_image};
use crate::cli::MkdiskArgs;
use crate::progress::CancelFlag;

/// What goes in a partition, by its `TYPE` word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fs {
    /// FAT (the ESP).
    Fat,
    /// ext4.
    Ext4,
    /// A swap signature (as `mkswap` writes) on zeros.
    Swap,
    /// Nothing: the partition is left zeroed (BIOS boot).
    None,
}

/// One `--part TYPE:SIZE[:SRC]`.
#[derive(Debug)]
struct PartSpec {
    name: &'static str,
    kind: PartitionType,
    fs: Fs,
    size: Option<u64>,
    src: Option<String>,
}

/// The root and /usr types for the architecture this stamp was built for.
fn native(root: bool) -> PartitionType {
    match (root, cfg!(target_arch = "aarch64")) {
        (true, true) => PartitionType::RootArm64,
        (true, false) => PartitionType::RootX86_64,
        (false, true) => PartitionType::UsrArm64,
        (false, false) => PartitionType::UsrX86_64,
    }
}

fn parse_part(s: &str) -> Result<PartSpec> {
    let mut it = s.splitn(3, ':');
    let ty = it.next().unwrap_or_default();
    let size = it.next().ok_or_else(|| {
        anyhow!("invalid --part '{s}': TYPE:SIZE[:SRC] expected, as esp:512M:boot/ or root:auto:rootfs.tar")
    })?;
    let src = it.next().filter(|v| !v.is_empty()).map(str::to_string);
    let (name, kind, fs) = match ty {
        "esp" => ("esp", PartitionType::Esp, Fs::Fat),
        "root" => ("root", native(true), Fs::Ext4),
        "root-x86-64" => ("root", PartitionType::RootX86_64, Fs::Ext4),
        "root-arm64" => ("root", PartitionType::RootArm64, Fs::Ext4),
        "usr" => ("usr", native(false), Fs::Ext4),
        "usr-x86-64" => ("usr", PartitionType::UsrX86_64, Fs::Ext4),
        "usr-arm64" => ("usr", PartitionType::UsrArm64, Fs::Ext4),
        "linux" => ("linux", PartitionType::LinuxData, Fs::Ext4),
        "swap" => ("swap", PartitionType::Swap, Fs::Swap),
        "bios" => ("bios", PartitionType::BiosBoot, Fs::None),
        other => bail!(
            "invalid --part '{s}': unknown type '{other}' (esp, root, root-x86-64, root-arm64, usr, usr-x86-64, usr-arm64, linux, swap, bios)"
        ),
    };
    let size = match size {
        "auto" | "" => None,
        v => Some(size_arg(v).with_context(|| format!("invalid --part '{s}'"))?),
    };
    match (fs, &src, size) {
        (Fs::None | Fs::Swap, Some(_), _) => {
            bail!("invalid --part '{s}': a {ty} partition takes no source")
        }
        (Fs::None | Fs::Swap, None, None) => {
            bail!("invalid --part '{s}': a {ty} partition needs a size")
        }
        (Fs::Fat | Fs::Ext4, None, None) => {
            bail!("invalid --part '{s}': without a source, give a size")
        }
        _ => {}
    }
    Ok(PartSpec {
        name,
        kind,
        fs,
        size,
        src,
    })
}

pub fn run(a: MkdiskArgs, cancel: &CancelFlag) -> Result<u8> {
    if a.parts.is_empty() {
        bail!("no partitions: give at least one --part TYPE:SIZE[:SRC]");
    }
    let format = output_format(a.out_format.as_deref(), &a.output)?;
    let specs = a
        .parts
        .iter()
        .map(|p| parse_part(p))
        .collect::<Result<Vec<_>>>()?;
    // Every tree is loaded before any image borrows one.
    let loaded: Vec<Option<Loaded>> = specs
        .iter()
        .map(|p| p.src.as_deref().map(load).transpose())
        .collect::<Result<_>>()?;
    let mut parts = Vec::with_capacity(specs.len());
    for (i, (spec, tree)) in specs.iter().zip(&loaded).enumerate() {
        let image = part_image(spec, tree.as_ref(), i as u64, a.seed)?;
        parts.push(Partition {
            name: spec.name.to_string(),
            kind: spec.kind,
            size: spec.size.unwrap_or(0),
            attributes: 0,
            unique_guid: None,
            image,
        });
    }
    let opts = GptOptions {
        size: a.size.as_deref().map(size_arg).transpose()?,
        seed: a.seed,
        ..GptOptions::default()
    };
    let disk = gpt_disk(parts, &opts).context("cannot lay out the GPT disk")?;
    write_image(disk, &a.output, format, a.progress, cancel)
}

/// The contents of partition number `index` (from 0) described by `spec`, from `tree`.
fn part_image<'a>(
    spec: &PartSpec,
    tree: Option<&'a Loaded>,
    index: u64,
    seed: Option<u64>,
) -> Result<Option<Image<'a>>> {
    let size = spec.size.map(|s| s.to_string());
    Ok(match (spec.fs, tree) {
        (Fs::Swap, _) => {
            let size = spec.size.unwrap_or(0);
            Some(swap_image(size, derived_uuid(seed, index, size))?)
        }
        (Fs::Ext4, Some(l)) => {
            let opts = ext4_options(size.as_deref(), None, None, None, None, 4096, seed)?;
            let what = || format!("cannot lay out the {} partition's ext4", spec.name);
            Some(ext4(&l.tree, &opts).with_context(what)?)
        }
        (Fs::Fat, Some(l)) => {
            let opts = fat_options(size.as_deref(), None)?;
            let what = || format!("cannot lay out the {} partition's FAT", spec.name);
            Some(fat(&l.tree, &opts).with_context(what)?)
        }
        _ => None,
    })
}

/// Size of the swap header page (`mkswap`'s default on 4 KiB-page machines).
const SWAP_PAGE: u64 = 4096;

/// A swap area of `size` bytes: the header page `mkswap` writes (version 1, the last page, no bad
/// pages, `uuid`, no label, `SWAPSPACE2` at the end of the page) and zeros.
fn swap_image(size: u64, uuid: [u8; 16]) -> Result<Image<'static>> {
    let pages = size / SWAP_PAGE;
    if pages < 10 {
        bail!("a swap partition needs at least 40 KiB, not {size} bytes");
    }
    let last = u32::try_from(pages - 1)
        .map_err(|_| anyhow!("a swap partition of {size} bytes is larger than swap allows"))?;
    let mut page = vec![0u8; SWAP_PAGE as usize];
    page[1024..1028].copy_from_slice(&1u32.to_le_bytes());
    page[1028..1032].copy_from_slice(&last.to_le_bytes());
    page[1036..1052].copy_from_slice(&uuid);
    page[SWAP_PAGE as usize - 10..].copy_from_slice(b"SWAPSPACE2");
    let extents = vec![
        Ok(Extent::Data {
            offset: 0,
            bytes: Bytes::from(page),
        }),
        Ok(Extent::Zero {
            offset: SWAP_PAGE,
            len: size - SWAP_PAGE,
        }),
    ];
    Ok(Image {
        size,
        extents: Box::new(extents.into_iter()),
    })
}

/// A UUID (version 4 layout) derived from the seed, the partition's index and its size, so that
/// the same command gives the same bytes (FNV-1a, not a secret: only distinctness matters).
fn derived_uuid(seed: Option<u64>, index: u64, size: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (half, chunk) in out.chunks_mut(8).enumerate() {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let words = [
            half as u64,
            seed.unwrap_or(0),
            u64::from(seed.is_some()),
            index,
            size,
        ];
        for b in b"stamp swap"
            .iter()
            .copied()
            .chain(words.iter().flat_map(|w| w.to_le_bytes()))
        {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        chunk.copy_from_slice(&h.to_be_bytes());
    }
    out[6] = (out[6] & 0x0f) | 0x40;
    out[8] = (out[8] & 0x3f) | 0x80;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_specs_parse() {
        let p = parse_part("esp:64M:boot").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (p.fs, p.size, p.src.as_deref()),
            (Fs::Fat, Some(64 << 20), Some("boot"))
        );
        let p = parse_part("root:auto:/tmp/a:b.tar").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((p.size, p.src.as_deref()), (None, Some("/tmp/a:b.tar")));
        assert!(parse_part("swap:1G").is_ok());
        assert!(parse_part("swap:auto").is_err());
        assert!(parse_part("swap:1G:x").is_err());
        assert!(parse_part("nope:1G:x").is_err());
        assert!(parse_part("esp").is_err());
    }
}
