//! Image references: `[registry/]repository[:tag][@digest]`, normalised the way Docker and podman
//! do (`debian` is `docker.io/library/debian:latest`).

use std::fmt;
use std::str::FromStr;

use crate::digest::Digest;
use crate::error::{Error, Result};

/// The registry a reference without one names.
pub const DEFAULT_REGISTRY: &str = "docker.io";
/// The tag a reference without a tag or a digest names.
pub const DEFAULT_TAG: &str = "latest";
/// The longest repository name (registry included), the limit of the distribution reference grammar.
const MAX_NAME_LEN: usize = 255;
/// The longest tag, the limit of the distribution reference grammar.
const MAX_TAG_LEN: usize = 128;

/// A parsed, normalised image reference in a registry.
///
/// After parsing, a reference always has a tag or a digest (or both): a name alone gets the
/// tag `latest`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// The registry host, with its port if any (`docker.io`, `localhost:5000`).
    pub registry: String,
    /// The repository path in the registry (`library/debian`).
    pub repository: String,
    /// The tag, if any.
    pub tag: Option<String>,
    /// The digest, if any; when present it is what is pulled (the tag is informational).
    pub digest: Option<Digest>,
}

impl Reference {
    /// The host to connect to for this reference's registry: `registry-1.docker.io` for Docker
    /// Hub, else the registry itself.
    pub fn api_host(&self) -> &str {
        if self.registry == DEFAULT_REGISTRY {
            "registry-1.docker.io"
        } else {
            &self.registry
        }
    }

    /// What the registry's manifest endpoint is asked for: the digest if any, else the tag
    /// (`latest` when there is neither).
    pub fn manifest_selector(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => DEFAULT_TAG.to_string(),
        }
    }

    /// The same repository with another tag and no digest.
    pub fn with_tag(&self, tag: &str) -> Reference {
        Reference {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: Some(tag.to_string()),
            digest: None,
        }
    }

    /// The same repository at `digest`, without a tag.
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: None,
            digest: Some(digest),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| Error::BadReference {
            reference: s.chars().take(300).collect(),
            why: why.to_string(),
        };
        if s.is_empty() {
            return Err(bad("empty reference"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((rest, d)) => (
                rest,
                Some(d.parse::<Digest>().map_err(|e| bad(&e.to_string()))?),
            ),
            None => (s, None),
        };
        // A tag is after the last ':' that follows the last '/' (a ':' before it is a port).
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let at = last_slash + i;
                (&rest[..at], Some(&rest[at + 1..]))
            }
            None => (rest, None),
        };
        if let Some(t) = tag {
            if !valid_tag(t) {
                return Err(bad(
                    "a tag is 1 to 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'",
                ));
            }
        }
        if name.len() > MAX_NAME_LEN {
            return Err(bad("the name is longer than 255 characters"));
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.')
                    || first.contains(':')
                    || first == "localhost"
                    || first.bytes().any(|b| b.is_ascii_uppercase()) =>
            {
                (first, path)
            }
            _ => (DEFAULT_REGISTRY, name),
        };
        if !valid_domain(registry) {
            return Err(bad("the registry is not a host name with an optional port"));
        }
        if path.is_empty() || !path.split('/').all(valid_path_component) {
            return Err(bad(
                "a repository is '/'-separated lowercase components of letters and digits, \
                 joined inside by '.', '_', '__' or dashes",
            ));
        }
        let registry = if registry == "index.docker.io" {
            DEFAULT_REGISTRY
        } else {
            registry
        };
        let repository = if registry == DEFAULT_REGISTRY && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_string()
        };
        // The limit holds for the normalised name too (as in Docker's ParseNormalizedNamed),
        // so that a parsed reference always prints as one that parses.
        if registry.len() + 1 + repository.len() > MAX_NAME_LEN {
            return Err(bad(
                "the name (with its default registry) is longer than 255 characters",
            ));
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, Some(_)) => None,
            (None, None) => Some(DEFAULT_TAG.to_string()),
        };
        Ok(Reference {
            registry: registry.to_string(),
            repository,
            tag,
            digest,
        })
    }
}

/// `[\w][\w.-]{0,127}`.
fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_TAG_LEN
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return false;
        }
    }
    true
}

/// A host name (dot-separated labels of letters, digits and inner dashes) or a bracketed IPv6
/// address, with an optional numeric port.
fn valid_domain(d: &str) -> bool {
    let (host, port) = if let Some(rest) = d.strip_prefix('[') {
        let Some((addr, after)) = rest.split_once(']') else {
            return false;
        };
        if addr.is_empty() || !addr.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return false;
        }
        match after {
            "" => return true,
            p => match p.strip_prefix(':') {
                Some(port) => return valid_port(port),
                None => return false,
            },
        }
    } else {
        match d.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (d, None),
        }
    };
    if let Some(p) = port {
        if !valid_port(p) {
            return false;
        }
    }
    !host.is_empty()
        && host.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'-')
        })
}

fn valid_port(p: &str) -> bool {
    !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    /// Found by the `oci_reference` fuzz target: a 250-character name parsed, but its
    /// normalised form (`docker.io/...`) is over the limit and did not parse back.
    #[test]
    fn a_name_too_long_once_normalised_is_refused() {
        let name = format!("a/{}", "b".repeat(248));
        assert!(name.parse::<Reference>().is_err());
        let fits = format!("a/{}", "b".repeat(255 - "docker.io/a/".len()));
        let r: Reference = fits.parse().unwrap();
        assert_eq!(r.to_string().parse::<Reference>().unwrap(), r);
    }

    fn p(s: &str) -> Reference {
        s.parse().unwrap()
    }

    #[test]
    fn docker_hub_names_are_normalised() {
        assert_eq!(p("debian").to_string(), "docker.io/library/debian:latest");
        assert_eq!(p("debian:12").to_string(), "docker.io/library/debian:12");
        assert_eq!(p("user/app").to_string(), "docker.io/user/app:latest");
        assert_eq!(
            p("index.docker.io/library/debian:12").to_string(),
            "docker.io/library/debian:12"
        );
        assert_eq!(p("docker.io/debian").repository, "library/debian");
        assert_eq!(p("debian").api_host(), "registry-1.docker.io");
    }

    #[test]
    fn registries_with_ports_tags_and_digests() {
        let r = p("localhost:5000/x:1");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("localhost:5000", "x", Some("1"))
        );
        let r = p(&format!("host.example/a/b@{D}"));
        assert_eq!(r.repository, "a/b");
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.unwrap().to_string(), D);
        assert_eq!(r.manifest_selector(), D);
        let r = p(&format!("host.example/a:tag@{D}"));
        assert_eq!(r.tag.as_deref(), Some("tag"));
        assert_eq!(r.to_string(), format!("host.example/a:tag@{D}"));
        assert_eq!(p("localhost/x").registry, "localhost");
        assert_eq!(
            p("127.0.0.1:5055/a/b-c/d__e:v1.2-rc_3").repository,
            "a/b-c/d__e"
        );
        assert_eq!(p("[::1]:5000/x").registry, "[::1]:5000");
        // A first component without '.', ':' or "localhost" is a Docker Hub namespace.
        assert_eq!(p("myhost/x").registry, "docker.io");
    }

    #[test]
    fn invalid_references_are_refused() {
        for bad in [
            "",
            "Debian",
            "a//b",
            "/a",
            "a/",
            "a:",
            "a:-x",
            "a:.x",
            "a@sha256:abc",
            "a@md5:00",
            "host:port/x",
            "host:123456/x",
            "-host.example/x",
            "a..b",
            "a_-b",
            "a/b:tag/c",
            "a b",
            "a:tag:tag",
            &format!("a:{}", "t".repeat(129)),
            &format!("host.example/{}", "a".repeat(250)),
        ] {
            assert!(bad.parse::<Reference>().is_err(), "{bad:?} parsed");
        }
    }

    fn component() -> impl Strategy<Value = String> {
        "[a-z0-9]{1,5}((\\.|_|__|-{1,3})[a-z0-9]{1,4}){0,2}"
    }

    fn reference_string() -> impl Strategy<Value = String> {
        (
            prop_oneof![
                Just(String::new()),
                Just("docker.io/".to_string()),
                Just("localhost/".to_string()),
                "[a-z][a-z0-9-]{0,6}[a-z0-9](\\.[a-z0-9]{1,5}){1,2}(:[0-9]{1,5})?/",
                "localhost:[0-9]{1,5}/",
            ],
            proptest::collection::vec(component(), 1..4),
            proptest::option::of("[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}"),
            proptest::option::of(proptest::array::uniform32(any::<u8>())),
        )
            .prop_map(|(mut reg, comps, tag, digest)| {
                // Without a registry, a first component with a '.' would be read as one.
                if reg.is_empty() && comps[0].contains('.') {
                    reg = "docker.io/".to_string();
                }
                let mut s = format!("{reg}{}", comps.join("/"));
                if let Some(t) = tag {
                    s.push(':');
                    s.push_str(&t);
                }
                if let Some(d) = digest {
                    s.push('@');
                    s.push_str(&Digest::from_bytes(d).to_string());
                }
                s
            })
    }

    proptest! {
        #[test]
        fn display_then_parse_is_identity(s in reference_string()) {
            let r: Reference = s.parse().unwrap();
            let again: Reference = r.to_string().parse().unwrap();
            prop_assert_eq!(again, r);
        }

        #[test]
        fn parsing_never_panics(s in "\\PC{0,80}") {
            let _ = s.parse::<Reference>();
        }
    }
}
