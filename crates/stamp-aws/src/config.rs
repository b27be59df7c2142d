//! Credentials, region and endpoints resolved the way the AWS CLI does: command-line options,
//! then environment variables, then the shared `~/.aws/credentials` and `~/.aws/config` files.
//!
//! Order for each value:
//! - credentials: [`ConfigOptions`] keys > `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`
//!   (`AWS_SESSION_TOKEN`) > the profile in the credentials file > the profile in the config
//!   file. As with the AWS CLI, an explicit `--profile` (not `AWS_PROFILE`) skips the
//!   environment's keys.
//! - profile: [`ConfigOptions::profile`] > `AWS_PROFILE` > `default`.
//! - region: [`ConfigOptions::region`] > `AWS_REGION` > `AWS_DEFAULT_REGION` > the profile's
//!   `region`.
//! - endpoint of a service: [`ConfigOptions::endpoint_url`] > `AWS_ENDPOINT_URL_<SERVICE>` >
//!   `AWS_ENDPOINT_URL` > the profile's `services` section > the profile's `endpoint_url` >
//!   `https://{service}.{region}.amazonaws.com`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Largest shared config or credentials file read; real ones are a few KiB.
const MAX_FILE_SIZE: u64 = 1 << 20;

/// What the user gave on the command line; `None` means "not given".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigOptions {
    /// `--profile`.
    pub profile: Option<String>,
    /// `--region`.
    pub region: Option<String>,
    /// An access key id given explicitly.
    pub access_key: Option<String>,
    /// The secret access key that goes with [`ConfigOptions::access_key`].
    pub secret_key: Option<String>,
    /// A session token for temporary credentials.
    pub session_token: Option<String>,
    /// `--endpoint-url`: one endpoint for every service.
    pub endpoint_url: Option<String>,
}

/// Access keys. `Debug` does not print the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The access key id (`AKIA...`).
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: String,
    /// The session token of temporary credentials.
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Where credentials came from, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialSource {
    /// [`ConfigOptions`].
    Options,
    /// Environment variables.
    Environment,
    /// A profile in a file.
    File(PathBuf),
}

/// Resolved configuration: credentials, region and endpoints.
#[derive(Debug, Clone)]
pub struct AwsConfig {
    /// The profile used for file lookups.
    pub profile: String,
    /// The region.
    pub region: String,
    /// The credentials.
    pub credentials: Credentials,
    /// Where the credentials came from.
    pub credential_source: CredentialSource,
    endpoints: Endpoints,
}

/// Endpoint settings in the order they apply.
#[derive(Debug, Clone, Default)]
struct Endpoints {
    /// [`ConfigOptions::endpoint_url`].
    explicit: Option<String>,
    /// `AWS_ENDPOINT_URL_<SERVICE>` by service id (`ec2`, `ebs`, `s3`).
    env_services: BTreeMap<String, String>,
    /// `AWS_ENDPOINT_URL`.
    env_global: Option<String>,
    /// The profile's `services` section.
    config_services: BTreeMap<String, String>,
    /// The profile's `endpoint_url`.
    config_global: Option<String>,
}

impl AwsConfig {
    /// Resolves the configuration from `opts`, the process environment and the shared files.
    pub fn load(opts: &ConfigOptions) -> Result<AwsConfig> {
        Self::load_with(opts, &|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    }

    /// As [`AwsConfig::load`], reading environment variables through `env` (for tests).
    pub fn load_with(
        opts: &ConfigOptions,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<AwsConfig> {
        let home = env("HOME").map(PathBuf::from);
        let in_home = |rel: &str| home.as_ref().map(|h| h.join(rel));
        let cred_path = env("AWS_SHARED_CREDENTIALS_FILE")
            .map(PathBuf::from)
            .or_else(|| in_home(".aws/credentials"));
        let config_path = env("AWS_CONFIG_FILE")
            .map(PathBuf::from)
            .or_else(|| in_home(".aws/config"));
        let cred_file = match &cred_path {
            Some(p) => read_ini(p)?,
            None => None,
        };
        let config_file = match &config_path {
            Some(p) => read_ini(p)?,
            None => None,
        };
        let profile = opts
            .profile
            .clone()
            .or_else(|| env("AWS_PROFILE"))
            .unwrap_or_else(|| "default".to_string());
        let cred_section = cred_file.as_ref().and_then(|f| f.section(&profile));
        let config_section = config_file.as_ref().and_then(|f| {
            if profile == "default" {
                f.section("default")
                    .or_else(|| f.section("profile default"))
            } else {
                f.section(&format!("profile {profile}"))
            }
        });

        let (credentials, credential_source) = resolve_credentials(
            opts,
            env,
            &profile,
            (cred_path.as_deref(), cred_file.is_some(), cred_section),
            (
                config_path.as_deref(),
                config_file.is_some(),
                config_section,
            ),
        )?;

        let region = opts
            .region
            .clone()
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .or_else(|| config_section.and_then(|s| s.get("region")).map(str::to_string))
            .ok_or_else(|| {
                Error::Config(format!(
                    "no AWS region: give --region, set AWS_REGION or AWS_DEFAULT_REGION, or set region in profile '{profile}' of {}",
                    show(config_path.as_deref())
                ))
            })?;
        if region.is_empty()
            || !region
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(Error::Config(format!(
                "AWS region '{region}' is not a region name"
            )));
        }

        let mut config_services = BTreeMap::new();
        if let (Some(name), Some(file)) = (
            config_section.and_then(|s| s.get("services")),
            config_file.as_ref(),
        ) {
            if let Some(services) = file.section(&format!("services {name}")) {
                for (k, v) in &services.entries {
                    if let Some(svc) = k.strip_suffix(".endpoint_url") {
                        config_services.insert(svc.to_ascii_lowercase(), v.clone());
                    }
                }
            }
        }
        let env_services = ["ec2", "ebs", "s3"]
            .iter()
            .filter_map(|s| {
                env(&format!("AWS_ENDPOINT_URL_{}", s.to_ascii_uppercase()))
                    .map(|v| (s.to_string(), v))
            })
            .collect();
        Ok(AwsConfig {
            profile,
            region,
            credentials,
            credential_source,
            endpoints: Endpoints {
                explicit: opts.endpoint_url.clone(),
                env_services,
                env_global: env("AWS_ENDPOINT_URL"),
                config_services,
                config_global: config_section
                    .and_then(|s| s.get("endpoint_url"))
                    .map(str::to_string),
            },
        })
    }

    /// A configuration with these credentials and region and default endpoints (for tests
    /// and callers that resolve credentials themselves).
    pub fn new(region: &str, credentials: Credentials) -> AwsConfig {
        AwsConfig {
            profile: "default".to_string(),
            region: region.to_string(),
            credentials,
            credential_source: CredentialSource::Options,
            endpoints: Endpoints::default(),
        }
    }

    /// Uses `url` as the endpoint of every service.
    pub fn with_endpoint(mut self, url: &str) -> AwsConfig {
        self.endpoints.explicit = Some(url.to_string());
        self
    }

    /// The same credentials and endpoint settings for another region.
    pub fn for_region(&self, region: &str) -> AwsConfig {
        AwsConfig {
            region: region.to_string(),
            ..self.clone()
        }
    }

    /// The base URL of `service` (`ec2`, `ebs`, `s3`), without a trailing slash.
    pub fn endpoint(&self, service: &str) -> String {
        self.endpoint_override(service)
            .unwrap_or_else(|| format!("https://{service}.{}.amazonaws.com", self.region))
    }

    /// The endpoint configured for `service` (option, environment or profile), without a
    /// trailing slash; `None` when it is AWS's own. S3 uses path-style URLs with one
    /// (moto, MinIO, Ceph) and virtual-hosted ones without.
    pub fn endpoint_override(&self, service: &str) -> Option<String> {
        let e = &self.endpoints;
        e.explicit
            .as_ref()
            .or(e.env_services.get(service))
            .or(e.env_global.as_ref())
            .or(e.config_services.get(service))
            .or(e.config_global.as_ref())
            .map(|url| url.trim_end_matches('/').to_string())
    }
}

/// Shows an optional path for messages.
fn show(p: Option<&Path>) -> String {
    p.map_or_else(
        || "(no HOME, no file)".to_string(),
        |p| p.display().to_string(),
    )
}

type FileLookup<'a> = (Option<&'a Path>, bool, Option<&'a Section>);

fn resolve_credentials(
    opts: &ConfigOptions,
    env: &dyn Fn(&str) -> Option<String>,
    profile: &str,
    (cred_path, cred_exists, cred_section): FileLookup<'_>,
    (config_path, config_exists, config_section): FileLookup<'_>,
) -> Result<(Credentials, CredentialSource)> {
    match (&opts.access_key, &opts.secret_key) {
        (Some(a), Some(s)) => {
            return Ok((
                Credentials {
                    access_key_id: a.clone(),
                    secret_access_key: s.clone(),
                    session_token: opts.session_token.clone(),
                },
                CredentialSource::Options,
            ));
        }
        (Some(_), None) | (None, Some(_)) => {
            return Err(Error::Config(
                "give both the access key id and the secret access key, or neither".into(),
            ));
        }
        (None, None) => {}
    }
    if opts.profile.is_none() {
        match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
            (Some(a), Some(s)) => {
                return Ok((
                    Credentials {
                        access_key_id: a,
                        secret_access_key: s,
                        session_token: env("AWS_SESSION_TOKEN"),
                    },
                    CredentialSource::Environment,
                ));
            }
            (Some(_), None) => {
                return Err(Error::Config(
                    "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(Error::Config(
                    "AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not".into(),
                ));
            }
            (None, None) => {}
        }
    }
    for (path, section) in [(cred_path, cred_section), (config_path, config_section)] {
        let Some(section) = section else { continue };
        let key = section.get("aws_access_key_id");
        let secret = section.get("aws_secret_access_key");
        match (key, secret) {
            (Some(a), Some(s)) => {
                return Ok((
                    Credentials {
                        access_key_id: a.to_string(),
                        secret_access_key: s.to_string(),
                        session_token: section.get("aws_session_token").map(str::to_string),
                    },
                    CredentialSource::File(path.map(Path::to_path_buf).unwrap_or_default()),
                ));
            }
            (Some(_), None) | (None, Some(_)) => {
                return Err(Error::Config(format!(
                    "profile '{profile}' in {} has only one of aws_access_key_id and aws_secret_access_key",
                    show(path)
                )));
            }
            (None, None) => {}
        }
    }
    let describe = |path: Option<&Path>, exists: bool, found: bool| {
        let state = if path.is_none() {
            "no HOME"
        } else if !exists {
            "no such file"
        } else if !found {
            "no such profile"
        } else {
            "no keys in the profile"
        };
        format!("{} [{profile}] ({state})", show(path))
    };
    let env_note = if opts.profile.is_some() {
        "skipped: --profile given"
    } else {
        "not set"
    };
    Err(Error::NoCredentials(format!(
        "looked in the command-line options (--access-key/--secret-key: not given), the environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY: {env_note}), {} and {}; run `aws configure` or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
        describe(cred_path, cred_exists, cred_section.is_some()),
        describe(config_path, config_exists, config_section.is_some()),
    )))
}

/// One `[section]` of an INI file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Section {
    /// `key = value` pairs; sub-properties (indented under a key with no value) are
    /// `parent.key`.
    entries: BTreeMap<String, String>,
}

impl Section {
    fn get(&self, key: &str) -> Option<&str> {
        self.entries.get(key).map(String::as_str)
    }
}

/// An AWS shared config or credentials file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Ini {
    sections: BTreeMap<String, Section>,
}

impl Ini {
    fn section(&self, name: &str) -> Option<&Section> {
        self.sections.get(name)
    }
}

/// Reads `path` if it exists (None if it does not).
fn read_ini(path: &Path) -> Result<Option<Ini>> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::Config(format!("{}: {e}", path.display()))),
    };
    if meta.len() > MAX_FILE_SIZE {
        return Err(Error::Config(format!(
            "{}: {} bytes, larger than the {MAX_FILE_SIZE} bytes an AWS config file may have",
            path.display(),
            meta.len()
        )));
    }
    let text =
        std::fs::read(path).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    if text.len() as u64 > MAX_FILE_SIZE {
        return Err(Error::Config(format!(
            "{}: file grew while read",
            path.display()
        )));
    }
    let text = String::from_utf8_lossy(&text);
    parse_ini(&text)
        .map(Some)
        .map_err(|(line, what)| Error::Config(format!("{}: line {line}: {what}", path.display())))
}

/// Parses the AWS flavour of INI: `[section]`, `key = value`, `#`/`;` comments, and indented
/// sub-properties under a key whose value is empty.
pub(crate) fn parse_ini(text: &str) -> std::result::Result<Ini, (usize, String)> {
    let mut ini = Ini::default();
    let mut current: Option<String> = None;
    let mut parent: Option<String> = None;
    for (n, raw) in text.lines().enumerate() {
        let line_no = n + 1;
        let indented = raw.starts_with([' ', '\t']);
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            let name = rest
                .split_once(']')
                .map(|(n, _)| n)
                .ok_or((line_no, format!("section header '{line}' has no ']'")))?;
            // `[profile  name]` and `[ name ]` normalise to single spaces.
            let name = name.split_whitespace().collect::<Vec<_>>().join(" ");
            ini.sections.entry(name.clone()).or_default();
            current = Some(name);
            parent = None;
            continue;
        }
        let Some(section) = &current else {
            return Err((line_no, "a key before any [section]".into()));
        };
        let (k, v) = line
            .split_once('=')
            .ok_or((line_no, format!("'{line}' is not key = value")))?;
        let k = k.trim().to_ascii_lowercase();
        // An inline comment needs whitespace before it, as in botocore.
        let v = v
            .split(" #")
            .next()
            .unwrap_or("")
            .split(" ;")
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        let entries = &mut ini.sections.entry(section.clone()).or_default().entries;
        match (&parent, indented) {
            (Some(p), true) => {
                entries.insert(format!("{p}.{k}"), v);
            }
            _ => {
                parent = v.is_empty().then(|| k.clone());
                entries.insert(k, v);
            }
        }
    }
    Ok(ini)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    struct Home {
        dir: tempfile::TempDir,
    }

    impl Home {
        fn new(credentials: Option<&str>, config: Option<&str>) -> Home {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir(dir.path().join(".aws")).unwrap();
            if let Some(c) = credentials {
                std::fs::write(dir.path().join(".aws/credentials"), c).unwrap();
            }
            if let Some(c) = config {
                std::fs::write(dir.path().join(".aws/config"), c).unwrap();
            }
            Home { dir }
        }
        fn path(&self) -> &str {
            self.dir.path().to_str().unwrap()
        }
    }

    const CREDS: &str = "[default]\naws_access_key_id = AKDEFAULT\naws_secret_access_key = sdefault\n\n[work]\naws_access_key_id=AKWORK\naws_secret_access_key=swork\naws_session_token = tok # comment\n";
    const CONFIG: &str = "[default]\nregion = eu-west-1\n\n[profile work]\nregion = us-east-2\nservices = local\n\n[services local]\nebs =\n  endpoint_url = http://127.0.0.1:9000\n";

    #[test]
    fn options_beat_environment_beat_files() {
        let home = Home::new(Some(CREDS), Some(CONFIG));
        let env = env_of(&[
            ("HOME", home.path()),
            ("AWS_ACCESS_KEY_ID", "AKENV"),
            ("AWS_SECRET_ACCESS_KEY", "senv"),
            ("AWS_REGION", "ap-south-1"),
        ]);
        let opts = ConfigOptions {
            access_key: Some("AKOPT".into()),
            secret_key: Some("sopt".into()),
            region: Some("us-west-2".into()),
            ..Default::default()
        };
        let c = AwsConfig::load_with(&opts, &env).unwrap();
        assert_eq!(c.credentials.access_key_id, "AKOPT");
        assert_eq!(c.credential_source, CredentialSource::Options);
        assert_eq!(c.region, "us-west-2");

        let c = AwsConfig::load_with(&ConfigOptions::default(), &env).unwrap();
        assert_eq!(c.credentials.access_key_id, "AKENV");
        assert_eq!(c.credential_source, CredentialSource::Environment);
        assert_eq!(c.region, "ap-south-1");

        let env = env_of(&[("HOME", home.path())]);
        let c = AwsConfig::load_with(&ConfigOptions::default(), &env).unwrap();
        assert_eq!(c.credentials.access_key_id, "AKDEFAULT");
        assert_eq!(c.region, "eu-west-1");
        assert!(matches!(c.credential_source, CredentialSource::File(_)));
    }

    #[test]
    fn profile_from_env_or_option_selects_sections_and_services() {
        let home = Home::new(Some(CREDS), Some(CONFIG));
        let env = env_of(&[("HOME", home.path()), ("AWS_PROFILE", "work")]);
        let c = AwsConfig::load_with(&ConfigOptions::default(), &env).unwrap();
        assert_eq!(c.credentials.access_key_id, "AKWORK");
        assert_eq!(c.credentials.session_token.as_deref(), Some("tok"));
        assert_eq!(c.region, "us-east-2");
        assert_eq!(c.endpoint("ebs"), "http://127.0.0.1:9000");
        assert_eq!(c.endpoint("ec2"), "https://ec2.us-east-2.amazonaws.com");

        // An explicit --profile skips the environment's keys, as the AWS CLI does.
        let env = env_of(&[
            ("HOME", home.path()),
            ("AWS_ACCESS_KEY_ID", "AKENV"),
            ("AWS_SECRET_ACCESS_KEY", "senv"),
        ]);
        let opts = ConfigOptions {
            profile: Some("work".into()),
            ..Default::default()
        };
        let c = AwsConfig::load_with(&opts, &env).unwrap();
        assert_eq!(c.credentials.access_key_id, "AKWORK");
    }

    #[test]
    fn endpoints_follow_the_aws_order() {
        let home = Home::new(
            None,
            Some("[default]\nregion=us-east-1\nendpoint_url = http://profile/\n"),
        );
        let base = [
            ("HOME", home.path()),
            ("AWS_ACCESS_KEY_ID", "a"),
            ("AWS_SECRET_ACCESS_KEY", "s"),
        ];
        let c = AwsConfig::load_with(&ConfigOptions::default(), &env_of(&base)).unwrap();
        assert_eq!(c.endpoint("ec2"), "http://profile");
        let mut e = base.to_vec();
        e.push(("AWS_ENDPOINT_URL", "http://global"));
        e.push(("AWS_ENDPOINT_URL_EBS", "http://ebs-only"));
        let c = AwsConfig::load_with(&ConfigOptions::default(), &env_of(&e)).unwrap();
        assert_eq!(c.endpoint("ec2"), "http://global");
        assert_eq!(c.endpoint("ebs"), "http://ebs-only");
        let opts = ConfigOptions {
            endpoint_url: Some("http://flag".into()),
            ..Default::default()
        };
        let c = AwsConfig::load_with(&opts, &env_of(&e)).unwrap();
        assert_eq!(c.endpoint("ebs"), "http://flag");
        assert_eq!(c.endpoint("s3"), "http://flag");
    }

    #[test]
    fn missing_credentials_name_every_place_looked() {
        let home = Home::new(None, Some("[profile other]\nregion=us-east-1\n"));
        let env = env_of(&[("HOME", home.path()), ("AWS_REGION", "us-east-1")]);
        let err = AwsConfig::load_with(&ConfigOptions::default(), &env).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::NoCredentials(_)));
        for want in [
            "--access-key",
            "AWS_ACCESS_KEY_ID",
            ".aws/credentials [default] (no such file)",
            ".aws/config [default] (no such profile)",
        ] {
            assert!(msg.contains(want), "{msg} lacks {want}");
        }
    }

    #[test]
    fn half_given_keys_and_missing_region_are_errors() {
        let env = env_of(&[("AWS_ACCESS_KEY_ID", "a"), ("AWS_REGION", "us-east-1")]);
        let err = AwsConfig::load_with(&ConfigOptions::default(), &env).unwrap_err();
        assert!(err.to_string().contains("AWS_SECRET_ACCESS_KEY"), "{err}");
        let env = env_of(&[("AWS_ACCESS_KEY_ID", "a"), ("AWS_SECRET_ACCESS_KEY", "s")]);
        let err = AwsConfig::load_with(&ConfigOptions::default(), &env).unwrap_err();
        assert!(err.to_string().contains("no AWS region"), "{err}");
    }

    #[test]
    fn ini_parser_reports_bad_lines_and_bounds_files() {
        assert_eq!(parse_ini("key=1\n").unwrap_err().0, 1);
        assert_eq!(parse_ini("[a]\n# c\nnot a pair\n").unwrap_err().0, 3);
        assert!(parse_ini("[a\n").is_err());
        let ini = parse_ini("[ profile   x ]\nA = 1\n").unwrap();
        assert_eq!(ini.section("profile x").unwrap().get("a"), Some("1"));

        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'#'; (MAX_FILE_SIZE + 1) as usize]).unwrap();
        let env = env_of(&[("AWS_CONFIG_FILE", big.to_str().unwrap())]);
        let err = AwsConfig::load_with(&ConfigOptions::default(), &env).unwrap_err();
        assert!(err.to_string().contains("larger than"), "{err}");
    }
}
