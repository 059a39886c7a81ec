//! One authenticated conversation with one registry about one repository.
//!
//! Owns: the HTTP clients (oci-client for auth and manifests, reqwest for blob GETs, both with
//! the same roots), probing `/v2/` for the auth challenge, refusing to hand credentials to a
//! token realm on another host over plain HTTP, exchanging identity tokens, calling
//! oci-client's `auth` first so token errors surface as such, and mapping every failure to a
//! [`RegistryError`] or a [`Failure`] that `super::retry` retries. Credentials go only to the
//! registry's own host: the `Authorization` header is attached to requests for its URLs alone,
//! and reqwest drops it on redirects to other hosts.

use std::time::Duration;

use base64::Engine as _;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, RegistryOperation};

use super::credentials::Credential;
use super::retry::{tls_error, Failure, GaveUp, Retry, TlsError};
use super::{RegistryConfig, RegistryError};
use crate::config::Secret;
use crate::image::{manifest, normalize_host, ImageRef};
use crate::tls;

/// What went wrong with one attempt: give up, or try again.
pub(crate) enum Attempt {
    Fatal(RegistryError),
    Retry(Failure),
}

pub(crate) struct Session {
    client: Client,
    oci_auth: RegistryAuth,
    /// What transfers need; updated by (re-)authentication.
    transport: Transport,
}

/// The `WWW-Authenticate` challenge of `/v2/`.
#[derive(Debug, Default, PartialEq, Eq)]
struct Challenge {
    bearer: bool,
    realm: Option<String>,
    service: Option<String>,
}

fn parse_challenge(header: &str) -> Challenge {
    let (scheme, params) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
    let mut challenge = Challenge {
        bearer: scheme.eq_ignore_ascii_case("bearer"),
        ..Default::default()
    };
    for part in params.split(',') {
        if let Some((key, value)) = part.trim().split_once('=') {
            let value = value.trim().trim_matches('"').to_owned();
            match key.trim() {
                "realm" => challenge.realm = Some(value),
                "service" => challenge.service = Some(value),
                _ => {}
            }
        }
    }
    challenge
}

/// Host (with port) and scheme of a URL, without a URL crate.
fn scheme_and_host(url: &str) -> (&str, &str) {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    (scheme, rest.split('/').next().unwrap_or_default())
}

/// Every message of an error chain, joined.
pub(crate) fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![error.to_string()];
    let mut current = error.source();
    while let Some(e) = current {
        let text = e.to_string();
        if !parts.last().is_some_and(|p| p.contains(&text)) {
            parts.push(text);
        }
        current = e.source();
    }
    parts.join(": ")
}

/// How long `Retry-After` asks to wait (callers cap it at their longest backoff).
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    retry_after_at(headers, std::time::SystemTime::now())
}

/// [`retry_after`] as of `now`: delay-seconds, or an HTTP-date (RFC 9110) turned into the time
/// left until it (none left: retry at once).
fn retry_after_at(
    headers: &reqwest::header::HeaderMap,
    now: std::time::SystemTime,
) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    match value.parse::<u64>() {
        Ok(seconds) => Some(Duration::from_secs(seconds)),
        Err(_) => {
            let date = httpdate::parse_http_date(value).ok()?;
            Some(date.duration_since(now).unwrap_or(Duration::ZERO))
        }
    }
}

fn basic_header(username: &str, password: &Secret) -> Secret {
    let raw = format!("{username}:{}", password.expose());
    Secret::new(format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    ))
}

/// What one blob GET needs, copied out of the session so transfers run in parallel while a
/// re-authentication can still update the session for later attempts.
#[derive(Clone)]
pub(crate) struct Transport {
    pub http: reqwest::Client,
    pub reference: ImageRef,
    /// The normalised registry host (`docker.io` for Docker Hub).
    pub registry: String,
    /// `scheme://host` of the registry API (`https://index.docker.io` for Docker Hub).
    pub base_url: String,
    /// `Authorization` value for the registry's own URLs.
    pub auth_header: Option<Secret>,
    pub has_credentials: bool,
}

impl Transport {
    /// Whether the registry is reached over plain HTTP (`ENVBOX_INSECURE_REGISTRIES`).
    pub fn plain_http(&self) -> bool {
        self.base_url.starts_with("http://")
    }

    /// A transport error (no HTTP answer) of one attempt: TLS failures are fatal, the rest is
    /// retried within its budget.
    pub fn attempt(&self, error: &reqwest::Error, config: &RegistryConfig) -> Attempt {
        match Failure::of(error, config) {
            Some(failure) => Attempt::Retry(failure),
            None => Attempt::Fatal(self.fatal(error)),
        }
    }

    /// A transport error that no retry helps.
    pub fn fatal(&self, error: &reqwest::Error) -> RegistryError {
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
            None => RegistryError::Protocol {
                reference: self.reference.to_string(),
                registry: self.registry.clone(),
                detail,
            },
        }
    }

    /// The error of a request whose retries are spent.
    pub fn gave_up(&self, what: String, gave_up: GaveUp) -> RegistryError {
        RegistryError::Transfer {
            reference: self.reference.to_string(),
            what,
            attempts: gave_up.attempts,
            elapsed: gave_up.elapsed,
            advice: gave_up.failure.advice(&self.registry),
            failure: Box::new(gave_up.failure),
        }
    }

    pub fn unauthorized(&self, detail: String) -> RegistryError {
        unauthorized(
            &self.reference,
            &self.registry,
            self.has_credentials,
            detail,
        )
    }

    pub fn blob_url(&self, digest: &crate::digest::Digest) -> String {
        format!(
            "{}/v2/{}/blobs/{digest}",
            self.base_url,
            self.reference.reference.repository()
        )
    }
}

fn unauthorized(
    reference: &ImageRef,
    registry: &str,
    has_credentials: bool,
    detail: String,
) -> RegistryError {
    if has_credentials {
        RegistryError::Unauthorized {
            reference: reference.to_string(),
            registry: registry.to_owned(),
            detail,
        }
    } else {
        RegistryError::CredentialsRequired {
            reference: reference.to_string(),
            registry: registry.to_owned(),
        }
    }
}

impl Session {
    pub fn transport(&self) -> Transport {
        self.transport.clone()
    }

    /// Connects, probes and authenticates.
    pub async fn open(
        config: &RegistryConfig,
        reference: &ImageRef,
    ) -> Result<Session, RegistryError> {
        tls::install_crypto_provider();
        let registry = reference.host();
        let api_host = reference.reference.resolve_registry().to_owned();
        let insecure = config
            .insecure
            .iter()
            .any(|h| normalize_host(h) == registry);
        let scheme = if insecure { "http" } else { "https" };
        let base_url = format!("{scheme}://{api_host}");
        let http = http_client(config).map_err(|detail| RegistryError::Protocol {
            reference: reference.to_string(),
            registry: registry.clone(),
            detail,
        })?;
        // `try_from`, not `Client::new`: that one falls back to a default client (another
        // protocol, no extra CA, no timeouts) on any error, saying so only in a log line.
        let client = Client::try_from(ClientConfig {
            protocol: if insecure {
                ClientProtocol::HttpsExcept(vec![api_host.clone(), registry.clone()])
            } else {
                ClientProtocol::Https
            },
            tls_certs_only: tls::system_roots()
                .into_iter()
                .flatten()
                .map(|der| Certificate {
                    encoding: CertificateEncoding::Der,
                    data: der.to_vec(),
                })
                .collect(),
            extra_root_certificates: config
                .extra_roots
                .iter()
                .map(|pem| Certificate {
                    encoding: CertificateEncoding::Pem,
                    data: pem.as_bytes().to_vec(),
                })
                .collect(),
            platform_resolver: None,
            connect_timeout: Some(config.connect_timeout),
            read_timeout: Some(config.read_timeout),
            user_agent: concat!("envbox/", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        })
        .map_err(|e| RegistryError::Protocol {
            reference: reference.to_string(),
            registry: registry.clone(),
            detail: format!("setting up the OCI client: {e}"),
        })?;
        let mut session = Session {
            client,
            oci_auth: RegistryAuth::Anonymous,
            transport: Transport {
                http,
                reference: reference.clone(),
                registry,
                base_url,
                auth_header: None,
                has_credentials: false,
            },
        };
        let challenge = session.probe(config).await?;
        session.authenticate(config, &challenge).await?;
        Ok(session)
    }

    /// `GET /v2/`, retried on transient failures within their budgets; TLS errors fail at
    /// once. Over plain HTTP, an answer that is not HTTP (or Go's 400 to plain HTTP on a TLS
    /// port) means the registry speaks HTTPS.
    async fn probe(&self, config: &RegistryConfig) -> Result<Challenge, RegistryError> {
        let url = format!("{}/v2/", self.transport.base_url);
        let not_plain_http = |detail| RegistryError::NotPlainHttp {
            registry: self.transport.registry.clone(),
            detail,
        };
        let mut retry = Retry::new(config, format!("registry {}", self.transport.registry));
        loop {
            let failure = match self.transport.http.get(&url).send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    if status == 429 || status >= 500 {
                        Failure::Status {
                            status,
                            url: url.clone(),
                            after: retry_after(response.headers()),
                        }
                    } else if status == 400 && self.transport.plain_http() {
                        return Err(not_plain_http(format!("400 from {url}")));
                    } else {
                        return Ok(response
                            .headers()
                            .get(reqwest::header::WWW_AUTHENTICATE)
                            .and_then(|h| h.to_str().ok())
                            .map(parse_challenge)
                            .unwrap_or_default());
                    }
                }
                Err(e) if self.transport.plain_http() && !e.is_connect() && !e.is_timeout() => {
                    return Err(not_plain_http(chain(&e)))
                }
                Err(e) => match self.transport.attempt(&e, config) {
                    Attempt::Fatal(error) => return Err(error),
                    Attempt::Retry(failure) => failure,
                },
            };
            retry.failed(failure).await.map_err(|gave_up| {
                self.transport.gave_up(
                    format!("reaching registry {}", self.transport.registry),
                    gave_up,
                )
            })?;
        }
    }

    async fn authenticate(
        &mut self,
        config: &RegistryConfig,
        challenge: &Challenge,
    ) -> Result<(), RegistryError> {
        let credential = config
            .credentials
            .for_host(&self.transport.registry)
            .cloned();
        self.transport.has_credentials = credential.is_some();
        if let (Some(_), true, Some(realm)) = (&credential, challenge.bearer, &challenge.realm) {
            let (realm_scheme, realm_host) = scheme_and_host(realm);
            let (_, api_host) = scheme_and_host(&self.transport.base_url);
            let same_host =
                realm_host == api_host || normalize_host(realm_host) == self.transport.registry;
            if realm_scheme != "https" && !same_host {
                return Err(RegistryError::InsecureTokenRealm {
                    registry: self.transport.registry.clone(),
                    realm: realm.clone(),
                });
            }
        }
        self.oci_auth = match &credential {
            None => RegistryAuth::Anonymous,
            Some(Credential::Basic { username, password }) => {
                RegistryAuth::Basic(username.clone(), password.expose().to_owned())
            }
            Some(Credential::IdentityToken(token)) => {
                RegistryAuth::Bearer(self.exchange_identity_token(challenge, token).await?)
            }
        };
        let token = self
            .client
            .auth(
                &self.transport.reference.reference,
                &self.oci_auth,
                RegistryOperation::Pull,
            )
            .await
            .map_err(|e| self.auth_error(e))?;
        self.transport.auth_header = match (token, &credential, &self.oci_auth) {
            (Some(token), _, _) => Some(Secret::new(format!("Bearer {token}"))),
            (None, _, RegistryAuth::Bearer(token)) => Some(Secret::new(format!("Bearer {token}"))),
            (None, Some(Credential::Basic { username, password }), _) => {
                Some(basic_header(username, password))
            }
            (None, _, _) => None,
        };
        Ok(())
    }

    /// Re-runs the token dance (a token expired during a long download).
    pub async fn reauthenticate(&mut self, config: &RegistryConfig) -> Result<(), RegistryError> {
        let challenge = self.probe(config).await?;
        self.authenticate(config, &challenge).await
    }

    /// OAuth2 refresh-token grant at the realm (docker's `identitytoken`).
    async fn exchange_identity_token(
        &self,
        challenge: &Challenge,
        token: &Secret,
    ) -> Result<String, RegistryError> {
        let token_error = |detail: String| RegistryError::Token {
            reference: self.transport.reference.to_string(),
            registry: self.transport.registry.clone(),
            detail,
        };
        let realm = challenge.realm.as_deref().ok_or_else(|| {
            token_error("the registry offers no token service for an identity token".into())
        })?;
        let scope = format!(
            "repository:{}:pull",
            self.transport.reference.reference.repository()
        );
        let form = [
            ("grant_type", "refresh_token"),
            ("service", challenge.service.as_deref().unwrap_or_default()),
            ("scope", scope.as_str()),
            ("client_id", "envbox"),
            ("refresh_token", token.expose()),
        ];
        let body = form
            .iter()
            .map(|(k, v)| format!("{k}={}", urlencode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let response = self
            .transport
            .http
            .post(realm)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(body)
            .send()
            .await
            .map_err(|e| token_error(chain(&e)))?;
        let status = response.status();
        let json: serde_json::Value = response.json().await.map_err(|e| token_error(chain(&e)))?;
        if !status.is_success() {
            return Err(token_error(format!(
                "the token service answered {status} to the identity token"
            )));
        }
        json.get("access_token")
            .or_else(|| json.get("token"))
            .and_then(|t| t.as_str())
            .map(str::to_owned)
            .ok_or_else(|| token_error("the token service's answer has no access_token".into()))
    }

    fn auth_error(&self, error: OciDistributionError) -> RegistryError {
        match error {
            OciDistributionError::UnauthorizedError { url } => {
                self.transport.unauthorized(format!("401 from {url}"))
            }
            OciDistributionError::RequestError(e) => self.transport.fatal(&e),
            other => RegistryError::Token {
                reference: self.transport.reference.to_string(),
                registry: self.transport.registry.clone(),
                detail: other.to_string(),
            },
        }
    }

    /// Maps an oci-client failure of a manifest request.
    fn classify(
        &self,
        config: &RegistryConfig,
        reference: &ImageRef,
        error: OciDistributionError,
    ) -> Attempt {
        let what = reference.to_string();
        match error {
            OciDistributionError::UnauthorizedError { url } => {
                Attempt::Fatal(self.transport.unauthorized(format!("401 from {url}")))
            }
            OciDistributionError::ImageManifestNotFoundError(detail) => {
                Attempt::Fatal(RegistryError::NotFound {
                    reference: what,
                    detail,
                })
            }
            OciDistributionError::RegistryError { envelope, url } => {
                let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
                let detail = format!(
                    "{url}: {}",
                    envelope
                        .errors
                        .iter()
                        .map(|e| e.message.clone())
                        .collect::<Vec<_>>()
                        .join("; ")
                );
                if codes
                    .iter()
                    .any(|c| matches!(c, OciErrorCode::Toomanyrequests))
                {
                    Attempt::Retry(Failure::Status {
                        status: 429,
                        url,
                        after: None,
                    })
                } else if codes
                    .iter()
                    .any(|c| matches!(c, OciErrorCode::Unauthorized))
                {
                    Attempt::Fatal(self.transport.unauthorized(detail))
                } else if codes.iter().any(|c| matches!(c, OciErrorCode::Denied)) {
                    Attempt::Fatal(RegistryError::Denied {
                        reference: what,
                        detail,
                    })
                } else if codes.iter().any(|c| {
                    matches!(
                        c,
                        OciErrorCode::ManifestUnknown
                            | OciErrorCode::NameUnknown
                            | OciErrorCode::NotFound
                            | OciErrorCode::BlobUnknown
                    )
                }) {
                    Attempt::Fatal(RegistryError::NotFound {
                        reference: what,
                        detail,
                    })
                } else {
                    Attempt::Fatal(RegistryError::Protocol {
                        reference: what,
                        registry: self.transport.registry.clone(),
                        detail,
                    })
                }
            }
            OciDistributionError::ServerError { code, url, message } => {
                if code == 429 || (500..=599).contains(&code) {
                    return Attempt::Retry(Failure::Status {
                        status: code,
                        url,
                        after: None,
                    });
                }
                let detail = format!("{code} from {url}: {message}");
                match code {
                    404 => Attempt::Fatal(RegistryError::NotFound {
                        reference: what,
                        detail,
                    }),
                    403 => Attempt::Fatal(RegistryError::Denied {
                        reference: what,
                        detail,
                    }),
                    _ => Attempt::Fatal(RegistryError::Protocol {
                        reference: what,
                        registry: self.transport.registry.clone(),
                        detail,
                    }),
                }
            }
            OciDistributionError::RequestError(e) => self.transport.attempt(&e, config),
            other => Attempt::Fatal(RegistryError::Protocol {
                reference: what,
                registry: self.transport.registry.clone(),
                detail: other.to_string(),
            }),
        }
    }

    /// Fetches a manifest (raw bytes and its content type), retrying transient failures.
    pub async fn manifest(
        &self,
        config: &RegistryConfig,
        reference: &ImageRef,
    ) -> Result<Vec<u8>, RegistryError> {
        let what = match reference.to_string() == self.transport.reference.to_string() {
            true => "downloading the manifest".to_owned(),
            false => format!("downloading the manifest {reference}"),
        };
        let mut retry = Retry::new(config, format!("the manifest of {reference}"));
        loop {
            let result = self
                .client
                .pull_manifest_raw(&reference.reference, &self.oci_auth, &manifest::ACCEPTED)
                .await;
            let failure = match result {
                Ok((bytes, _digest)) => return Ok(bytes.to_vec()),
                Err(e) => match self.classify(config, reference, e) {
                    Attempt::Fatal(e) => return Err(e),
                    Attempt::Retry(failure) => failure,
                },
            };
            retry
                .failed(failure)
                .await
                .map_err(|gave_up| self.transport.gave_up(what.clone(), gave_up))?;
        }
    }
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn http_client(config: &RegistryConfig) -> Result<reqwest::Client, String> {
    tls::client_builder(&config.extra_roots)?
        .connect_timeout(config.connect_timeout)
        .read_timeout(config.read_timeout)
        .user_agent(concat!("envbox/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::limited(10))
        .build()
        .map_err(|e| chain(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="x""#,
        );
        assert!(c.bearer);
        assert_eq!(c.realm.as_deref(), Some("https://auth.example.com/token"));
        assert_eq!(c.service.as_deref(), Some("registry.example.com"));
        assert!(!parse_challenge(r#"Basic realm="Registry""#).bearer);
    }

    #[test]
    fn url_parts_and_encoding() {
        assert_eq!(
            scheme_and_host("http://localhost:5001/token?x"),
            ("http", "localhost:5001")
        );
        assert_eq!(urlencode("a b/c:d"), "a%20b%2Fc%3Ad");
    }

    #[test]
    fn retry_after_seconds_or_an_http_date() {
        let at = |value: &str, now| {
            let mut h = reqwest::header::HeaderMap::new();
            h.insert(reqwest::header::RETRY_AFTER, value.parse().unwrap());
            retry_after_at(&h, now)
        };
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        assert_eq!(at("3", now), Some(Duration::from_secs(3)));
        assert_eq!(at(" 120 ", now), Some(Duration::from_secs(120)));
        assert_eq!(
            at("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        // Obsolete formats a server may still send (RFC 850, asctime).
        assert_eq!(
            at("Wednesday, 21-Oct-15 07:29:00 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            at("Wed Oct 21 07:28:10 2015", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            at("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(at("soon", now), None);
        assert_eq!(at("-5", now), None);
        let none = reqwest::header::HeaderMap::new();
        assert_eq!(retry_after_at(&none, now), None);
    }
}
