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
    /// Convert a disk image to another format (raw, qcow2, vmdk, vhd, vhdx, vdi, ova, gce).
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
    /// Pull an image into the store from a registry or an archive.
    Pull(PullArgs),
    /// Push an image (or a disk image as a containerDisk or stamp artifact) to a registry.
    Push(PushArgs),
    /// List the images in the store.
    Images(ImagesArgs),
    /// Show an image's manifest, config and layers.
    Inspect(InspectArgs),
    /// Give an image in the store another name.
    Tag(TagArgs),
    /// Remove names from the store.
    Rmi(RmiArgs),
    /// Remove blobs no name refers to.
    Gc(GcArgs),
    /// Verify every blob of the store against its digest and every reference between them.
    Fsck(FsckArgs),
    /// Import an archive, a root filesystem tar or a disk image into the store.
    Import(ImportArgs),
    /// Export an image from the store as an OCI archive (or a disk artifact as its disk).
    Export(ExportArgs),
    /// Build a bootable disk (every format at once) from a container image or a Dockerfile.
    Build(BuildArgs),
    /// List, show and cancel VM import/export tasks of `stamp serve` (or AWS).
    Tasks(TasksArgs),
    /// Serve the EC2 VM Import/Export API (ImportImage, ImportSnapshot, ExportImage, ...).
    Serve(ServeArgs),
    /// Run an image as a machine (qemu, firecracker) or a container (podman).
    Run(RunArgs),
    /// List machines (running ones; -a for all).
    Ps(PsArgs),
    /// Start machines (in the background; --foreground runs one in this process).
    Start(StartArgs),
    /// Stop machines gracefully (ACPI power button, then kill after -t seconds).
    Stop(StopArgs),
    /// Freeze running machines.
    Pause(MachinesArgs),
    /// Thaw paused machines.
    Unpause(MachinesArgs),
    /// Stop and start machines again.
    Restart(StopArgs),
    /// Remove machines (-f: running ones too).
    Rm(RmArgs),
    /// Print a machine's console (or container output); -f follows it.
    Logs(LogsArgs),
    /// Register host commands that run inside a container (flake-pilot compatible).
    #[command(subcommand)]
    App(AppCommand),
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

/// Where the image store is, for the verbs that use it.
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// The image store (default $STAMP_STORE, else $XDG_DATA_HOME/stamp/store).
    #[arg(long, value_name = "DIR")]
    pub store: Option<PathBuf>,
}

/// How to reach registries: TLS, certificates and credentials, as podman's flags.
#[derive(Debug, Args)]
pub struct RegistryArgs {
    /// Require HTTPS and verify certificates (`--tls-verify=false` allows http and self-signed).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub tls_verify: bool,
    /// A directory of `*.crt` CA certificates to trust for the registry.
    #[arg(long, value_name = "DIR")]
    pub cert_dir: Option<PathBuf>,
    /// Credentials as USER:PASSWORD (default: auth.json of podman or ~/.docker/config.json).
    #[arg(long, value_name = "USER:PASS")]
    pub creds: Option<String>,
    /// The auth file to read credentials from (default $REGISTRY_AUTH_FILE, podman's, docker's).
    #[arg(long, value_name = "FILE")]
    pub authfile: Option<PathBuf>,
}

/// `stamp pull`.
#[derive(Debug, Args)]
pub struct PullArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// The platform to pick from a multi-platform image (default: this machine's, linux/amd64 or linux/arm64).
    #[arg(long, value_name = "OS/ARCH")]
    pub platform: Option<String>,
    /// For a disk artifact: also write the reassembled, verified disk to this file. For aws://
    /// (required): the disk file to write.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Print only the manifest digest (for aws://, only the written file).
    #[arg(short = 'q', long)]
    pub quiet: bool,
    // aws:// references: `stamp pull aws://[REGION/]ami-…|snap-… -o OUT.FMT`.
    #[command(flatten)]
    pub aws: AwsArgs,
    /// For aws://: the format of -o (raw, qcow2, vmdk, vhd, vhdx, vdi, ...; by default from
    /// its extension, else raw).
    #[arg(short = 'O', value_name = "FMT")]
    pub out_format: Option<String>,
    /// For aws://: blocks fetched in parallel.
    #[arg(long, value_name = "N", default_value_t = stamp_aws::ebs::DEFAULT_JOBS)]
    pub jobs: usize,
    /// For aws://: print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// A registry reference (`host/repo:tag`, `repo@sha256:...`), or oci:DIR[:TAG],
    /// oci-archive:FILE, docker-archive:FILE, rootfs:FILE.tar[.gz|.zst|.xz], dir:PATH; or an
    /// EBS snapshot or AMI as aws://[REGION/]snap-…|ami-… (written to -o, not the store).
    pub reference: String,
}

/// What `stamp push` sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PushAs {
    /// The image as it is in the store.
    Image,
    /// A disk image as a KubeVirt containerDisk (the disk under /disk/, owned by 107:107).
    Containerdisk,
    /// A disk image as a stamp disk artifact (content-defined chunks; only changed chunks upload).
    Artifact,
}

/// `stamp push`.
#[derive(Debug, Args)]
pub struct PushArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// What to push: the image as stored, or a disk image as a containerDisk or a stamp artifact.
    #[arg(long = "as", value_enum, default_value = "image")]
    pub push_as: PushAs,
    /// Print only the pushed manifest digest.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    #[command(flatten)]
    pub aws: AwsArgs,
    #[command(flatten)]
    pub ami: AmiArgs,
    /// The image in the store; for aws:// also a disk file in any format stamp reads.
    pub local: String,
    /// The registry reference to push to (default: the local name), or aws://[REGION/]NAME to
    /// publish the disk as an AMI.
    pub remote: Option<String>,
}

/// `stamp push IMAGE aws://[REGION/]NAME`: what the AMI says and how to upload it.
#[derive(Debug, Args)]
#[command(next_help_heading = "AMI (aws://[REGION/]NAME)")]
pub struct AmiArgs {
    /// The architecture (default: the store image's, else x86_64).
    #[arg(long, value_name = "ARCH", value_parser = ["x86_64", "arm64"])]
    pub arch: Option<String>,
    /// The boot mode (default: the store image's, else what the disk's partition table says).
    #[arg(long, value_name = "MODE", value_parser = ["uefi", "legacy-bios", "uefi-preferred"])]
    pub boot_mode: Option<String>,
    /// Enhanced networking with ENA.
    #[arg(long)]
    pub ena: bool,
    /// Enhanced networking with the Intel 82599 VF (sriovNetSupport=simple).
    #[arg(long)]
    pub sriov: bool,
    /// NitroTPM 2.0 (needs --boot-mode uefi).
    #[arg(long)]
    pub tpm: bool,
    /// Instances launched from the AMI must use IMDSv2.
    #[arg(long)]
    pub imds_v2: bool,
    /// The root volume's type.
    #[arg(long, value_name = "TYPE", default_value = "gp3")]
    pub volume_type: String,
    /// The root volume's size in GiB (default: the disk's size rounded up).
    #[arg(long, value_name = "GiB")]
    pub volume_size: Option<u64>,
    /// The AMI's description.
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
    /// A tag on the AMI and its snapshot (repeatable).
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    pub tags: Vec<String>,
    /// Let everyone launch the AMI.
    #[arg(long, conflicts_with = "grants")]
    pub public: bool,
    /// Let this account launch the AMI (repeatable).
    #[arg(long = "grant", value_name = "ACCOUNT")]
    pub grants: Vec<String>,
    /// Copy the AMI to this region too, waiting until it is available (repeatable).
    #[arg(long = "copy-to", value_name = "REGION")]
    pub copy_to: Vec<String>,
    /// Upload through S3 and ImportSnapshot (where EBS direct APIs are not allowed).
    #[arg(long, value_name = "s3://BUCKET/PREFIX")]
    pub via: Option<String>,
    /// If an AMI of this name exists, return it instead of failing.
    #[arg(long)]
    pub reuse: bool,
    /// Blocks in flight.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub jobs: usize,
    /// Show a progress bar (on a terminal).
    #[arg(short = 'p')]
    pub progress: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `stamp images`.
#[derive(Debug, Args)]
pub struct ImagesArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub aws: AwsArgs,
    /// List a cloud's images instead of the store's: `aws` or `aws://REGION` (the caller's AMIs).
    #[arg(long, value_name = "LOCATION")]
    pub remote: Option<String>,
    /// With --remote: list the last listing saved in the cache, without any network.
    #[arg(long, requires = "remote")]
    pub offline: bool,
    /// Print a JSON array.
    #[arg(long)]
    pub json: bool,
}

/// How to reach AWS, as the AWS CLI's flags (else AWS_PROFILE, AWS_REGION, AWS_ENDPOINT_URL and
/// ~/.aws/config and credentials).
#[derive(Debug, Args)]
pub struct AwsArgs {
    /// The profile of ~/.aws/config and ~/.aws/credentials.
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,
    /// The region (unless the aws://REGION location names one).
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,
    /// Send every AWS request to this endpoint (an S3/EC2-compatible cloud, or a test server).
    #[arg(long, value_name = "URL")]
    pub endpoint_url: Option<String>,
    /// The access key id (prefer AWS_ACCESS_KEY_ID or a profile: arguments are visible in ps).
    #[arg(long, value_name = "ID", requires = "secret_key")]
    pub access_key: Option<String>,
    /// The secret access key (prefer AWS_SECRET_ACCESS_KEY or a profile).
    #[arg(long, value_name = "SECRET", requires = "access_key")]
    pub secret_key: Option<String>,
    /// The session token of temporary credentials.
    #[arg(long, value_name = "TOKEN", requires = "access_key")]
    pub session_token: Option<String>,
}

/// `stamp inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Print one JSON object (manifest, config, layers; a machine's spec and status).
    #[arg(long)]
    pub json: bool,
    /// What NAME is: a machine or an image (by default a machine if one has that name).
    #[arg(long = "type", value_name = "machine|image")]
    pub kind: Option<String>,
    /// The platform to show of a multi-platform image.
    #[arg(long, value_name = "OS/ARCH")]
    pub platform: Option<String>,
    /// A name or digest in the store.
    pub reference: String,
}

/// `stamp tag`.
#[derive(Debug, Args)]
pub struct TagArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// An image in the store (name or digest).
    pub source: String,
    /// The new name.
    pub target: String,
}

/// `stamp rmi`.
#[derive(Debug, Args)]
pub struct RmiArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub aws: AwsArgs,
    /// Remove every name of an image given by digest.
    #[arg(short = 'f', long)]
    pub force: bool,
    // aws:// clean-up: `stamp rmi --incomplete aws://REGION`.
    /// With aws://REGION: remove the caller's AMIs and snapshots tagged stamp:incomplete=true
    /// (what an interrupted `stamp push` leaves).
    #[arg(long)]
    pub incomplete: bool,
    /// Print what was removed from AWS as JSON.
    #[arg(long)]
    pub json: bool,
    /// Names (or digests) to remove, or AMIs as aws://[REGION/]ami-… (deregistered, their
    /// snapshots deleted). Blobs are freed by `stamp gc`.
    #[arg(required = true)]
    pub references: Vec<String>,
}

/// `stamp gc`.
#[derive(Debug, Args)]
pub struct GcArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Only say what would be removed.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `stamp fsck`.
#[derive(Debug, Args)]
pub struct FsckArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `stamp import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The name to give the image (default: the name the archive carries, else the file name).
    #[arg(long, value_name = "REF")]
    pub name: Option<String>,
    /// An OCI archive, Docker archive, OCI layout directory, root filesystem tar, or a disk image
    /// (raw, qcow2, vmdk, vhd, vhdx, vdi), which is stored as a stamp disk artifact.
    pub source: PathBuf,
}

/// `stamp export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The file to write: an OCI archive (for a disk artifact with --disk: the disk itself).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: PathBuf,
    /// Write a disk artifact's disk file instead of an OCI archive.
    #[arg(long)]
    pub disk: bool,
    /// A name or digest in the store.
    pub reference: String,
}

/// How the built disk boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BootArg {
    /// UEFI: a Unified Kernel Image, systemd-boot or GRUB EFI on the ESP.
    Uefi,
    /// Legacy BIOS (not supported yet).
    Bios,
    /// Both UEFI and legacy BIOS (not supported yet).
    Hybrid,
}

/// The boot method to force instead of the first the image supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LoaderArg {
    /// A Unified Kernel Image from the image's systemd-stub.
    Uki,
    /// systemd-boot with a loader entry.
    SystemdBoot,
    /// GRUB EFI with a generated grub.cfg.
    Grub,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// The recipe (stamp.toml): users, files, units, disk size, kernel command line, first boot.
    #[arg(short = 'f', long = "file", value_name = "RECIPE")]
    pub recipe: Option<PathBuf>,
    /// An output disk; the format follows the extension (.raw .img .qcow2 .vmdk .vhd .vhdx .vdi
    /// .ova .tar.gz for gce) unless -O says. Repeat for several outputs written in one pass.
    #[arg(short = 'o', long = "output", value_name = "FILE", required = true)]
    pub outputs: Vec<PathBuf>,
    /// Output format for the -o of the same position (raw, qcow2, vmdk, vhd, vhdx, vdi, ova, gce).
    #[arg(short = 'O', long = "format", value_name = "FMT")]
    pub formats: Vec<String>,
    /// Disk size, with K/M/G/T suffixes (by default the content plus the recipe's extra space).
    #[arg(long, value_name = "SIZE")]
    pub size: Option<String>,
    /// Firmware to boot with.
    #[arg(long, value_enum, default_value = "uefi")]
    pub boot: BootArg,
    /// Force the boot loader instead of the first the image supports (uki, systemd-boot, grub).
    #[arg(long, value_enum)]
    pub loader: Option<LoaderArg>,
    /// Take the kernel, initrd and modules from this image (for application images, which then
    /// boot stamp's init and run their entrypoint).
    #[arg(long, value_name = "REF")]
    pub kernel: Option<String>,
    /// Extra kernel command-line arguments (after the recipe's).
    #[arg(long, value_name = "ARGS")]
    pub cmdline: Vec<String>,
    /// Also record the disk in the store under this name (for `stamp push`, `stamp run`).
    #[arg(long, value_name = "NAME")]
    pub tag: Option<String>,
    /// The platform to pick from a multi-platform image.
    #[arg(long, value_name = "OS/ARCH")]
    pub platform: Option<String>,
    /// Build the image from this Dockerfile with podman (or buildah) first.
    #[arg(long, value_name = "PATH")]
    pub dockerfile: Option<PathBuf>,
    /// The build context for --dockerfile (default: the Dockerfile's directory).
    #[arg(long, value_name = "DIR", requires = "dockerfile")]
    pub context: Option<PathBuf>,
    /// Build again even when the store has this build's outputs.
    #[arg(long)]
    pub no_cache: bool,
    /// Show a progress bar (on a terminal).
    #[arg(short = 'p', long)]
    pub progress: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// The image to build from: a name in the store, a registry reference, or oci:DIR[:TAG],
    /// oci-archive:FILE, docker-archive:FILE, rootfs:FILE.tar[.gz|.zst|.xz], dir:PATH.
    #[arg(required_unless_present = "dockerfile", conflicts_with = "dockerfile")]
    pub source: Option<String>,
}

/// `stamp tasks`.
#[derive(Debug, Args)]
pub struct TasksArgs {
    #[command(flatten)]
    pub aws: AwsArgs,
    #[command(subcommand)]
    pub command: TasksCommand,
}

/// What `stamp tasks` does.
#[derive(Debug, clap::Subcommand)]
pub enum TasksCommand {
    /// Every import and export task: id, kind, status, progress, message.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// One task, whole (as the Describe call answers).
    Show {
        /// The task id (import-ami-…, import-snap-…, import-vol-…, import-i-…, export-ami-…, export-i-…).
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a task.
    Cancel {
        /// The task id.
        id: String,
        /// Why (kept as the task's status message).
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
}

/// `stamp serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A TOML file with any of the options below, by their long names (`scratch-quota = "8G"`); flags win.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<String>,
    /// The task store: sqlite:PATH (default $XDG_STATE_HOME/stamp/serve.db) or postgres://…
    #[arg(long, value_name = "URL")]
    pub db: Option<String>,
    /// Objects: a directory (UserBucket {B, K} is DIR/B/K; default $XDG_DATA_HOME/stamp/objects)
    /// or s3://BUCKET/PREFIX (an S3-compatible store; --endpoint-url and the AWS_* variables
    /// say how to reach it).
    #[arg(long, value_name = "DIR|s3://BUCKET/PREFIX")]
    pub objects: Option<String>,
    /// The access keys: one `ACCESS_KEY_ID SECRET TENANT` per line.
    #[arg(long, value_name = "FILE")]
    pub credentials: Option<PathBuf>,
    /// Concurrent conversions in this process.
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// CPU threads one conversion uses for (de)compression (default: all cores).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Scratch directory (downloads, conversions on their way to S3).
    #[arg(long, value_name = "DIR")]
    pub scratch: Option<PathBuf>,
    /// Most scratch space the tasks of this process use at once (tasks wait for room).
    #[arg(long, value_name = "SIZE")]
    pub scratch_quota: Option<String>,
    /// Seconds a claimed task stays with this process without a heartbeat.
    #[arg(long, value_name = "SECS")]
    pub lease: Option<u64>,
    /// Most bytes per second one conversion reads (`200M`), to leave the storage to others;
    /// no limit by default.
    #[arg(long, value_name = "SIZE")]
    pub convert_rate: Option<String>,
    /// Days finished tasks are kept (AWS: 7).
    #[arg(long, value_name = "DAYS")]
    pub retention_days: Option<u64>,
    /// Let URL sources and manifest parts name private or loopback addresses.
    #[arg(long)]
    pub allow_private_urls: bool,
    /// API requests per second each tenant may make (bursts of twice that); beyond it,
    /// RequestLimitExceeded. 0: no limit.
    #[arg(long, value_name = "N")]
    pub rate_limit: Option<f64>,
    #[command(flatten)]
    pub store: StoreArgs,
    /// TLS certificate (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    #[command(flatten)]
    pub aws: AwsArgs,
}

/// `stamp run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Run in the background and print the machine's name.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// The machine's name (default: derived from the image, made unique).
    #[arg(long)]
    pub name: Option<String>,
    /// Remove the machine when it stops.
    #[arg(long)]
    pub rm: bool,
    /// Forward a host port to the guest: [IP:]HOST:GUEST[/tcp|/udp].
    #[arg(short = 'p', long = "publish", value_name = "PORTS")]
    pub ports: Vec<String>,
    /// Virtual CPUs.
    #[arg(long, default_value_t = 1)]
    pub cpus: u32,
    /// Memory (1G, 512M, ...).
    #[arg(long, default_value = "1G")]
    pub memory: String,
    /// qemu (default for disks), firecracker, or podman (default for container images).
    #[arg(long)]
    pub platform: Option<String>,
    /// Grow the machine's disk to this size (the image is not changed).
    #[arg(long, value_name = "SIZE")]
    pub disk_size: Option<String>,
    /// An environment variable for the container: KEY=VALUE.
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Run the machine as a systemd service (stamp-NAME.service).
    #[arg(long)]
    pub systemd: bool,
    /// With --systemd: a user unit (systemctl --user).
    #[arg(long, requires = "systemd")]
    pub user: bool,
    /// With --systemd: Restart= always, on-failure or no.
    #[arg(long, requires = "systemd", default_value = "on-failure")]
    pub restart: String,
    /// With --systemd: start the machine at boot.
    #[arg(long, requires = "systemd")]
    pub enable: bool,
    /// A disk file, a disk image in the store, or a container image.
    pub image: String,
    /// The command (containers).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub cmd: Vec<String>,
}

/// `stamp ps`.
#[derive(Debug, Args)]
pub struct PsArgs {
    /// All machines, not only running and paused ones.
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Print a JSON array.
    #[arg(long)]
    pub json: bool,
    /// Show the systemd unit state of machines run with --systemd.
    #[arg(long)]
    pub systemd: bool,
}

/// Machine names.
#[derive(Debug, Args)]
pub struct MachinesArgs {
    /// The machines.
    #[arg(required = true)]
    pub names: Vec<String>,
}

/// `stamp start`.
#[derive(Debug, Args)]
pub struct StartArgs {
    /// Run the machine in this process until it ends (what systemd's ExecStart runs).
    #[arg(long)]
    pub foreground: bool,
    /// Start its own session (the background monitor `stamp start` and `run -d` spawn).
    #[arg(long, hide = true, requires = "foreground")]
    pub detach: bool,
    /// Act through systemd (systemctl start stamp-NAME.service).
    #[arg(long)]
    pub systemd: bool,
    /// The machines.
    #[arg(required = true)]
    pub names: Vec<String>,
}

/// `stamp stop` and `stamp restart`.
#[derive(Debug, Args)]
pub struct StopArgs {
    /// Seconds to wait for a graceful stop before killing the machine.
    #[arg(short = 't', long = "time", default_value_t = 10)]
    pub timeout: u64,
    /// Act through systemd (systemctl stop|restart stamp-NAME.service).
    #[arg(long)]
    pub systemd: bool,
    /// The machines.
    #[arg(required = true)]
    pub names: Vec<String>,
}

/// `stamp rm`.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// Remove running machines too (they are killed).
    #[arg(short = 'f', long)]
    pub force: bool,
    /// Also stop, disable and remove the systemd unit.
    #[arg(long)]
    pub systemd: bool,
    /// The machines.
    #[arg(required = true)]
    pub names: Vec<String>,
}

/// `stamp logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Keep printing what the machine writes until it stops.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only output since this time (RFC 3339, e.g. 2026-01-01T10:00:00Z).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// The machine.
    pub name: String,
}

/// `stamp app`.
#[derive(Debug, Subcommand)]
pub enum AppCommand {
    /// Register a host command that runs in a container: --app /usr/bin/NAME --image REF.
    Register(Box<AppRegisterArgs>),
    /// List the registered apps.
    List(AppListArgs),
    /// Show an app's registration.
    Show(AppNameArgs),
    /// Remove an app (its registration and its host command).
    Remove(AppNameArgs),
}

/// `stamp app register`.
#[derive(Debug, Args)]
pub struct AppRegisterArgs {
    /// The command on the host (absolute path); its file name is the app's name.
    #[arg(long)]
    pub app: std::path::PathBuf,
    /// The image the app runs in (a name podman knows).
    #[arg(long)]
    pub image: String,
    /// The program inside the image (default: the --app path; `/` says the same).
    #[arg(long)]
    pub target: Option<String>,
    /// podman (a container) or vm (a microVM).
    #[arg(long, default_value = "podman")]
    pub engine: String,
    /// A base image the app image is a delta on.
    #[arg(long)]
    pub base: Option<String>,
    /// A layer on top of the base (repeatable).
    #[arg(long = "layer", value_name = "REF")]
    pub layers: Vec<String>,
    /// A tar unpacked over the app's root (repeatable).
    #[arg(long = "include-tar", value_name = "FILE")]
    pub include_tar: Vec<String>,
    /// A host file or directory brought in at the same path (repeatable).
    #[arg(long = "include-path", value_name = "PATH")]
    pub include_path: Vec<String>,
    /// Keep the instance running and run each call inside it.
    #[arg(long, conflicts_with = "attach")]
    pub resume: bool,
    /// Attach to the running instance instead of running the app again.
    #[arg(long)]
    pub attach: bool,
    /// The user the app runs as inside.
    #[arg(long, value_name = "USER")]
    pub run_as: Option<String>,
    /// An option for podman, with its value: --opt '--memory 1g' (repeatable).
    #[arg(long = "opt", value_name = "OPTION", allow_hyphen_values = true)]
    pub opts: Vec<String>,
    /// The instance's writable overlay size (vm).
    #[arg(long, value_name = "SIZE")]
    pub overlay_size: Option<String>,
    /// The image whose kernel, initrd and modules boot the app (vm).
    #[arg(long, value_name = "REF")]
    pub kernel: Option<String>,
    /// Memory (vm).
    #[arg(long)]
    pub memory: Option<String>,
    /// CPUs (vm).
    #[arg(long)]
    pub cpus: Option<u32>,
    /// No network inside.
    #[arg(long)]
    pub no_net: bool,
    /// The channel to the guest agent (vm): serial (virtio-serial) or vsock (through
    /// vhost-device-vsock, as Firecracker's hybrid vsock).
    #[arg(long, value_name = "KIND", value_parser = ["serial", "vsock"])]
    pub transport: Option<String>,
    /// Register for this user ($XDG_DATA_HOME/flakes) rather than system-wide (/usr/share/flakes).
    #[arg(long)]
    pub user: bool,
    /// Replace an existing registration of the same name.
    #[arg(long)]
    pub force: bool,
}

/// `stamp app list`.
#[derive(Debug, Args)]
pub struct AppListArgs {
    /// Print a JSON array.
    #[arg(long)]
    pub json: bool,
}

/// `stamp app show` and `remove`.
#[derive(Debug, Args)]
pub struct AppNameArgs {
    /// The app's name.
    pub name: String,
    /// Print JSON (show).
    #[arg(long)]
    pub json: bool,
    /// Keep the images composed for the app and its vm disks (remove).
    #[arg(long)]
    pub keep_image: bool,
}
