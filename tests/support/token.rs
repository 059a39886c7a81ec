//! A Docker token-auth server (the `realm` of a registry configured with `auth: token:`): `GET
//! /token?service=..&scope=..` with Basic auth (wrong credentials -> 401 with a JSON error, no
//! credentials -> an anonymous token with no access, or pull access when
//! [`TokenServer::set_anonymous_pull`] is on), `POST /token` with
//! `grant_type=refresh_token` (identity tokens) or `grant_type=password`. Tokens are ES256 JWTs
//! whose header carries `x5c` = the self-signed signing certificate that the registry trusts as
//! its `rootcertbundle`. Every request is recorded ([`TokenServer::requests`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response};
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::json;

use super::server::{self, Body, Server};
use super::tls::{self_signed_signing_cert, CertKey, TestCa};

/// The `service` the registry is configured with (and the tokens' audience).
pub const SERVICE: &str = "envbox-test-registry";
/// The tokens' issuer.
pub const ISSUER: &str = "envbox-test-token-issuer";

/// One request the token server answered.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    pub method: String,
    pub query: String,
    /// Whether the request carried an `Authorization` header at all.
    pub has_authorization: bool,
    /// The user of a Basic `Authorization` header, or of a password grant.
    pub user: Option<String>,
    pub grant_type: Option<String>,
    pub service: Option<String>,
    pub scopes: Vec<String>,
    pub status: u16,
}

struct State {
    user: String,
    password: String,
    refresh_token: Mutex<String>,
    anonymous_pull: Mutex<bool>,
    ttl_secs: Mutex<u64>,
    signing: CertKey,
    requests: Mutex<Vec<TokenRequest>>,
    counter: AtomicU64,
}

/// The running token server; stopped on drop.
pub struct TokenServer {
    /// `https://127.0.0.1:PORT/token` (or `http://` for [`TokenServer::plain_http`]).
    pub url: String,
    pub service: String,
    pub issuer: String,
    /// PEM of the token signing certificate (the registry's `rootcertbundle`).
    pub signing_cert_pem: String,
    state: Arc<State>,
    _server: Server,
}

impl TokenServer {
    /// An HTTPS token server whose certificate is issued by `ca`.
    pub fn https(ca: &TestCa, user: &str, password: &str) -> TokenServer {
        let cert = ca.issue_server();
        TokenServer::start(Some(ca.server_config(&cert)), user, password)
    }

    /// A plain-HTTP token server (for tests that expect a client to refuse or cope with it).
    pub fn plain_http(user: &str, password: &str) -> TokenServer {
        TokenServer::start(None, user, password)
    }

    fn start(tls: Option<Arc<rustls::ServerConfig>>, user: &str, password: &str) -> TokenServer {
        let signing = self_signed_signing_cert("envbox test token signer");
        let state = Arc::new(State {
            user: user.to_owned(),
            password: password.to_owned(),
            refresh_token: Mutex::new("envbox-test-identity-token".to_owned()),
            anonymous_pull: Mutex::new(false),
            ttl_secs: Mutex::new(300),
            signing: signing.clone(),
            requests: Mutex::new(Vec::new()),
            counter: AtomicU64::new(0),
        });
        let scheme = if tls.is_some() { "https" } else { "http" };
        let handler_state = state.clone();
        let server = Server::start(
            "token",
            tls,
            server::handler(move |req| handle(handler_state.clone(), req)),
        );
        TokenServer {
            url: format!("{scheme}://127.0.0.1:{}/token", server.port()),
            service: SERVICE.to_owned(),
            issuer: ISSUER.to_owned(),
            signing_cert_pem: signing.cert_pem,
            state,
            _server: server,
        }
    }

    /// The refresh (identity) token accepted by `POST /token` (a fixed default).
    pub fn refresh_token(&self) -> String {
        self.state
            .refresh_token
            .lock()
            .expect("token state")
            .clone()
    }

    pub fn set_refresh_token(&self, token: &str) {
        *self.state.refresh_token.lock().expect("token state") = token.to_owned();
    }

    /// Anonymous token requests get `pull` on the scopes they ask for (default: no access).
    pub fn set_anonymous_pull(&self, on: bool) {
        *self.state.anonymous_pull.lock().expect("token state") = on;
    }

    /// Lifetime of issued tokens (`expires_in`, `exp`), default 300 s.
    pub fn set_ttl_secs(&self, secs: u64) {
        *self.state.ttl_secs.lock().expect("token state") = secs;
    }

    pub fn requests(&self) -> Vec<TokenRequest> {
        self.state.requests.lock().expect("token requests").clone()
    }

    pub fn clear_requests(&self) {
        self.state.requests.lock().expect("token requests").clear();
    }

    /// A token for `scopes` as the configured user would get it (for tests that talk to the
    /// registry directly).
    pub fn mint(&self, scopes: &[&str]) -> String {
        let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
        mint(
            &self.state,
            Some(&self.state.user),
            &scopes,
            &["pull", "push", "delete", "*"],
        )
    }
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().to_string();
    let query = req.uri().query().unwrap_or("").to_owned();
    let path = req.uri().path().to_owned();
    let authorization = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = match req.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => bytes::Bytes::new(),
    };
    let mut params = server::parse_pairs(&query);
    if method == "POST" {
        params.extend(server::parse_pairs(&String::from_utf8_lossy(&body)));
    }
    let get = |key: &str| {
        params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    let scopes: Vec<String> = params
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' ').map(str::to_owned).collect::<Vec<_>>())
        .filter(|s| !s.is_empty())
        .collect();
    let mut record = TokenRequest {
        method: method.clone(),
        query: query.clone(),
        has_authorization: authorization.is_some(),
        user: None,
        grant_type: get("grant_type"),
        service: get("service"),
        scopes: scopes.clone(),
        status: 0,
    };

    let basic = authorization.as_deref().and_then(parse_basic);
    let outcome: Result<(Option<String>, bool), &str> = if path != "/token" {
        Err("not found")
    } else if method == "GET" {
        match basic {
            Some((user, password)) => {
                record.user = Some(user.clone());
                if user == state.user && password == state.password {
                    Ok((Some(user), get("offline_token").as_deref() == Some("true")))
                } else {
                    Err("invalid username or password")
                }
            }
            None => Ok((None, false)),
        }
    } else if method == "POST" {
        match get("grant_type").as_deref() {
            Some("refresh_token") => {
                let expected = state.refresh_token.lock().expect("token state").clone();
                if get("refresh_token").as_deref() == Some(expected.as_str()) {
                    Ok((Some(state.user.clone()), false))
                } else {
                    Err("invalid refresh token")
                }
            }
            Some("password") => {
                record.user = get("username");
                if get("username").as_deref() == Some(state.user.as_str())
                    && get("password").as_deref() == Some(state.password.as_str())
                {
                    Ok((
                        Some(state.user.clone()),
                        get("access_type").as_deref() == Some("offline"),
                    ))
                } else {
                    Err("invalid username or password")
                }
            }
            _ => Err("unsupported grant_type"),
        }
    } else {
        Err("method not allowed")
    };

    let response = match outcome {
        Err("not found") => server::respond(404, &[], "not found"),
        Err(message) => {
            let status = if message.starts_with("unsupported") || message.starts_with("method") {
                400
            } else {
                401
            };
            let body = json!({
                "errors": [{"code": "UNAUTHORIZED", "message": message, "detail": null}],
                "details": message,
            });
            server::respond(
                status,
                &[("content-type", "application/json")],
                body.to_string(),
            )
        }
        Ok((user, offline)) => {
            let actions: &[&str] = if user.is_some() {
                &["pull", "push", "delete", "*"]
            } else if *state.anonymous_pull.lock().expect("token state") {
                &["pull"]
            } else {
                &[]
            };
            let token = mint(&state, user.as_deref(), &scopes, actions);
            let ttl = *state.ttl_secs.lock().expect("token state");
            let mut body = json!({
                "token": token,
                "access_token": token,
                "expires_in": ttl,
                "issued_at": rfc3339(now_secs()),
            });
            if offline {
                body["refresh_token"] =
                    json!(state.refresh_token.lock().expect("token state").clone());
            }
            server::respond(
                200,
                &[("content-type", "application/json")],
                body.to_string(),
            )
        }
    };
    record.status = response.status().as_u16();
    state.requests.lock().expect("token requests").push(record);
    response
}

fn parse_basic(header: &str) -> Option<(String, String)> {
    let encoded = header
        .strip_prefix("Basic ")
        .or_else(|| header.strip_prefix("basic "))?;
    let decoded = STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// Signs a token granting, for each `type:name:actions` scope, the asked actions that are in
/// `allowed`.
fn mint(state: &State, subject: Option<&str>, scopes: &[String], allowed: &[&str]) -> String {
    let access: Vec<serde_json::Value> = scopes
        .iter()
        .filter_map(|scope| {
            let (kind, rest) = scope.split_once(':')?;
            let (name, actions) = rest.rsplit_once(':')?;
            let granted: Vec<&str> = actions.split(',').filter(|a| allowed.contains(a)).collect();
            Some(json!({"type": kind, "name": name, "actions": granted}))
        })
        .collect();
    let now = now_secs();
    let ttl = *state.ttl_secs.lock().expect("token state");
    let jti = state.counter.fetch_add(1, Ordering::SeqCst);
    let header = json!({
        "typ": "JWT",
        "alg": "ES256",
        "x5c": [STANDARD.encode(&state.signing.cert_der)],
    });
    let claims = json!({
        "iss": ISSUER,
        "sub": subject.unwrap_or(""),
        "aud": SERVICE,
        "exp": now + ttl,
        "nbf": now.saturating_sub(10),
        "iat": now,
        "jti": format!("envbox-test-{now}-{jti}"),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let rng = ring::rand::SystemRandom::new();
    let key = EcdsaKeyPair::from_pkcs8(
        &ECDSA_P256_SHA256_FIXED_SIGNING,
        &state.signing.key_der,
        &rng,
    )
    .expect("load token signing key");
    let signature = key
        .sign(&rng, signing_input.as_bytes())
        .expect("sign token");
    format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature.as_ref())
    )
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// `YYYY-MM-DDTHH:MM:SSZ` for seconds since the epoch.
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3_600,
        (rem / 60) % 60,
        rem % 60
    )
}
