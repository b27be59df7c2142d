//! Registry authentication: `WWW-Authenticate` challenges and where credentials come from
//! (`--creds`, podman's `auth.json`, Docker's `config.json` and its credential helpers).

use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::error::{Error, Result};

/// The largest credentials file read (they hold a few entries; a bigger one is not one).
const MAX_AUTH_FILE: u64 = 1024 * 1024;
/// The largest answer read from a credential helper.
const MAX_HELPER_OUTPUT: u64 = 64 * 1024;

/// A user name and a password or token. Its `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Credentials {
    pub(crate) user: String,
    pub(crate) secret: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials({}, <redacted>)", self.user)
    }
}

impl Credentials {
    /// The value of an `Authorization: Basic` header.
    pub(crate) fn basic_header(&self) -> String {
        format!(
            "Basic {}",
            BASE64.encode(format!("{}:{}", self.user, self.secret))
        )
    }
}

/// One challenge of a `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Challenge {
    /// `Basic realm=...`.
    Basic,
    /// `Bearer realm=...,service=...,scope=...`.
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Parses a `WWW-Authenticate` value (RFC 7235: schemes followed by `key=value` or
/// `key="quoted"` parameters, comma separated). Unknown schemes are skipped.
pub(crate) fn parse_challenges(header: &str) -> Vec<Challenge> {
    let mut out = Vec::new();
    // (scheme, params) as they are read.
    let mut current: Option<(String, Vec<(String, String)>)> = None;
    let b = header.as_bytes();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && (b[*i] == b' ' || b[*i] == b'\t' || b[*i] == b',') {
            *i += 1;
        }
    };
    loop {
        skip_ws(&mut i);
        if i >= b.len() {
            break;
        }
        let start = i;
        while i < b.len() && !matches!(b[i], b' ' | b'\t' | b',' | b'=') {
            i += 1;
        }
        let token = &header[start..i];
        // Spaces before '=' are tolerated.
        let mut j = i;
        while j < b.len() && (b[j] == b' ' || b[j] == b'\t') {
            j += 1;
        }
        if j < b.len() && b[j] == b'=' && !token.is_empty() {
            i = j + 1;
            while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
                i += 1;
            }
            let value = if i < b.len() && b[i] == b'"' {
                i += 1;
                let mut v = String::new();
                let mut chars = header[i..].char_indices();
                let mut end = header.len();
                while let Some((k, c)) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some((_, e)) = chars.next() {
                                v.push(e);
                            }
                        }
                        '"' => {
                            end = i + k + 1;
                            break;
                        }
                        c => v.push(c),
                    }
                }
                i = end;
                v
            } else {
                let s = i;
                while i < b.len() && b[i] != b',' {
                    i += 1;
                }
                header[s..i].trim().to_string()
            };
            if let Some((_, params)) = current.as_mut() {
                params.push((token.to_ascii_lowercase(), value));
            }
        } else if !token.is_empty() {
            if let Some(c) = current.take() {
                out.extend(finish_challenge(c));
            }
            current = Some((token.to_ascii_lowercase(), Vec::new()));
        } else {
            // A stray '=': skip it.
            i += 1;
        }
    }
    if let Some(c) = current.take() {
        out.extend(finish_challenge(c));
    }
    out
}

fn finish_challenge((scheme, params): (String, Vec<(String, String)>)) -> Option<Challenge> {
    let get = |k: &str| {
        params
            .iter()
            .find(|(pk, _)| pk == k)
            .map(|(_, v)| v.clone())
    };
    match scheme.as_str() {
        "basic" => Some(Challenge::Basic),
        "bearer" => Some(Challenge::Bearer {
            realm: get("realm")?,
            service: get("service"),
            scope: get("scope"),
        }),
        _ => None,
    }
}

/// The credentials files searched, in order, when no explicit file is given.
fn default_auth_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Some(f) = std::env::var_os("REGISTRY_AUTH_FILE") {
        files.push(PathBuf::from(f));
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR") {
        files.push(Path::new(&d).join("containers/auth.json"));
    }
    let home = std::env::var_os("HOME").map(PathBuf::from);
    match std::env::var_os("XDG_CONFIG_HOME") {
        Some(c) => files.push(Path::new(&c).join("containers/auth.json")),
        None => {
            if let Some(h) = &home {
                files.push(h.join(".config/containers/auth.json"));
            }
        }
    }
    match std::env::var_os("DOCKER_CONFIG") {
        Some(d) => files.push(Path::new(&d).join("config.json")),
        None => {
            if let Some(h) = &home {
                files.push(h.join(".docker/config.json"));
            }
        }
    }
    files
}

/// The registry a key of `auths` names: `https://index.docker.io/v1/` is `docker.io`,
/// `https://host:5000/` is `host:5000`.
fn normalise_host(key: &str) -> &str {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let k = k.split('/').next().unwrap_or(k);
    match k {
        "index.docker.io" | "registry-1.docker.io" => "docker.io",
        k => k,
    }
}

/// Finds credentials for `registry` (`docker.io`, `localhost:5000`): in `auth_file` when given,
/// else in the usual files. Returns `None` when there are none.
pub(crate) fn lookup(registry: &str, auth_file: Option<&Path>) -> Result<Option<Credentials>> {
    let files = match auth_file {
        Some(f) => vec![f.to_path_buf()],
        None => default_auth_files(),
    };
    for file in files {
        let text = match std::fs::File::open(&file) {
            Ok(f) => {
                let mut s = String::new();
                f.take(MAX_AUTH_FILE + 1)
                    .read_to_string(&mut s)
                    .map_err(|e| Error::io("read", &file, e))?;
                if s.len() as u64 > MAX_AUTH_FILE {
                    return Err(Error::malformed(
                        file.display().to_string(),
                        "credentials file",
                        "larger than 1 MiB",
                    ));
                }
                s
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && auth_file.is_none() => continue,
            Err(e) => return Err(Error::io("open", &file, e)),
        };
        if let Some(c) = lookup_in(registry, &file, &text)? {
            return Ok(Some(c));
        }
    }
    Ok(None)
}

/// Looks `registry` up in the text of one credentials file.
fn lookup_in(registry: &str, file: &Path, text: &str) -> Result<Option<Credentials>> {
    let bad =
        |detail: String| Error::malformed(file.display().to_string(), "credentials file", detail);
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    let server_url = if registry == "docker.io" {
        "https://index.docker.io/v1/"
    } else {
        registry
    };
    if let Some(helper) = v
        .get("credHelpers")
        .and_then(|h| h.as_object())
        .and_then(|h| h.iter().find(|(k, _)| normalise_host(k) == registry))
        .and_then(|(_, v)| v.as_str())
    {
        return run_helper(helper, server_url);
    }
    if let Some(auths) = v.get("auths").and_then(|a| a.as_object()) {
        // An exact key wins over a normalised one ("docker.io" over "https://index.docker.io/v1/").
        let entry = auths.get(registry).or_else(|| {
            auths
                .iter()
                .find(|(k, _)| normalise_host(k) == registry)
                .map(|(_, v)| v)
        });
        if let Some(entry) = entry {
            if let Some(auth) = entry
                .get("auth")
                .and_then(|a| a.as_str())
                .filter(|a| !a.is_empty())
            {
                let raw = BASE64
                    .decode(auth.trim())
                    .map_err(|e| bad(format!("auths.{registry}.auth is not base64: {e}")))?;
                let raw = String::from_utf8(raw)
                    .map_err(|_| bad(format!("auths.{registry}.auth is not UTF-8")))?;
                let (user, secret) = raw
                    .split_once(':')
                    .ok_or_else(|| bad(format!("auths.{registry}.auth is not user:password")))?;
                return Ok(Some(Credentials {
                    user: user.to_string(),
                    secret: secret.to_string(),
                }));
            }
            if let (Some(u), Some(p)) = (
                entry.get("username").and_then(|u| u.as_str()),
                entry.get("password").and_then(|p| p.as_str()),
            ) {
                return Ok(Some(Credentials {
                    user: u.to_string(),
                    secret: p.to_string(),
                }));
            }
        }
    }
    if let Some(store) = v.get("credsStore").and_then(|s| s.as_str()) {
        return run_helper(store, server_url);
    }
    Ok(None)
}

/// Runs `docker-credential-NAME get` with the server on stdin and reads `{Username, Secret}`.
/// A helper that is missing or knows nothing of the server gives `None`.
fn run_helper(name: &str, server: &str) -> Result<Option<Credentials>> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(Error::Auth {
            registry: server.to_string(),
            detail: format!("credential helper name '{name}' is not a plain name"),
        });
    }
    run_program(&format!("docker-credential-{name}"), server)
}

/// Runs the credential helper `program` (a name looked up in `PATH`, or a path).
fn run_program(program: &str, server: &str) -> Result<Option<Credentials>> {
    let program = program.to_string();
    let child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!("credential helper {program} is not installed");
            return Ok(None);
        }
        Err(e) => return Err(Error::io("run", &program, e)),
    };
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits without reading is reported through its exit status.
        let _ = stdin.write_all(server.as_bytes());
    }
    let mut out = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        stdout
            .take(MAX_HELPER_OUTPUT)
            .read_to_end(&mut out)
            .map_err(|e| Error::io("read output of", &program, e))?;
    }
    let status = child
        .wait()
        .map_err(|e| Error::io("wait for", &program, e))?;
    if !status.success() {
        // "credentials not found in native keychain" and the like.
        tracing::debug!("{program} has no credentials for {server}");
        return Ok(None);
    }
    #[derive(serde::Deserialize)]
    struct HelperAnswer {
        #[serde(rename = "Username", default)]
        username: String,
        #[serde(rename = "Secret", default)]
        secret: String,
    }
    let a: HelperAnswer = serde_json::from_slice(&out).map_err(|e| {
        Error::malformed(program.clone(), "credential helper answer", e.to_string())
    })?;
    if a.secret.is_empty() {
        return Ok(None);
    }
    // Docker's convention: the user "<token>" means the secret is an identity token; it is
    // still sent as the password of Basic credentials to the token endpoint.
    Ok(Some(Credentials {
        user: a.username,
        secret: a.secret,
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn bearer_challenge_with_quoted_params() {
        let c = parse_challenges(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(
            c,
            vec![Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
                scope: Some("repository:a/b:pull,push".into()),
            }]
        );
    }

    #[test]
    fn basic_and_unknown_and_several_challenges() {
        assert_eq!(
            parse_challenges(r#"Basic realm="Registry Realm""#),
            vec![Challenge::Basic]
        );
        let c = parse_challenges(
            r#"Negotiate abc, Bearer realm=http://x/t , service = s, Basic realm="a\"b""#,
        );
        assert_eq!(
            c,
            vec![
                Challenge::Bearer {
                    realm: "http://x/t".into(),
                    service: Some("s".into()),
                    scope: None
                },
                Challenge::Basic
            ]
        );
        assert!(parse_challenges("").is_empty());
        assert!(parse_challenges("Bearer service=x").is_empty());
        assert!(parse_challenges("=,=\"").is_empty());
    }

    #[test]
    fn auth_file_entries() {
        let f = Path::new("auth.json");
        let auth = BASE64.encode("u:p:w");
        let text = format!(
            r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{auth}"}},"localhost:5000":{{"auth":"{auth}"}}}}}}"#
        );
        let c = lookup_in("docker.io", f, &text).unwrap().unwrap();
        assert_eq!((c.user.as_str(), c.secret.as_str()), ("u", "p:w"));
        assert!(lookup_in("localhost:5000", f, &text).unwrap().is_some());
        assert!(lookup_in("other:5000", f, &text).unwrap().is_none());
        assert!(lookup_in("x", f, "{").is_err());
        assert!(lookup_in("x", f, r#"{"auths":{"x":{"auth":"!!"}}}"#).is_err());
        assert!(!format!("{c:?}").contains("p:w"));
    }

    /// Writes an executable script; retries the exec while another test's fork holds the
    /// file open for writing ("text file busy").
    fn run_script(dir: &Path, name: &str, body: &str, server: &str) -> Result<Option<Credentials>> {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        for _ in 0..50 {
            match run_program(path.to_str().unwrap(), server) {
                Err(Error::Io { source, .. }) if source.raw_os_error() == Some(26) => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => return other,
            }
        }
        panic!("{name} stayed busy");
    }

    #[test]
    fn credential_helpers_get_the_server_on_stdin() {
        let dir = tempfile::tempdir().unwrap();
        let c = run_script(
            dir.path(),
            "ok",
            r#"[ "$1" = get ] || exit 3; read -r s; printf '{"ServerURL":"%s","Username":"u-%s","Secret":"pw"}' "$s" "$s""#,
            "h.example:5000",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (c.user.as_str(), c.secret.as_str()),
            ("u-h.example:5000", "pw")
        );
        let none = run_script(
            dir.path(),
            "notfound",
            "echo 'credentials not found in native keychain'; exit 1",
            "h",
        )
        .unwrap();
        assert!(none.is_none());
        assert!(run_script(dir.path(), "garbage", "echo nope", "h").is_err());
    }

    #[test]
    fn missing_helper_gives_nothing() {
        let text = r#"{"credHelpers":{"h.example":"stamp-test-no-such-helper"}}"#;
        assert!(
            lookup_in("h.example", Path::new("c"), text)
                .unwrap()
                .is_none()
        );
    }
}
