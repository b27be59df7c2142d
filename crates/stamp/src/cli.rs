//! The command line: verbs and their flags, with qemu-img's and podman's words where users know them.

use std::path::PathBuf;

use clap::builder::TypedValueParser;
use clap::{Args, Parser, Subcommand};

/// stamp: build, convert, store, publish and run virtual machine images.
#[derive(Debug, Parser)]
#[command(name = "stamp", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// More log output (-v info, -vv debug, -vvv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Convert a disk image to another format (raw, qcow2, vmdk, vhd, vhdx, vdi, ova).
    Convert(ConvertArgs),
    /// Show an image's format, sizes, compression, backing chain and (for OVA) disks.
    Info(InfoArgs),
    /// Check an image's metadata: exit 0 clean, 2 corruption, 3 leaks only, 1 could not check.
    Check(CheckArgs),
    /// Compare the contents of two images: exit 0 identical, 1 different, 2 error.
    Compare(CompareArgs),
    /// Create an empty image of a given size.
    Create(CreateArgs),
    /// Make an ext4 or FAT filesystem image from a directory or a tar, without root.
    #[command(subcommand)]
    Mkfs(MkfsArgs),
    /// Make a GPT disk image whose partitions are filesystems made from directories or tars.
    Mkdisk(MkdiskArgs),
}

impl Command {
    /// The exit code when the command fails: 2 for `compare` (whose 1 means "different"), as
    /// qemu-img; 1 for the others.
    pub fn error_exit_code(&self) -> u8 {
        match self {
            Command::Compare(_) => 2,
            _ => 1,
        }
    }
}

/// `stamp convert`.
#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// Source format (detected from content by default).
    #[arg(short = 'f', value_name = "SRC_FMT")]
    pub src_format: Option<String>,
    /// Output format (by default from DST's extension, else raw).
    #[arg(short = 'O', value_name = "FMT")]
    pub out_format: Option<String>,
    /// Output options, comma-separated key=val (subformat, cluster_size, compat, compression_type, adapter_type, force_size, block_size).
    #[arg(short = 'o', value_name = "OPTIONS")]
    pub options: Vec<String>,
    /// Compress the output (qcow2 compressed clusters).
    #[arg(short = 'c')]
    pub compress: bool,
    /// Show a progress bar (on a terminal).
    #[arg(short = 'p')]
    pub progress: bool,
    /// The image to read.
    pub src: PathBuf,
    /// The image to write (written under a temporary name, renamed when complete).
    pub dst: PathBuf,
}

/// `stamp info`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    /// Image format (detected from content by default).
    #[arg(short = 'f', value_name = "FMT")]
    pub format: Option<String>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// The image.
    pub file: PathBuf,
}

/// `stamp check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Image format (detected from content by default).
    #[arg(short = 'f', value_name = "FMT")]
    pub format: Option<String>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// The image.
    pub file: PathBuf,
}

/// `stamp compare`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Format of the first image (detected by default).
    #[arg(short = 'f', value_name = "FMT")]
    pub format_a: Option<String>,
    /// Format of the second image (detected by default).
    #[arg(short = 'F', value_name = "FMT")]
    pub format_b: Option<String>,
    /// Show a progress bar (on a terminal).
    #[arg(short = 'p')]
    pub progress: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// First image.
    pub a: PathBuf,
    /// Second image.
    pub b: PathBuf,
}

/// `stamp create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Format of the new image.
    #[arg(short = 'f', value_name = "FMT", default_value = "raw")]
    pub format: String,
    /// Options, comma-separated key=val (as for convert, plus backing_file and backing_fmt for qcow2).
    #[arg(short = 'o', value_name = "OPTIONS")]
    pub options: Vec<String>,
    /// The image to create.
    pub file: PathBuf,
    /// Virtual size, with K/M/G/T suffixes (optional with a backing file: its size).
    pub size: Option<String>,
}

/// `stamp mkfs`: the filesystem types.
#[derive(Debug, Subcommand)]
pub enum MkfsArgs {
    /// An ext4 filesystem (extents, 64bit, metadata_csum, a journal).
    Ext4(MkfsExt4Args),
    /// A FAT filesystem (FAT32 from 64 MiB, FAT16/12 below), for EFI system partitions.
    Fat(MkfsFatArgs),
}

/// `stamp mkfs ext4`.
#[derive(Debug, Args)]
pub struct MkfsExt4Args {
    /// The content: a directory, a tar (plain, gzip, zstd, xz) or - for a tar on stdin. With a tar,
    /// owners, modes, times and xattrs come from its headers; a directory gives the host's.
    #[arg(long, value_name = "SRC")]
    pub from: String,
    /// The image to write (written under a temporary name, renamed when complete).
    #[arg(short = 'o', long = "output", value_name = "OUT")]
    pub output: PathBuf,
    /// Output format (by default from OUT's extension, else raw).
    #[arg(short = 'O', value_name = "FMT")]
    pub out_format: Option<String>,
    /// Filesystem size, with K/M/G/T suffixes (by default the content plus --extra-space).
    #[arg(long, value_name = "SIZE", conflicts_with = "extra_space")]
    pub size: Option<String>,
    /// Free space added when sizing from the content, in percent (default 20%).
    #[arg(long, value_name = "PERCENT")]
    pub extra_space: Option<String>,
    /// Volume label (at most 16 bytes).
    #[arg(long, value_name = "LABEL")]
    pub label: Option<String>,
    /// Filesystem UUID (by default derived from the content and --seed).
    #[arg(long, value_name = "UUID")]
    pub uuid: Option<String>,
    /// Number of inodes (by default derived from the size and the content).
    #[arg(long, value_name = "N")]
    pub inodes: Option<u64>,
    /// Block size in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 4096, value_parser = clap::builder::PossibleValuesParser::new(["1024", "2048", "4096"]).map(|s| s.parse::<u32>().unwrap_or(4096)))]
    pub block_size: u32,
    /// Mixed into the derived UUID and hash seed, so that otherwise identical images differ.
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Show a progress bar (on a terminal).
    #[arg(short = 'p')]
    pub progress: bool,
}

/// `stamp mkfs fat`.
#[derive(Debug, Args)]
pub struct MkfsFatArgs {
    /// The content: a directory, a tar (plain, gzip, zstd, xz) or - for a tar on stdin.
    #[arg(long, value_name = "SRC")]
    pub from: String,
    /// The image to write (written under a temporary name, renamed when complete).
    #[arg(short = 'o', long = "output", value_name = "OUT")]
    pub output: PathBuf,
    /// Output format (by default from OUT's extension, else raw).
    #[arg(short = 'O', value_name = "FMT")]
    pub out_format: Option<String>,
    /// Filesystem size, with K/M/G/T suffixes (by default the content plus headroom).
    #[arg(long, value_name = "SIZE")]
    pub size: Option<String>,
    /// Volume label (up to 11 characters).
    #[arg(long, value_name = "LABEL")]
    pub label: Option<String>,
    /// Show a progress bar (on a terminal).
    #[arg(short = 'p')]
    pub progress: bool,
}

/// `stamp mkdisk`.
#[derive(Debug, Args)]
pub struct MkdiskArgs {
    /// The disk image to write (written under a temporary name, renamed when complete).
    #[arg(short = 'o', long = "output", value_name = "OUT")]
    pub output: PathBuf,
    /// Output format (by default from OUT's extension, else raw).
    #[arg(short = 'O', value_name = "FMT")]
    pub out_format: Option<String>,
    /// A partition, in order: TYPE:SIZE[:SRC]. TYPE is esp (FAT from SRC), root, usr (for this
    /// build's architecture; or root-x86-64, root-arm64, usr-x86-64, usr-arm64), linux (ext4 from
    /// SRC), swap or bios (zeroed, no SRC). SIZE has K/M/G/T suffixes or is `auto` (fit SRC).
    #[arg(long = "part", value_name = "TYPE:SIZE[:SRC]", required = true)]
    pub parts: Vec<String>,
    /// Disk size, with K/M/G/T suffixes (by default the partitions plus the backup table).
    #[arg(long, value_name = "SIZE")]
    pub size: Option<String>,
    /// Mixed into every derived GUID and filesystem UUID.
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Show a progress bar (on a terminal).
    #[arg(short = 'p')]
    pub progress: bool,
}
