//! stamp's app launchers: host commands that run inside a container (or a microVM), registered
//! in flake-pilot's format.
//!
//! - [`config`]: the flake files (`NAME.yaml`, `NAME.d/*.yaml`) and the resolved [`Flake`].
//! - [`registry`]: registering, listing and removing apps.
//! - [`launch`]: the launcher, reached through the app's symlink to the stamp binary.

pub mod config;
mod error;
pub mod launch;
pub mod provision;
pub mod registry;
pub mod vm;
pub mod wire;

pub use config::{Engine, Flake, FlakeFile};
pub use error::{Error, Result};
pub use registry::Registry;
