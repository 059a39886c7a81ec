//! A plain-HTTP reverse proxy in front of an HTTP [`Registry`] that records every request and
//! injects faults (error statuses, 429 with `Retry-After`, connections dropped mid-body,
//! corrupted bodies, ignored `Range`, blob redirects to another host, replaced manifests), plus
//! [`BlobStorage`], an S3-like plain-HTTP server on `localhost` (a different host name than the
//! proxy's `127.0.0.1`) that serves the registry's blobs without forwarding any credentials.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::StreamExt as _;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

use super::registry::Registry;
use super::server::{self, Body, BoxError, Server};

/// Use as `times` for a fault that never wears off.
pub const FOREVER: usize = usize::MAX;

/// A fault; the first active fault whose condition matches a request applies.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer `status` (empty JSON error body) instead of forwarding.
    Status {
        path_contains: String,
        status: u16,
        times: usize,
    },
    /// Answer 429 with `Retry-After: retry_after_secs`.
    TooManyRequests {
        path_contains: String,
        retry_after_secs: u64,
        times: usize,
    },
    /// Forward, send the headers and `after_bytes` of the body, then abort the connection.
    DropMidBody {
        path_contains: String,
        after_bytes: u64,
        times: usize,
    },
    /// Forward with the first byte of every body chunk inverted (same length), forever.
    CorruptBody { path_contains: String },
    /// Strip `Range` from every request (the registry answers 200 with the whole body).
    NoRangeSupport,
    /// Answer blob GETs with `307 Location: <to><path>` (like S3 redirects), forever.
    RedirectBlobs { to: String },
    /// Hold GETs whose path contains `path_contains` until the file `until` exists, at most
    /// `at_most`, then forward them; recorded as `held` (released by the file) or
    /// `hold-timeout`.
    Hold {
        path_contains: String,
        until: std::path::PathBuf,
        at_most: std::time::Duration,
    },
    /// Forward, send the headers and `after_bytes` of the body, then hold the rest until the
    /// file `until` exists (at most `at_most`), then send it; recorded as `stalled`.
    StallMidBody {
        path_contains: String,
        after_bytes: u64,
        until: std::path::PathBuf,
        at_most: std::time::Duration,
    },
    /// Answer GET/HEAD of manifests whose path contains `path_contains` with this document.
    ReplaceManifest {
        path_contains: String,
        content_type: String,
        body: Vec<u8>,
    },
    /// Like `ReplaceManifest` for GETs, but chunked: no `Content-Length`.
    ReplaceManifestChunked {
        path_contains: String,
        content_type: String,
        body: Vec<u8>,
    },
}

/// One request as the proxy saw it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub has_authorization: bool,
    pub range: Option<String>,
    /// Status sent to the client (0 if the upstream could not be reached).
    pub status: u16,
    /// Which fault applied: `status`, `429`, `drop`, `corrupt`, `no-range`, `redirect`,
    /// `replace-manifest`.
    pub fault: Option<&'static str>,
}

struct ActiveFault {
    fault: Fault,
    remaining: usize,
}

struct State {
    upstream: String,
    client: Client<HttpConnector, Body>,
    faults: Mutex<Vec<ActiveFault>>,
    requests: Mutex<Vec<RecordedRequest>>,
    /// Credentials the upstream call adds itself (BlobStorage in front of a Basic-auth registry).
    upstream_basic: Option<String>,
    /// Drop the client's Authorization instead of forwarding it (BlobStorage).
    strip_authorization: bool,
}

pub struct FaultProxy {
    /// `127.0.0.1:PORT`
    pub host: String,
    state: Arc<State>,
    _server: Server,
}

impl FaultProxy {
    /// A proxy in front of the plain-HTTP registry `upstream`.
    pub fn start(upstream: &Registry) -> FaultProxy {
        assert!(
            upstream.ca_cert.is_none(),
            "FaultProxy forwards to plain-HTTP registries only"
        );
        let state = new_state(upstream, false, None);
        let handler_state = state.clone();
        let server = Server::start(
            "fault-proxy",
            None,
            server::handler(move |req| proxy(handler_state.clone(), req)),
        );
        FaultProxy {
            host: format!("127.0.0.1:{}", server.port()),
            state,
            _server: server,
        }
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.host)
    }

    pub fn inject(&self, fault: Fault) {
        let remaining = match &fault {
            Fault::Status { times, .. }
            | Fault::TooManyRequests { times, .. }
            | Fault::DropMidBody { times, .. } => *times,
            _ => FOREVER,
        };
        self.state
            .faults
            .lock()
            .expect("proxy faults")
            .push(ActiveFault { fault, remaining });
    }

    /// Removes all faults.
    pub fn clear_faults(&self) {
        self.state.faults.lock().expect("proxy faults").clear();
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.requests.lock().expect("proxy requests").clone()
    }

    pub fn clear_requests(&self) {
        self.state.requests.lock().expect("proxy requests").clear();
    }

    /// Number of `GET .../blobs/sha256:...` requests seen.
    pub fn blob_gets(&self) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.method == "GET" && is_blob_path(&r.path))
            .count()
    }
}

/// An S3-like blob server: plain HTTP on `http://localhost:PORT`, serving `GET/HEAD
/// /v2/<name>/blobs/<digest>` from the registry without forwarding the client's `Authorization`
/// (it uses the registry's own Basic credentials when it has some). Records requests.
pub struct BlobStorage {
    /// `http://localhost:PORT`
    pub url: String,
    state: Arc<State>,
    _server: Server,
}

impl BlobStorage {
    pub fn start(upstream: &Registry) -> BlobStorage {
        assert!(
            upstream.ca_cert.is_none(),
            "BlobStorage reads from plain-HTTP registries only"
        );
        let basic = match (&upstream.user, &upstream.password) {
            (Some(user), Some(password)) => {
                use base64::Engine as _;
                Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
                ))
            }
            _ => None,
        };
        let state = new_state(upstream, true, basic);
        let handler_state = state.clone();
        let server = Server::start(
            "blob-storage",
            None,
            server::handler(move |req| proxy(handler_state.clone(), req)),
        );
        BlobStorage {
            url: format!("http://localhost:{}", server.port()),
            state,
            _server: server,
        }
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state
            .requests
            .lock()
            .expect("storage requests")
            .clone()
    }

    pub fn clear_requests(&self) {
        self.state
            .requests
            .lock()
            .expect("storage requests")
            .clear();
    }
}

fn new_state(
    upstream: &Registry,
    strip_authorization: bool,
    upstream_basic: Option<String>,
) -> Arc<State> {
    Arc::new(State {
        upstream: upstream.host.clone(),
        client: Client::builder(TokioExecutor::new()).build_http(),
        faults: Mutex::new(Vec::new()),
        requests: Mutex::new(Vec::new()),
        upstream_basic,
        strip_authorization,
    })
}

fn is_blob_path(path: &str) -> bool {
    path.starts_with("/v2/") && path.contains("/blobs/sha256:")
}

/// What to do with one request, decided under the fault lock.
/// A pause in a body: after this many bytes, until this file exists, at most this long.
type Stall = (u64, std::path::PathBuf, std::time::Duration);

enum Plan {
    Forward {
        strip_range: bool,
        drop_after: Option<u64>,
        corrupt: bool,
        hold: Option<(std::path::PathBuf, std::time::Duration)>,
        stall: Option<Stall>,
    },
    Answer(Response<Body>, &'static str),
}

fn plan(state: &State, method: &str, path: &str) -> (Plan, Option<&'static str>) {
    let mut faults = state.faults.lock().expect("proxy faults");
    let mut strip_range = false;
    let mut corrupt = false;
    let mut drop_after = None;
    let mut hold = None;
    let mut stall = None;
    let mut label = None;
    for active in faults.iter_mut() {
        if active.remaining == 0 {
            continue;
        }
        let mut used = false;
        match &active.fault {
            Fault::Status {
                path_contains,
                status,
                ..
            } if path.contains(path_contains.as_str()) => {
                let body = format!(
                    r#"{{"errors":[{{"code":"UNAVAILABLE","message":"injected {status}"}}]}}"#
                );
                let response =
                    server::respond(*status, &[("content-type", "application/json")], body);
                consume(active);
                return (Plan::Answer(response, "status"), Some("status"));
            }
            Fault::TooManyRequests {
                path_contains,
                retry_after_secs,
                ..
            } if path.contains(path_contains.as_str()) => {
                let response = server::respond(
                    429,
                    &[
                        ("content-type", "application/json"),
                        ("retry-after", &retry_after_secs.to_string()),
                    ],
                    r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"injected 429"}]}"#,
                );
                consume(active);
                return (Plan::Answer(response, "429"), Some("429"));
            }
            Fault::RedirectBlobs { to } if method == "GET" && is_blob_path(path) => {
                let location = format!("{}{path}", to.trim_end_matches('/'));
                let response = server::respond(307, &[("location", &location)], "");
                return (Plan::Answer(response, "redirect"), Some("redirect"));
            }
            Fault::ReplaceManifest {
                path_contains,
                content_type,
                body,
            } if (method == "GET" || method == "HEAD")
                && path.contains("/manifests/")
                && path.contains(path_contains.as_str()) =>
            {
                let digest = server::sha256_digest(body);
                let length = body.len().to_string();
                let headers = [
                    ("content-type", content_type.as_str()),
                    ("docker-content-digest", digest.as_str()),
                    ("content-length", length.as_str()),
                ];
                let response = if method == "HEAD" {
                    let mut r = server::respond(200, &headers, "");
                    // Keep the declared length for HEAD (hyper sends no body).
                    r.headers_mut().insert(
                        hyper::header::CONTENT_LENGTH,
                        length.parse().expect("content-length header"),
                    );
                    r
                } else {
                    server::respond(200, &headers, body.clone())
                };
                return (
                    Plan::Answer(response, "replace-manifest"),
                    Some("replace-manifest"),
                );
            }
            Fault::ReplaceManifestChunked {
                path_contains,
                content_type,
                body,
            } if method == "GET"
                && path.contains("/manifests/")
                && path.contains(path_contains.as_str()) =>
            {
                let chunks: Vec<Result<Frame<Bytes>, BoxError>> = body
                    .chunks(64 << 10)
                    .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
                    .collect();
                let response = Response::builder()
                    .status(200)
                    .header("content-type", content_type.as_str())
                    .body(BodyExt::boxed(StreamBody::new(futures_util::stream::iter(
                        chunks,
                    ))))
                    .expect("build chunked response");
                return (
                    Plan::Answer(response, "replace-manifest"),
                    Some("replace-manifest"),
                );
            }
            Fault::DropMidBody {
                path_contains,
                after_bytes,
                ..
            } if method == "GET"
                && drop_after.is_none()
                && path.contains(path_contains.as_str()) =>
            {
                drop_after = Some(*after_bytes);
                label = Some("drop");
                used = true;
            }
            Fault::CorruptBody { path_contains }
                if method == "GET" && path.contains(path_contains.as_str()) =>
            {
                corrupt = true;
                label = label.or(Some("corrupt"));
            }
            Fault::NoRangeSupport => {
                strip_range = true;
                label = label.or(Some("no-range"));
            }
            Fault::Hold {
                path_contains,
                until,
                at_most,
            } if method == "GET" && path.contains(path_contains.as_str()) => {
                hold = Some((until.clone(), *at_most));
                label = label.or(Some("held"));
            }
            Fault::StallMidBody {
                path_contains,
                after_bytes,
                until,
                at_most,
            } if method == "GET" && path.contains(path_contains.as_str()) => {
                stall = Some((*after_bytes, until.clone(), *at_most));
                label = label.or(Some("stalled"));
            }
            _ => {}
        }
        if used {
            consume(active);
        }
    }
    (
        Plan::Forward {
            strip_range,
            drop_after,
            corrupt,
            hold,
            stall,
        },
        label,
    )
}

fn consume(active: &mut ActiveFault) {
    if active.remaining != FOREVER {
        active.remaining -= 1;
    }
}

async fn proxy(state: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().map(str::to_owned);
    let has_authorization = req.headers().contains_key(hyper::header::AUTHORIZATION);
    let range = req
        .headers()
        .get(hyper::header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut record = RecordedRequest {
        method: method.clone(),
        path: path.clone(),
        query: query.clone(),
        has_authorization,
        range,
        status: 0,
        fault: None,
    };

    let (plan, label) = plan(&state, &method, &path);
    record.fault = label;
    let response = match plan {
        Plan::Answer(response, _) => response,
        Plan::Forward {
            strip_range,
            drop_after,
            corrupt,
            hold,
            stall,
        } => {
            if let Some((until, at_most)) = hold {
                let deadline = tokio::time::Instant::now() + at_most;
                while !until.exists() {
                    if tokio::time::Instant::now() >= deadline {
                        record.fault = Some("hold-timeout");
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
            }
            match forward(&state, req, &path, query.as_deref(), strip_range).await {
                Ok(response) => {
                    let (parts, body) = response.into_parts();
                    let body = shape_body(body, drop_after, corrupt, stall);
                    Response::from_parts(parts, body)
                }
                Err(e) => server::respond(502, &[], format!("proxy upstream error: {e}")),
            }
        }
    };
    record.status = response.status().as_u16();
    state.requests.lock().expect("proxy requests").push(record);
    response
}

async fn forward(
    state: &State,
    req: Request<Incoming>,
    path: &str,
    query: Option<&str>,
    strip_range: bool,
) -> Result<Response<Incoming>, BoxError> {
    let (parts, body) = req.into_parts();
    let uri = match query {
        Some(q) => format!("http://{}{path}?{q}", state.upstream),
        None => format!("http://{}{path}", state.upstream),
    };
    let mut builder = Request::builder().method(parts.method).uri(uri);
    for (name, value) in parts.headers.iter() {
        let lower = name.as_str();
        if matches!(
            lower,
            "connection" | "proxy-connection" | "keep-alive" | "te" | "trailer" | "upgrade"
        ) || (strip_range && lower == "range")
            || (state.strip_authorization && lower == "authorization")
        {
            continue;
        }
        builder = builder.header(name, value);
    }
    if let Some(basic) = &state.upstream_basic {
        builder = builder.header(hyper::header::AUTHORIZATION, basic.as_str());
    }
    let request = builder.body(body.map_err(|e| Box::new(e) as BoxError).boxed())?;
    Ok(state.client.request(request).await?)
}

/// The upstream body, possibly truncated (then errored, which aborts the connection), with
/// corrupted bytes, or paused part-way.
fn shape_body(
    body: Incoming,
    drop_after: Option<u64>,
    corrupt: bool,
    stall: Option<Stall>,
) -> Body {
    if drop_after.is_none() && !corrupt && stall.is_none() {
        return body.map_err(|e| Box::new(e) as BoxError).boxed();
    }
    let stall_at = stall.as_ref().map_or(u64::MAX, |(at, _, _)| *at);
    let limit = drop_after.unwrap_or(u64::MAX).min(stall_at);
    let stream = body.into_data_stream();
    // (upstream, bytes sent, done, where to stop next, the stall still to come, the rest of a
    // chunk cut at the stall)
    let shaped = futures_util::stream::unfold(
        (stream, 0u64, false, limit, stall, None::<Bytes>),
        move |(mut stream, sent, done, mut limit, mut stall, mut rest)| async move {
            if done {
                return None;
            }
            if sent >= limit {
                match stall.take() {
                    Some((_, until, at_most)) => {
                        let deadline = tokio::time::Instant::now() + at_most;
                        while !until.exists() && tokio::time::Instant::now() < deadline {
                            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                        }
                        limit = drop_after.unwrap_or(u64::MAX);
                    }
                    None => {
                        let err: BoxError = "injected: connection dropped mid-body".into();
                        return Some((Err(err), (stream, sent, true, limit, stall, rest)));
                    }
                }
            }
            let chunk = match rest.take() {
                Some(chunk) => chunk,
                None => match stream.next().await {
                    None => return None,
                    Some(Err(e)) => {
                        let err = Box::new(e) as BoxError;
                        return Some((Err(err), (stream, sent, true, limit, stall, rest)));
                    }
                    Some(Ok(chunk)) => chunk,
                },
            };
            let room = (limit - sent).min(chunk.len() as u64) as usize;
            if stall.is_some() && room < chunk.len() {
                rest = Some(chunk.slice(room..));
            }
            let mut data = chunk.slice(..room).to_vec();
            if corrupt && !data.is_empty() {
                data[0] ^= 0xff;
            }
            let sent = sent + room as u64;
            Some((
                Ok(Frame::data(Bytes::from(data))),
                (stream, sent, false, limit, stall, rest),
            ))
        },
    );
    BodyExt::boxed(StreamBody::new(shaped))
}
