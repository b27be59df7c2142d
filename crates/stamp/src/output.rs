//! How the CLI talks: logs to stderr, errors in the `error:` / `Caused by:` / `hint:` form, and
//! exit codes.

use stamp_disk::Error as DiskError;
use stamp_oci::Error as OciError;

/// Exit code for an interrupted run (128 + SIGINT, as shells report it).
pub const EXIT_INTERRUPTED: u8 = 130;

/// Starts tracing to stderr at a level set by `-v` (or `RUST_LOG`). A long-running service
/// (`service`) logs from `info` up, with timestamps.
pub fn init_logging(verbose: u8, service: bool) {
    let level = match verbose + u8::from(service) {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let log = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    if service {
        log.init();
    } else {
        log.without_time().init();
    }
}

/// Prints `err` and its causes to stderr, with a hint where there is something to do about it.
pub fn print_error(err: &anyhow::Error) {
    eprintln!("error: {err}");
    let mut last = err.to_string();
    for cause in err.chain().skip(1) {
        let text = cause.to_string();
        // Library errors often end with their source's text already; do not say it twice.
        if !last.ends_with(&text) {
            eprintln!("  Caused by: {text}");
        }
        last = text;
    }
    if let Some(hint) = hint_for(err) {
        eprintln!("\nhint: {hint}");
    }
}

/// The exit code for an error that ended a command whose error code is `error_code`.
pub fn exit_code_for(err: &anyhow::Error, error_code: u8) -> u8 {
    let interrupted = err.chain().any(|e| {
        matches!(e.downcast_ref::<DiskError>(), Some(DiskError::Interrupted))
            || matches!(e.downcast_ref::<OciError>(), Some(OciError::Interrupted))
            || e.downcast_ref::<stamp_build::Error>()
                .is_some_and(stamp_build::Error::is_interrupted)
            || e.downcast_ref::<stamp_aws::Error>()
                .is_some_and(stamp_aws::Error::is_interrupted)
    });
    if interrupted {
        EXIT_INTERRUPTED
    } else {
        error_code
    }
}

/// What the user can do about `err`, if anything useful can be said.
fn hint_for(err: &anyhow::Error) -> Option<String> {
    if let Some(oci) = err.chain().find_map(|e| e.downcast_ref::<OciError>()) {
        return oci_hint(oci);
    }
    if let Some(aws) = err
        .chain()
        .find_map(|e| e.downcast_ref::<stamp_aws::Error>())
    {
        return aws_hint(aws);
    }
    let disk = err.chain().find_map(|e| e.downcast_ref::<DiskError>())?;
    Some(match disk {
        DiskError::Missing { what, missing, .. } => format!(
            "the {what} must be at {} (relative names are taken from the image's directory); copy it there, or convert the image where its {what} is",
            missing.display()
        ),
        DiskError::Corrupt { .. } => {
            "the image is damaged or was cut short (an interrupted download or copy?); get a fresh copy, or run `stamp check` on it for details".into()
        }
        DiskError::Unsupported { feature, .. } if feature.contains("encrypt") => {
            "decrypt it first with `qemu-img convert --object secret,... --image-opts` and convert the plain image".into()
        }
        DiskError::InvalidOption(_) => "see `stamp help convert` for the formats and their options".into(),
        DiskError::Interrupted => "nothing was written; run the command again to finish it".into(),
        _ => return None,
    })
}

/// What the user can do about a store or registry error.
fn oci_hint(err: &OciError) -> Option<String> {
    Some(match err {
        OciError::Tampered { .. } => "the store's copy was modified after it was written; `stamp fsck` lists every damaged blob, then `stamp rmi` the image and pull or import it again".into(),
        OciError::Auth { .. } => "pass --creds USER:PASSWORD, or log in with `podman login` (stamp reads its auth.json and ~/.docker/config.json)".into(),
        OciError::Registry { detail, .. } if detail.contains("certificate") || detail.contains("tls") || detail.contains("TLS") => {
            "for a registry with a self-signed certificate pass --cert-dir DIR (its CA as DIR/*.crt), or --tls-verify=false".into()
        }
        OciError::NotFound(_) => "`stamp images` lists what is in the store; check the name and tag".into(),
        OciError::Interrupted => "what was complete is kept; run the command again to finish it".into(),
        _ => return None,
    })
}

/// What the user can do about an AWS error.
fn aws_hint(err: &stamp_aws::Error) -> Option<String> {
    use stamp_aws::Error as E;
    Some(match err {
        E::NoCredentials(_) => "`--profile NAME` picks another profile of ~/.aws/credentials and ~/.aws/config".into(),
        E::Aborted { cause, .. } => return aws_hint(cause),
        E::Interrupted => "what this run created was removed; run the command again".into(),
        E::Api { code, .. } if code.contains("AuthFailure") || code.contains("SignatureDoesNotMatch") || code.contains("UnrecognizedClient") || code.contains("InvalidClientTokenId") => {
            "check the access key and secret (AWS_PROFILE, --profile, ~/.aws/credentials) and the region".into()
        }
        E::Api { code, .. } if code.contains("AccessDenied") || code.contains("UnauthorizedOperation") => {
            "the credentials lack a permission: stamp push needs ebs:StartSnapshot, ebs:PutSnapshotBlock, ebs:CompleteSnapshot, ec2:RegisterImage, ec2:DescribeImages, ec2:DescribeSnapshots, ec2:CreateTags, ec2:DeleteTags, ec2:DeleteSnapshot (and ec2:ModifyImageAttribute, ec2:CopyImage for --public/--grant/--copy-to)".into()
        }
        _ => return None,
    })
}
