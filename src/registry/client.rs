//! The registry client: one reqwest client talking to one repository of one registry.
//!
//! Owns: the HTTP client (TLS roots from `crate::tls`, timeouts, redirects), the registry's
//! base URL (`https://`, or `http://` for `ENVBOX_INSECURE_REGISTRIES`), probing `/v2/` for
//! the auth challenge, holding the `Authorization` value `super::auth` got for it (replaced by
//! a re-authentication when a token expires), manifest GETs, and turning every answer or
//! transport error into a [`RegistryError`] or a [`Failure`] that `super::retry::run` retries.
//! Credentials go only to the registry's own host: the `Authorization` header is attached to
//! requests for its URLs alone, and reqwest drops it on redirects to other hosts. It never
//! writes anything (blobs: `super::fetch`).

use std::sync::RwLock;

use url::Url;

use super::challenge::{self, Challenge};
use super::credentials::Credential;
use super::retry::{self, chain, status_failure, tls_error, Failure, GaveUp, Step, TlsError};
use super::{auth, RegistryConfig, RegistryError};
use crate::config::Secret;
use crate::digest::Digest;
use crate::image::{manifest, normalize_host, ImageError, ImageRef};
use crate::tls;

pub(crate) struct Client {
    pub http: reqwest::Client,
    /// The repository (tag or digest aside) this client serves.
    pub reference: ImageRef,
    /// The normalised registry host (`docker.io` for Docker Hub).
    pub registry: String,
    /// `scheme://host[:port]/` of the registry API (`https://index.docker.io/` for Docker Hub).
    pub base: Url,
    pub credential: Option<Credential>,
    /// `Authorization` value for the registry's own URLs.
    authorization: RwLock<Option<Secret>>,
    /// Held while re-authenticating, so parallel transfers that all see an expired token get
    /// one new one.
    reauthenticating: tokio::sync::Mutex<()>,
}

/// `host[:port]` of a URL (the port only when it is not the scheme's default).
pub(crate) fn authority(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    }
}

impl Client {
    /// Connects, probes and authenticates.
    pub(crate) async fn open(
        config: &RegistryConfig,
        reference: &ImageRef,
    ) -> Result<Client, RegistryError> {
        let registry = reference.host();
        let insecure = config
            .insecure
            .iter()
            .any(|h| normalize_host(h) == registry);
        let scheme = if insecure { "http" } else { "https" };
        let protocol = |detail: String| RegistryError::Protocol {
            reference: reference.to_string(),
            registry: registry.clone(),
            detail,
        };
        let api_host = reference.reference.resolve_registry();
        let base = Url::parse(&format!("{scheme}://{api_host}/"))
            .map_err(|e| protocol(format!("the registry address {api_host:?}: {e}")))?;
        let http = tls::client_builder(&config.extra_roots)
            .map_err(&protocol)?
            .connect_timeout(config.connect_timeout)
            .read_timeout(config.read_timeout)
            .user_agent(concat!("envbox/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::limited(10))
            .build()
            .map_err(|e| protocol(chain(&e)))?;
        let client = Client {
            http,
            reference: reference.clone(),
            credential: config.credentials.for_host(&registry).cloned(),
            registry,
            base,
            authorization: RwLock::new(None),
            reauthenticating: tokio::sync::Mutex::new(()),
        };
        client.authenticate(config).await?;
        Ok(client)
    }

    /// Whether the registry is reached over plain HTTP (`ENVBOX_INSECURE_REGISTRIES`).
    pub(crate) fn plain_http(&self) -> bool {
        self.base.scheme() == "http"
    }

    /// The `Authorization` value for the registry's own URLs, if any.
    pub(crate) fn authorization(&self) -> Option<Secret> {
        self.authorization
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    async fn authenticate(&self, config: &RegistryConfig) -> Result<(), RegistryError> {
        let challenges = self.probe(config).await?;
        let authorization = auth::authorization(self, config, &challenges).await?;
        *self
            .authorization
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = authorization;
        Ok(())
    }

    /// Runs the probe and the token dance again (a token expired during a long download),
    /// unless another transfer did so since `seen` was the `Authorization` in use.
    pub(crate) async fn reauthenticate(
        &self,
        config: &RegistryConfig,
        seen: Option<&Secret>,
    ) -> Result<(), RegistryError> {
        let _one_at_a_time = self.reauthenticating.lock().await;
        let current = self.authorization();
        if current.as_ref().map(Secret::expose) != seen.map(Secret::expose) {
            return Ok(());
        }
        self.authenticate(config).await
    }

    /// `GET /v2/`: the challenges of a 401 (none otherwise). Over plain HTTP, an answer that is
    /// not HTTP (or Go's 400 to plain HTTP on a TLS port) means the registry speaks HTTPS.
    async fn probe(&self, config: &RegistryConfig) -> Result<Vec<Challenge>, RegistryError> {
        let url = &self.url(&["v2", ""]);
        let not_plain_http = |detail| RegistryError::NotPlainHttp {
            registry: self.registry.clone(),
            detail,
        };
        let attempt = move |()| async move {
            let response = match self.http.get(url.clone()).send().await {
                Ok(response) => response,
                Err(e) if self.plain_http() && !e.is_connect() && !e.is_timeout() => {
                    return Step::Fatal(not_plain_http(chain(&e)))
                }
                Err(e) => return self.transport_step(&e, config, ()),
            };
            if let Some(failure) = status_failure(&response) {
                return Step::Retry((), failure);
            }
            match response.status().as_u16() {
                400 if self.plain_http() => Step::Fatal(not_plain_http(format!("400 from {url}"))),
                401 => match response.headers().get(reqwest::header::WWW_AUTHENTICATE) {
                    None => Step::Done(Vec::new()),
                    Some(value) => match value.to_str() {
                        Ok(text) => match challenge::parse(text) {
                            Ok(challenges) => Step::Done(challenges),
                            Err(e) => Step::Fatal(self.protocol(format!("401 from {url}: {e}"))),
                        },
                        Err(_) => Step::Fatal(self.protocol(format!(
                            "401 from {url}: its WWW-Authenticate header is not ASCII"
                        ))),
                    },
                },
                _ => Step::Done(Vec::new()),
            }
        };
        let what = format!("reaching registry {}", self.registry);
        retry::run(
            config,
            format!("registry {}", self.registry),
            (),
            attempt,
            |g| self.gave_up(what, g),
        )
        .await
    }

    /// Fetches a manifest (raw bytes), retrying transient failures.
    pub(crate) async fn manifest(
        &self,
        config: &RegistryConfig,
        reference: &ImageRef,
    ) -> Result<Vec<u8>, RegistryError> {
        let what = match reference.to_string() == self.reference.to_string() {
            true => "downloading the manifest".to_owned(),
            false => format!("downloading the manifest {reference}"),
        };
        let r = &reference.reference;
        let tag_or_digest = r.digest().or(r.tag()).unwrap_or("latest");
        let url = &self.repository_url(&["manifests", tag_or_digest]);
        let accept = manifest::ACCEPTED.join(", ");
        let accept = &accept;
        let attempt = move |()| async move {
            let mut request = self
                .http
                .get(url.clone())
                .header(reqwest::header::ACCEPT, accept.as_str());
            if let Some(authorization) = self.authorization() {
                request = request.header(reqwest::header::AUTHORIZATION, authorization.expose());
            }
            let response = match request.send().await {
                Ok(response) => response,
                Err(e) => return self.transport_step(&e, config, ()),
            };
            if let Some(failure) = status_failure(&response) {
                return Step::Retry((), failure);
            }
            let status = response.status().as_u16();
            if status != 200 {
                let detail = error_detail(response).await;
                return Step::Fatal(self.refused(status, reference, detail));
            }
            read_document(response, reference)
                .await
                .unwrap_or_else(|e| self.transport_step(&e, config, ()))
        };
        retry::run(
            config,
            format!("the manifest of {reference}"),
            (),
            attempt,
            |g| self.gave_up(what, g),
        )
        .await
    }

    /// `base` + `segments`, each percent-encoded as a path segment.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("an http(s) URL has a path")
            .pop_if_empty()
            .extend(segments);
        url
    }

    /// `/v2/<repository>/` + `segments`.
    fn repository_url(&self, segments: &[&str]) -> Url {
        let repository = self.reference.reference.repository();
        let all: Vec<&str> = std::iter::once("v2")
            .chain(repository.split('/'))
            .chain(segments.iter().copied())
            .collect();
        self.url(&all)
    }

    /// Where the registry serves blob `digest`.
    pub(crate) fn blob_url(&self, digest: &Digest) -> Url {
        self.repository_url(&["blobs", &digest.to_string()])
    }

    /// A transport error (no HTTP answer) of one attempt: TLS failures are fatal, the rest is
    /// retried within its budget.
    pub(crate) fn transport_step<S, T>(
        &self,
        error: &reqwest::Error,
        config: &RegistryConfig,
        state: S,
    ) -> Step<S, T> {
        match Failure::of(error, config) {
            Some(failure) => Step::Retry(state, failure),
            None => Step::Fatal(self.fatal(error)),
        }
    }

    /// A transport error that no retry helps.
    pub(crate) fn fatal(&self, error: &reqwest::Error) -> RegistryError {
        let detail = chain(error);
        match tls_error(error) {
            Some(TlsError::Certificate) => RegistryError::Certificate {
                registry: self.registry.clone(),
                detail,
            },
            Some(TlsError::NotTls) => RegistryError::NotHttps {
                registry: self.registry.clone(),
                detail,
            },
            None => self.protocol(detail),
        }
    }

    pub(crate) fn protocol(&self, detail: String) -> RegistryError {
        RegistryError::Protocol {
            reference: self.reference.to_string(),
            registry: self.registry.clone(),
            detail,
        }
    }

    /// The error of a request the registry refused with `status` (not 429 or 5xx).
    pub(crate) fn refused(
        &self,
        status: u16,
        reference: &ImageRef,
        detail: String,
    ) -> RegistryError {
        let reference = reference.to_string();
        match status {
            401 => self.unauthorized(detail),
            403 => RegistryError::Denied { reference, detail },
            404 => RegistryError::NotFound { reference, detail },
            _ => self.protocol(detail),
        }
    }

    /// The error of a request whose retries are spent.
    pub(crate) fn gave_up(&self, what: String, gave_up: GaveUp) -> RegistryError {
        RegistryError::Transfer {
            reference: self.reference.to_string(),
            what,
            attempts: gave_up.attempts,
            elapsed: gave_up.elapsed,
            advice: gave_up.failure.advice(&self.registry),
            failure: Box::new(gave_up.failure),
        }
    }

    pub(crate) fn unauthorized(&self, detail: String) -> RegistryError {
        match self.credential.is_some() {
            true => RegistryError::Unauthorized {
                reference: self.reference.to_string(),
                registry: self.registry.clone(),
                detail,
            },
            false => RegistryError::CredentialsRequired {
                reference: self.reference.to_string(),
                registry: self.registry.clone(),
            },
        }
    }
}

/// A manifest's body, refused as soon as it is known to be over
/// [`manifest::MAX_DOCUMENT_SIZE`]: by its `Content-Length`, else once that much has come.
async fn read_document(
    mut response: reqwest::Response,
    reference: &ImageRef,
) -> Result<Step<(), Vec<u8>>, reqwest::Error> {
    let limit = manifest::MAX_DOCUMENT_SIZE;
    let too_large = |size| {
        Step::Fatal(
            ImageError::TooLarge {
                reference: reference.to_string(),
                what: "the manifest".into(),
                size,
                limit,
            }
            .into(),
        )
    };
    if let Some(length) = response.content_length().filter(|l| *l > limit) {
        return Ok(too_large(Some(length)));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if (body.len() + chunk.len()) as u64 > limit {
            return Ok(too_large(None));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Step::Done(body))
}

/// Longest error body read for its message.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// `STATUS from URL`, with the messages of the registry's error body (`{"errors":[{"code",
/// "message"}]}`, OAuth2's `error_description`, a token service's `details`) when it has any.
pub(crate) async fn error_detail(response: reqwest::Response) -> String {
    let head = format!("{} from {}", response.status().as_u16(), response.url());
    let mut body = Vec::new();
    let mut response = response;
    while let Ok(Some(chunk)) = response.chunk().await {
        body.extend_from_slice(&chunk);
        if body.len() >= ERROR_BODY_LIMIT {
            break;
        }
    }
    match messages(&body) {
        Some(messages) => format!("{head}: {messages}"),
        None => head,
    }
}

/// The human-readable messages of an error body, if it is JSON that has any.
fn messages(body: &[u8]) -> Option<String> {
    let json: serde_json::Value = serde_json::from_slice(body).ok()?;
    let str_of = |key: &str| json.get(key).and_then(|v| v.as_str()).map(str::to_owned);
    let listed: Vec<String> = json
        .get("errors")
        .and_then(|e| e.as_array())
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let message = e.get("message").and_then(|m| m.as_str());
            let code = e.get("code").and_then(|c| c.as_str());
            match (code, message) {
                (Some(code), Some(message)) => Some(format!("{code}: {message}")),
                (None, Some(message)) => Some(message.to_owned()),
                (Some(code), None) => Some(code.to_owned()),
                (None, None) => None,
            }
        })
        .collect();
    if !listed.is_empty() {
        return Some(listed.join("; "));
    }
    str_of("error_description")
        .or_else(|| str_of("details"))
        .or_else(|| str_of("error"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_give_their_messages() {
        let registry =
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{}}]}"#;
        assert_eq!(
            messages(registry).as_deref(),
            Some("MANIFEST_UNKNOWN: manifest unknown")
        );
        let oauth = br#"{"error":"invalid_grant","error_description":"refresh token expired"}"#;
        assert_eq!(messages(oauth).as_deref(), Some("refresh token expired"));
        assert_eq!(messages(b"<html>busy</html>"), None);
        assert_eq!(messages(b"{}"), None);
    }

    #[test]
    fn authorities_leave_out_default_ports() {
        let at = |u: &str| authority(&Url::parse(u).unwrap());
        assert_eq!(at("https://auth.example.com/token"), "auth.example.com");
        assert_eq!(at("https://auth.example.com:443/token"), "auth.example.com");
        assert_eq!(at("http://127.0.0.1:5001/token?x"), "127.0.0.1:5001");
    }
}
