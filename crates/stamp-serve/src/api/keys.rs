//! The access keys the service accepts: a file of `ACCESS_KEY_ID SECRET TENANT` lines.

use std::collections::HashMap;
use std::path::Path;

use crate::{Error, Result};

/// Most keys read from one file.
const MAX_KEYS: usize = 100_000;

/// One access key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    /// The secret access key.
    pub secret: String,
    /// The tenant the key acts for.
    pub tenant: String,
}

/// Access key id → key.
#[derive(Debug, Clone, Default)]
pub struct Keys {
    keys: HashMap<String, Key>,
}

impl Keys {
    /// Reads `path`: one `ACCESS_KEY_ID SECRET TENANT` per line; `#` comments and blank lines
    /// are skipped. A malformed line is an error naming the file and line.
    pub fn load(path: &Path) -> Result<Keys> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("read", path, e))?;
        Keys::parse(&text, &path.display().to_string())
    }

    /// Parses the text of a credentials file named `name` (for errors).
    pub fn parse(text: &str, name: &str) -> Result<Keys> {
        let mut keys = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [id, secret, tenant] = fields[..] else {
                return Err(Error::Config(format!(
                    "{name}:{}: expected ACCESS_KEY_ID SECRET TENANT, found {} fields",
                    n + 1,
                    fields.len()
                )));
            };
            if keys.len() >= MAX_KEYS {
                return Err(Error::Config(format!("{name}: more than {MAX_KEYS} keys")));
            }
            let key = Key {
                secret: secret.to_string(),
                tenant: tenant.to_string(),
            };
            if keys.insert(id.to_string(), key).is_some() {
                return Err(Error::Config(format!(
                    "{name}:{}: access key {id} is given twice",
                    n + 1
                )));
            }
        }
        if keys.is_empty() {
            return Err(Error::Config(format!("{name}: no access keys")));
        }
        Ok(Keys { keys })
    }

    /// The key `id`, if known.
    pub fn get(&self, id: &str) -> Option<&Key> {
        self.keys.get(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_comments_and_errors() {
        let k = Keys::parse("# keys\nAKID1 s1 alice\n\n  AKID2  s2  bob\n", "creds").unwrap();
        assert_eq!(k.get("AKID2").unwrap().tenant, "bob");
        assert!(k.get("AKID3").is_none());
        let e = Keys::parse("AKID1 s1\n", "creds").unwrap_err().to_string();
        assert!(e.contains("creds:1"), "{e}");
        assert!(Keys::parse("A s t\nA s u\n", "c").is_err());
        assert!(Keys::parse("# none\n", "c").is_err());
    }
}
