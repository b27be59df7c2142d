//! Errors of the app launchers.

use std::path::PathBuf;

/// What went wrong, naming the flake file, the key or the program concerned.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A flake file is not valid YAML or not a valid registration.
    #[error("{}: {message}", path.display())]
    Config { path: PathBuf, message: String },
    /// No flake has this name.
    #[error("no app named {0} is registered (`stamp app list` lists them)")]
    NotFound(String),
    /// The registration is refused.
    #[error("{0}")]
    Invalid(String),
    /// The engine cannot run the app.
    #[error("{0}")]
    Engine(String),
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

/// The launchers' result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
