//! Registry credentials from `CODER_IMAGE_PULL_SECRET` and `CODER_DOCKER_CONFIG`.
//!
//! Owns: parsing docker `config.json` documents (`auths` entries with `auth`,
//! `username`/`password` or `identitytoken`), merging the pull secret with the config file (the
//! secret wins per host; neither is discarded), and looking credentials up by normalised host
//! only: registry A's credentials are never offered to registry B (the Go envbox fell back to
//! the first entry). Values live in [`Secret`]s; errors name the source, never the content.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::Deserialize;

use super::RegistryError;
use crate::config::Secret;
use crate::image::normalize_host;

/// Credentials for one registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// HTTP basic credentials (also exchanged for a bearer token).
    Basic {
        /// The user name.
        username: String,
        /// The password or token.
        password: Secret,
    },
    /// An OAuth2 refresh token (`identitytoken`), exchanged at the registry's token realm.
    IdentityToken(Secret),
}

/// Credentials by normalised host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    by_host: BTreeMap<String, Credential>,
    /// Things in the documents envbox does not use (credential helpers), for the log.
    pub warnings: Vec<String>,
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

fn credential(entry: AuthEntry) -> Result<Option<Credential>, &'static str> {
    if let Some(token) = entry.identitytoken.filter(|t| !t.is_empty()) {
        return Ok(Some(Credential::IdentityToken(Secret::new(token))));
    }
    if let Some(auth) = entry.auth.filter(|a| !a.is_empty()) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| "an \"auth\" value is not base64")?;
        let text = String::from_utf8(decoded).map_err(|_| "an \"auth\" value is not UTF-8")?;
        let (username, password) = text
            .split_once(':')
            .ok_or("an \"auth\" value does not decode to username:password")?;
        return Ok(Some(Credential::Basic {
            username: username.to_owned(),
            password: Secret::new(password),
        }));
    }
    match (entry.username, entry.password) {
        (Some(username), Some(password)) if !username.is_empty() => Ok(Some(Credential::Basic {
            username,
            password: Secret::new(password),
        })),
        _ => Ok(None),
    }
}

impl Credentials {
    /// Parses a docker config document. `origin` names it in errors (e.g. the variable).
    pub fn parse(document: &Secret, origin: &str) -> Result<Credentials, RegistryError> {
        let invalid = |reason: String| RegistryError::Credentials {
            origin: origin.to_owned(),
            reason,
        };
        let config: DockerConfig = serde_json::from_str(document.expose()).map_err(|e| {
            invalid(format!(
                "not a docker config.json document (line {}, column {}): expected {{\"auths\":{{\"<registry>\":{{\"auth\":\"<base64 user:password>\"}}}}}}",
                e.line(),
                e.column()
            ))
        })?;
        let mut creds = Credentials::default();
        for (key, entry) in config.auths {
            let host = normalize_host(&key);
            match credential(entry).map_err(|reason| invalid(format!("entry {key:?}: {reason}")))? {
                Some(c) => {
                    creds.by_host.insert(host, c);
                }
                None => creds.warnings.push(format!(
                    "{origin}: entry {key:?} has no usable credentials; ignored"
                )),
            }
        }
        if let Some(store) = config.creds_store {
            creds.warnings.push(format!(
                "{origin}: credsStore {store:?} is not supported (no credential helpers run in envbox); put credentials in \"auths\""
            ));
        }
        for (host, helper) in config.cred_helpers {
            creds.warnings.push(format!(
                "{origin}: credHelpers {host:?} -> {helper:?} is not supported; put credentials in \"auths\""
            ));
        }
        Ok(creds)
    }

    /// Merges: entries of `self` win over `other`'s for the same host.
    pub(crate) fn merged_over(mut self, other: Credentials) -> Credentials {
        for (host, credential) in other.by_host {
            self.by_host.entry(host).or_insert(credential);
        }
        self.warnings.extend(other.warnings);
        self
    }

    /// The credential for exactly this (normalised) host.
    pub(crate) fn for_host(&self, host: &str) -> Option<&Credential> {
        self.by_host.get(&normalize_host(host))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Credentials {
        Credentials::parse(&Secret::new(json), "CODER_IMAGE_PULL_SECRET").unwrap()
    }

    fn basic(c: Option<&Credential>) -> Option<(String, String)> {
        match c {
            Some(Credential::Basic { username, password }) => {
                Some((username.clone(), password.expose().to_owned()))
            }
            _ => None,
        }
    }

    #[test]
    fn auth_username_password_and_identity_token() {
        let c = parse(
            r#"{"auths":{
                "https://index.docker.io/v1/":{"auth":"dXNlcjpwYTpzcw=="},
                "registry.example.com:5000":{"username":"bob","password":"pw"},
                "ghcr.io":{"identitytoken":"refresh-me"}}}"#,
        );
        assert_eq!(
            basic(c.for_host("docker.io")),
            Some(("user".into(), "pa:ss".into()))
        );
        assert_eq!(
            basic(c.for_host("registry-1.docker.io")),
            Some(("user".into(), "pa:ss".into()))
        );
        assert_eq!(
            basic(c.for_host("registry.example.com:5000")),
            Some(("bob".into(), "pw".into()))
        );
        assert!(
            matches!(c.for_host("ghcr.io"), Some(Credential::IdentityToken(t)) if t.expose() == "refresh-me")
        );
    }

    #[test]
    fn hosts_match_exactly_never_the_first_entry() {
        let c = parse(r#"{"auths":{"registry.example.com":{"auth":"dTpw"}}}"#);
        assert!(c.for_host("other.example.com").is_none());
        assert!(
            c.for_host("registry.example.com:5000").is_none(),
            "a port is another host"
        );
        assert!(c.for_host("docker.io").is_none());
    }

    #[test]
    fn the_pull_secret_wins_over_the_config_file_and_both_are_kept() {
        let secret = parse(r#"{"auths":{"a.example":{"auth":"czpz"}}}"#);
        let file =
            parse(r#"{"auths":{"a.example":{"auth":"ZjpmZg=="},"b.example":{"auth":"ZjpmZg=="}}}"#);
        let merged = secret.merged_over(file);
        assert_eq!(
            basic(merged.for_host("a.example")),
            Some(("s".into(), "s".into()))
        );
        assert_eq!(
            basic(merged.for_host("b.example")),
            Some(("f".into(), "ff".into()))
        );
    }

    #[test]
    fn errors_name_the_source_never_the_content() {
        for bad in [
            "not json hunter2",
            r#"{"auths":{"x":{"auth":"!!hunter2"}}}"#,
            r#"{"auths":{"x":{"auth":"aHVudGVyMg=="}}}"#,
        ] {
            let err = Credentials::parse(&Secret::new(bad), "CODER_IMAGE_PULL_SECRET")
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("CODER_IMAGE_PULL_SECRET") && !err.contains("hunter2"),
                "{err}"
            );
        }
    }

    #[test]
    fn credential_helpers_are_reported_not_silently_ignored() {
        let c = parse(r#"{"auths":{},"credsStore":"desktop","credHelpers":{"gcr.io":"gcloud"}}"#);
        assert_eq!(c.warnings.len(), 2);
    }
}
