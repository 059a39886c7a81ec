//! Pulling images from OCI registries into the verified blob cache: the transport.
//!
//! Owns: everything between an image reference and verified blobs on the volume: one client
//! per pull (`client`, reqwest over rustls with the roots of `crate::tls`) that probes `/v2/`,
//! answers its challenge (`challenge`, `auth`: Docker's token flow, Basic, anonymous; the
//! credentials of `credentials`), fetches manifests and blobs (`fetch`: resume by `Range`,
//! progress), every request in the one retry loop (`retry`, a budget per kind of failure,
//! `Retry-After`). What manifests mean, and which platform's is chosen, is `crate::image`'s.
//! It never unpacks or runs anything.

mod auth;
pub(crate) mod challenge;
mod client;
mod credentials;
mod feed;
mod fetch;
mod progress;
mod pull;
mod retry;
mod sink;

use std::time::Duration;

pub use credentials::{Credential, Credentials};
pub use feed::LayerFeed;
pub use pull::{cached_blobs, pull, pull_feeding, CachedImage};
pub(crate) use retry::Failure;

use crate::cache::CacheError;
use crate::config::Settings;
use crate::image::{ImageError, Platform};
use crate::tls::{load_extra_certs, CertsError};

/// How to reach registries. Field docs state defaults (`RegistryConfig::default()`).
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Credentials by host. Default: none (anonymous pulls).
    pub credentials: Credentials,
    /// PEM CA certificates trusted besides the system roots. Default: none.
    pub extra_roots: Vec<String>,
    /// Registries (`host[:port]`) reached over plain HTTP. Default: none.
    pub insecure: Vec<String>,
    /// The platform chosen from image indexes. Default: this machine's.
    pub platform: Platform,
    /// Blobs downloaded at once. Default: 4.
    pub max_concurrent_downloads: usize,
    /// Attempts per request before giving up on a busy or failing registry (5xx, 429) or a
    /// broken connection; no connection at all gets fewer (see `retry`). Default: 10.
    pub max_attempts: u32,
    /// First retry delay, doubled per attempt up to `max_backoff`. Default: 500 ms.
    pub initial_backoff: Duration,
    /// Longest delay between attempts (and longest `Retry-After` honoured). Default: 30 s.
    pub max_backoff: Duration,
    /// Connect timeout. Default: 15 s.
    pub connect_timeout: Duration,
    /// Longest silence while reading a response. Default: 60 s.
    pub read_timeout: Duration,
    /// How often progress lines are written. Default: 2 s.
    pub progress_interval: Duration,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            credentials: Credentials::default(),
            extra_roots: Vec::new(),
            insecure: Vec::new(),
            platform: Platform::host(),
            max_concurrent_downloads: 4,
            max_attempts: 10,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(15),
            read_timeout: Duration::from_secs(60),
            progress_interval: Duration::from_secs(2),
        }
    }
}

impl RegistryConfig {
    /// The registry settings of `settings`: the pull secret merged over the docker config file
    /// (read when it exists; a path set explicitly must exist), extra CA certificates, insecure
    /// registries. Returns warnings to log (unused credential helpers, ...).
    pub(crate) fn from_settings(
        settings: &Settings,
    ) -> Result<(RegistryConfig, Vec<String>), RegistryError> {
        use crate::config::names;
        let mut credentials = match &settings.image_pull_secret {
            Some(secret) => Credentials::parse(secret, names::IMAGE_SECRET.env)?,
            None => Credentials::default(),
        };
        let docker_config = settings
            .docker_config
            .clone()
            .unwrap_or_else(|| crate::config::defaults::DOCKER_CONFIG.into());
        let origin = format!("{} {}", names::DOCKER_CONFIG.env, docker_config.display());
        match std::fs::read_to_string(&docker_config) {
            Ok(text) => {
                credentials = credentials.merged_over(Credentials::parse(
                    &crate::config::Secret::new(text),
                    &origin,
                )?);
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound && settings.docker_config.is_none() => {
            }
            Err(e) => {
                return Err(RegistryError::Credentials {
                    origin,
                    reason: e.to_string(),
                })
            }
        }
        let warnings = std::mem::take(&mut credentials.warnings);
        let extra_roots = match &settings.extra_certs_path {
            Some(path) => load_extra_certs(path)?,
            None => Vec::new(),
        };
        Ok((
            RegistryConfig {
                credentials,
                extra_roots,
                insecure: settings.insecure_registries.clone(),
                ..RegistryConfig::default()
            },
            warnings,
        ))
    }
}

/// Errors of this module. Messages say what to do where there is something to do.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each variant's #[error] message documents it
pub enum RegistryError {
    #[error("registry credentials in {origin}: {reason}")]
    Credentials { origin: String, reason: String },
    #[error(transparent)]
    Certs(#[from] CertsError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("the certificate of {registry} is not trusted ({detail}); add its CA to CODER_EXTRA_CERTS_PATH")]
    Certificate { registry: String, detail: String },
    #[error("pulling {reference}: {registry} refused the credentials for it ({detail}); check CODER_IMAGE_PULL_SECRET / CODER_DOCKER_CONFIG")]
    Unauthorized {
        reference: String,
        registry: String,
        detail: String,
    },
    #[error("pulling {reference}: {registry} requires credentials and none are configured for that host; set CODER_IMAGE_PULL_SECRET")]
    CredentialsRequired { reference: String, registry: String },
    #[error("getting a registry token for {reference} from {registry}: {detail}")]
    Token {
        reference: String,
        registry: String,
        detail: String,
    },
    #[error("refusing to send credentials for {registry} to the token service {realm}: it is another host over plain HTTP")]
    InsecureTokenRealm { registry: String, realm: String },
    #[error("image {reference} not found: {detail}")]
    NotFound { reference: String, detail: String },
    #[error("access to {reference} denied: {detail}")]
    Denied { reference: String, detail: String },
    #[error("storing blob {digest} of {reference}: {source}")]
    Store {
        reference: String,
        digest: String,
        source: CacheError,
    },
    #[error("{what} for {reference}: gave up after {attempts} attempts over {elapsed:.1?}: {failure}; {advice}")]
    Transfer {
        reference: String,
        /// "reaching registry.example.com", "downloading the manifest", ...
        what: String,
        attempts: u32,
        elapsed: std::time::Duration,
        /// The last attempt's failure.
        failure: Box<Failure>,
        advice: String,
    },
    #[error("{registry} does not speak HTTPS ({detail}); if it is a plain-HTTP registry, add {registry} to {}", crate::config::names::INSECURE_REGISTRIES)]
    NotHttps { registry: String, detail: String },
    #[error("{registry} does not answer plain HTTP ({detail}); it is listed in {} but seems to speak HTTPS: remove it from there", crate::config::names::INSECURE_REGISTRIES)]
    NotPlainHttp { registry: String, detail: String },
    #[error(
        "pulling {reference}: stopped before every blob was fetched, because another step failed"
    )]
    Stopped { reference: String },
    #[error("talking to {registry} about {reference}: {detail}")]
    Protocol {
        reference: String,
        registry: String,
        detail: String,
    },
}
