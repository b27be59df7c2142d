//! The crate's error type.

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong talking to AWS.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No credentials were found; says where stamp looked.
    #[error("no AWS credentials: {0}")]
    NoCredentials(String),
    /// A configuration file or value is invalid.
    #[error("{0}")]
    Config(String),
    /// An AWS API returned an error.
    #[error("{service} {action}: {code}: {message}")]
    Api {
        /// The service (ec2, ebs, s3).
        service: &'static str,
        /// The action or operation.
        action: String,
        /// AWS's error code (`InvalidParameterValue`, ...).
        code: String,
        /// AWS's message.
        message: String,
    },
    /// A response could not be parsed.
    #[error("{service} {action}: malformed response: {detail}")]
    Malformed {
        /// The service.
        service: &'static str,
        /// The action.
        action: String,
        /// What is wrong.
        detail: String,
    },
    /// A transport error (connection, TLS, timeout) after retries.
    #[error("{0}")]
    Transport(String),
    /// The user interrupted.
    #[error("interrupted")]
    Interrupted,
    /// An upload or download failed (or was interrupted) after creating something in AWS;
    /// `cleanup` says what stamp removed (or could not remove).
    #[error("{cause}; {cleanup}")]
    Aborted {
        /// What went wrong.
        cause: Box<Error>,
        /// What was cleaned up, e.g. "deleted snapshot snap-0123".
        cleanup: String,
    },
    /// From the disk layer.
    #[error(transparent)]
    Disk(#[from] stamp_disk::Error),
}

impl Error {
    /// True if the user interrupted (also when clean-up followed).
    pub fn is_interrupted(&self) -> bool {
        match self {
            Error::Interrupted => true,
            Error::Aborted { cause, .. } => cause.is_interrupted(),
            _ => false,
        }
    }
}
