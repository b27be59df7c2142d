//! The parent of a differencing VHD: the names recorded for it (parent locators and the header's
//! parent name), turned into local paths to try, and the parent opened on first use so that
//! `info` works on a differencing disk whose parent is not there.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use super::header::{decode_utf16be, decode_utf16le};
use crate::{DiskReader, Error, Result};

/// Longest parent locator stamp reads: a Windows path is at most 32767 UTF-16 units.
pub const MAX_LOCATOR_LEN: u32 = 64 * 1024;

/// One name recorded for the parent: where it came from and the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentName {
    /// `W2ru`, `W2ku`, `MacX` or `name` (the header's parent unicode name).
    pub source: String,
    /// The name as recorded.
    pub text: String,
}

/// Decodes locator `data` for `platform`; `None` for platforms whose data is not a path
/// (`Mac ` aliases, deprecated `Wi2r`/`Wi2k` entries).
pub fn decode_locator(platform: &[u8; 4], data: &[u8]) -> Option<String> {
    let s = match platform {
        b"W2ku" | b"W2ru" => decode_utf16le(data),
        b"MacX" => String::from_utf8_lossy(data)
            .trim_end_matches('\0')
            .to_string(),
        _ => return None,
    };
    let s = s.trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// Decodes the header's parent unicode name (UTF-16BE).
pub fn decode_header_name(raw: &[u8]) -> String {
    decode_utf16be(raw)
}

/// Local names to try for a recorded parent name, most specific first: a relative Windows path
/// (`.\parent.vhd`) becomes `parent.vhd` relative to the child; a `file://` URL becomes its path;
/// an absolute Windows path (`C:\VMs\parent.vhd`) cannot be opened here, so its file name is
/// tried beside the child.
pub fn local_names(text: &str) -> Vec<String> {
    let mut s = text.trim().to_string();
    if let Some(rest) = s.strip_prefix("file://") {
        s = rest.strip_prefix("localhost").unwrap_or(rest).to_string();
    }
    let unix = s.replace('\\', "/");
    let unix = unix.strip_prefix("//?/").unwrap_or(&unix).to_string();
    let drive = unix.len() >= 2 && unix.as_bytes().get(1) == Some(&b':');
    let base = unix
        .rsplit('/')
        .next()
        .filter(|b| !b.is_empty())
        .map(str::to_string);
    let mut out = Vec::new();
    if drive {
        out.extend(base);
    } else {
        let rel = unix.trim_start_matches("./").to_string();
        if !rel.is_empty() {
            out.push(rel);
        }
        if let Some(b) = base {
            out.push(b);
        }
    }
    out.dedup();
    out
}

/// The parent of a differencing disk, opened when first needed.
pub struct Parent {
    /// The child image (relative names are taken from its directory).
    child: PathBuf,
    /// The recorded names, in the order they are tried.
    pub names: Vec<ParentName>,
    /// Local names to try, in order.
    candidates: Vec<String>,
    /// The parent's UUID as the child records it (all zeros: not checked).
    uuid: [u8; 16],
    /// The child's depth in its chain.
    depth: u32,
    reader: OnceLock<Arc<dyn DiskReader>>,
}

impl std::fmt::Debug for Parent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parent")
            .field("child", &self.child)
            .field("names", &self.names)
            .field("opened", &self.reader.get().is_some())
            .finish()
    }
}

impl Parent {
    /// A parent of `child` known by `names` (tried in order), whose UUID should be `uuid`.
    pub fn new(child: &Path, names: Vec<ParentName>, uuid: [u8; 16], depth: u32) -> Self {
        let mut candidates: Vec<String> = Vec::new();
        for n in &names {
            for c in local_names(&n.text) {
                if !candidates.contains(&c) {
                    candidates.push(c);
                }
            }
        }
        Parent {
            child: child.to_path_buf(),
            names,
            candidates,
            uuid,
            depth,
            reader: OnceLock::new(),
        }
    }

    /// The name to show as the backing file: the first recorded one.
    pub fn recorded(&self) -> Option<&str> {
        self.names.first().map(|n| n.text.as_str())
    }

    /// The parent, opened on first call. Fails with [`Error::Missing`] naming the parent when
    /// none of its names exists, and with [`Error::Corrupt`] when the file found is not the disk
    /// the child was made from (its UUID differs).
    pub fn get(&self) -> Result<&Arc<dyn DiskReader>> {
        if let Some(r) = self.reader.get() {
            return Ok(r);
        }
        let mut missing = None;
        for c in &self.candidates {
            match crate::open_backing(&self.child, c, None, self.depth, "parent disk") {
                Ok(r) => {
                    self.check_uuid(r.as_ref(), c)?;
                    let _ = self.reader.set(Arc::from(r));
                    if let Some(r) = self.reader.get() {
                        return Ok(r);
                    }
                }
                Err(e @ Error::Missing { .. }) => {
                    if missing.is_none() {
                        missing = Some(e);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(missing.unwrap_or_else(|| Error::Missing {
            path: self.child.clone(),
            what: "parent disk",
            missing: PathBuf::from(self.recorded().unwrap_or("")),
        }))
    }

    /// Refuses a parent whose VHD UUID is not the one the child records.
    fn check_uuid(&self, parent: &dyn DiskReader, name: &str) -> Result<()> {
        if self.uuid == [0; 16] {
            return Ok(());
        }
        let want = uuid::Uuid::from_bytes(self.uuid).to_string();
        match parent.info().details.get("uuid") {
            Some(have) if *have != want => Err(Error::corrupt(
                &self.child,
                crate::Format::Vhd,
                "dynamic disk header",
                0,
                format!(
                    "parent disk {name} has UUID {have} but this differencing disk was made from {want}"
                ),
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn windows_names_become_local_candidates() {
        assert_eq!(local_names(".\\fat-parent.vhd"), vec!["fat-parent.vhd"]);
        assert_eq!(local_names("C:\\VMs\\base.vhd"), vec!["base.vhd"]);
        assert_eq!(
            local_names("..\\up\\base.vhd"),
            vec!["../up/base.vhd", "base.vhd"]
        );
        assert_eq!(
            local_names("file://localhost/Users/a/base.vhd"),
            vec!["/Users/a/base.vhd", "base.vhd"]
        );
        assert_eq!(local_names("\\\\?\\C:\\x\\y.vhd"), vec!["y.vhd"]);
        assert!(local_names("").is_empty());
    }

    #[test]
    fn locators_decode_by_platform() {
        let le: Vec<u8> = ".\\p.vhd"
            .encode_utf16()
            .flat_map(|u| u.to_le_bytes())
            .collect();
        assert_eq!(decode_locator(b"W2ru", &le).as_deref(), Some(".\\p.vhd"));
        assert_eq!(decode_locator(b"Mac ", &le), None);
        assert_eq!(
            decode_locator(b"MacX", b"file:///a.vhd\0").as_deref(),
            Some("file:///a.vhd")
        );
    }
}
