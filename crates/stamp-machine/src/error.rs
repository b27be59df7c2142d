//! Errors of the machine runtime.

use std::path::PathBuf;

/// What went wrong, with the machine, file or process it concerns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or socket operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// No machine has this name.
    #[error("no machine named {0} (`stamp ps -a` lists them)")]
    NotFound(String),
    /// A machine of this name exists already.
    #[error(
        "the name {0} is already in use by a machine (`stamp rm {0}` removes it, or choose another --name)"
    )]
    NameInUse(String),
    /// The user asked for something invalid (a bad port spec, a bad name, too much memory...).
    #[error("{0}")]
    Invalid(String),
    /// The operation does not apply to the machine in its current state.
    #[error("machine {name} is {state}: {hint}")]
    State {
        name: String,
        state: crate::State,
        hint: String,
    },
    /// A program the driver needs is missing or failed.
    #[error("{0}")]
    Driver(String),
    /// A machine's stored spec or status cannot be read.
    #[error("{}: {message}", path.display())]
    Corrupt { path: PathBuf, message: String },
    /// The disk image could not be prepared.
    #[error(transparent)]
    Disk(#[from] stamp_disk::Error),
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            what,
            path: path.into(),
            source,
        }
    }
}

/// The runtime's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
