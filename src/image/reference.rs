//! Image references, normalised the way Docker does.
//!
//! Owns: parsing `CODER_INNER_IMAGE` (`ubuntu` = `docker.io/library/ubuntu:latest`; tags,
//! `@sha256:` digests, registries with ports) into a [`ImageRef`], and the normalised host that
//! credentials are matched by. It never talks to a registry.

pub(crate) mod plain;

use oci_spec::distribution::Reference;

use super::ImageError;
use crate::digest::Digest;

/// A parsed, normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// The normalised reference (registry, repository, tag or digest).
    pub reference: Reference,
}

impl ImageRef {
    /// Parses and normalises a reference: the common forms without a regular expression
    /// ([`plain`]), the rest through oci-spec's grammar.
    pub fn parse(text: &str) -> Result<ImageRef, ImageError> {
        let reference = match plain::parse(text) {
            Some(reference) => reference,
            None => text.parse().map_err(|e| ImageError::Reference {
                reference: text.to_owned(),
                reason: format!("{e}"),
            })?,
        };
        if reference
            .repository()
            .chars()
            .any(|c| c.is_ascii_uppercase())
        {
            return Err(ImageError::Reference {
                reference: text.to_owned(),
                reason: "repository names must be lower-case".into(),
            });
        }
        if let Some(digest) = reference.digest() {
            Digest::parse(digest).map_err(|e| ImageError::Reference {
                reference: text.to_owned(),
                reason: e.to_string(),
            })?;
        }
        Ok(ImageRef { reference })
    }

    /// The normalised reference, e.g. `docker.io/library/ubuntu:latest`.
    pub(crate) fn normalized(&self) -> String {
        self.reference.whole()
    }

    /// `registry/repository` without tag or digest.
    pub(crate) fn normalized_repository(&self) -> String {
        format!(
            "{}/{}",
            self.reference.registry(),
            self.reference.repository()
        )
    }

    /// The registry host credentials are looked up by (`docker.io` for Docker Hub).
    pub(crate) fn host(&self) -> String {
        normalize_host(self.reference.registry())
    }

    /// The digest the reference pins, if any.
    pub(crate) fn digest(&self) -> Option<Digest> {
        self.reference.digest().and_then(|d| Digest::parse(d).ok())
    }

    /// The same repository at `digest`.
    pub(crate) fn at(&self, digest: &Digest) -> ImageRef {
        ImageRef {
            reference: Reference::with_digest(
                self.reference.registry().to_owned(),
                self.reference.repository().to_owned(),
                digest.to_string(),
            ),
        }
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.normalized())
    }
}

/// Docker Hub's many names.
const DOCKER_HUB_ALIASES: [&str; 5] = [
    "docker.io",
    "index.docker.io",
    "registry-1.docker.io",
    "registry.hub.docker.com",
    "hub.docker.com",
];

/// Normalises a registry name or docker config key to `host[:port]`, lower-case: scheme and
/// path dropped (`https://index.docker.io/v1/` is Docker Hub), Docker Hub aliases folded into
/// `docker.io`.
pub fn normalize_host(key: &str) -> String {
    let lower = key.to_ascii_lowercase();
    let without_scheme = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"))
        .unwrap_or(&lower);
    let host = without_scheme
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    if DOCKER_HUB_ALIASES.contains(&host.as_str()) {
        "docker.io".to_owned()
    } else {
        host
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_defaults() {
        let r = ImageRef::parse("ubuntu").unwrap();
        assert_eq!(r.normalized(), "docker.io/library/ubuntu:latest");
        assert_eq!(r.host(), "docker.io");
        let r = ImageRef::parse("codercom/enterprise-base:ubuntu").unwrap();
        assert_eq!(r.normalized(), "docker.io/codercom/enterprise-base:ubuntu");
    }

    #[test]
    fn registries_ports_and_digests() {
        let d = format!("sha256:{}", "a".repeat(64));
        let r = ImageRef::parse(&format!("127.0.0.1:5000/team/dev@{d}")).unwrap();
        assert_eq!(r.host(), "127.0.0.1:5000");
        assert_eq!(r.digest().unwrap().to_string(), d);
        assert!(ImageRef::parse("UPPER/case").is_err());
        assert!(ImageRef::parse("x@sha256:zz").is_err());
    }

    #[test]
    fn hosts_are_normalised() {
        for key in [
            "https://index.docker.io/v1/",
            "docker.io",
            "index.docker.io",
            "registry-1.docker.io",
            "HTTPS://Docker.IO",
        ] {
            assert_eq!(normalize_host(key), "docker.io", "{key}");
        }
        assert_eq!(
            normalize_host("https://Registry.Example.com:5000/v2/"),
            "registry.example.com:5000"
        );
        assert_eq!(normalize_host("ghcr.io"), "ghcr.io");
    }
}
