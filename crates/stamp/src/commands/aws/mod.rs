//! The `aws://` locations: `stamp images --remote aws` and `stamp rmi aws://…` ([`catalog`]),
//! `stamp push IMAGE aws://NAME` ([`push`]), `stamp pull aws://…` ([`pull`]).

mod catalog;
mod pull;
mod push;

pub use catalog::{images, rmi, rmi_incomplete};
pub use pull::pull;
pub use push::run as push;

use anyhow::Result;
use stamp_aws::config::{AwsConfig, ConfigOptions};
use stamp_aws::http::Client;

use crate::cli::AwsArgs;

/// `aws[://REGION[/ID]]` split into the region (if any) and the id (if any); `None` if `s` is
/// not an `aws` location.
pub fn parse_location(s: &str) -> Option<(Option<String>, Option<String>)> {
    let rest = match s.strip_prefix("aws://") {
        Some(r) => r,
        None if s == "aws" => "",
        None => return None,
    };
    let mut parts = rest.splitn(2, '/');
    let first = parts.next().filter(|p| !p.is_empty()).map(String::from);
    let second = parts.next().filter(|p| !p.is_empty()).map(String::from);
    Some(match (first, second) {
        // aws://ami-… names an id in the configured region.
        (Some(f), None) if f.starts_with("ami-") || f.starts_with("snap-") => (None, Some(f)),
        (f, s) => (f, s),
    })
}

/// The AWS configuration for `region` (else the flags', the environment's, the profile's).
pub(crate) fn config(a: &AwsArgs, region: Option<String>) -> Result<AwsConfig> {
    Ok(AwsConfig::load(&ConfigOptions {
        profile: a.profile.clone(),
        region: region.or_else(|| a.region.clone()),
        endpoint_url: a.endpoint_url.clone(),
        access_key: a.access_key.clone(),
        secret_key: a.secret_key.clone(),
        session_token: a.session_token.clone(),
    })?)
}

/// A signed client for [`config`].
pub(crate) fn client(a: &AwsArgs, region: Option<String>) -> Result<Client> {
    Ok(Client::new(&config(a, region)?))
}

#[cfg(test)]
mod tests {
    use super::parse_location;

    #[test]
    fn locations() {
        let s = |v: &str| Some(v.to_string());
        assert_eq!(parse_location("aws"), Some((None, None)));
        assert_eq!(
            parse_location("aws://eu-west-1"),
            Some((s("eu-west-1"), None))
        );
        assert_eq!(parse_location("aws://ami-1"), Some((None, s("ami-1"))));
        assert_eq!(
            parse_location("aws://eu-west-1/ami-1"),
            Some((s("eu-west-1"), s("ami-1")))
        );
        assert_eq!(parse_location("localhost/x"), None);
    }
}
