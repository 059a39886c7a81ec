//! The sender against a stand-in Coder (hyper on a loopback port): what it registers and sends,
//! with which header, and how it rides out failures. Coder itself cannot run here.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use super::*;
use crate::config::Secret;

/// One request the stand-in saw.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    token: Option<String>,
    body: serde_json::Value,
}

/// A stand-in for coderd's two agent log endpoints; answers `failures` requests with 503 (or
/// every PATCH with 413 when `full`), then 200.
#[derive(Clone, Default)]
struct StandInCoder {
    seen: Arc<Mutex<Vec<Seen>>>,
    failures: Arc<Mutex<usize>>,
    full: bool,
}

impl StandInCoder {
    async fn serve(self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let coder = self.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let coder = coder.clone();
                        async move { Ok::<_, hyper::Error>(coder.answer(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        url
    }

    async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let method = req.method().to_string();
        let path = req.uri().path().to_owned();
        let token = req
            .headers()
            .get("Coder-Session-Token")
            .map(|v| v.to_str().unwrap().to_owned());
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        self.seen.lock().unwrap().push(Seen {
            method: method.clone(),
            path,
            token,
            body,
        });
        let status = {
            let mut failures = self.failures.lock().unwrap();
            if *failures > 0 {
                *failures -= 1;
                StatusCode::SERVICE_UNAVAILABLE
            } else if self.full && method == "PATCH" {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::OK
            }
        };
        Response::builder()
            .status(status)
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap()
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The outputs of every accepted-or-not PATCH, in order, without duplicates from retries.
    fn outputs(&self) -> Vec<String> {
        let mut outputs: Vec<String> = Vec::new();
        for seen in self.seen().iter().filter(|s| s.method == "PATCH") {
            for log in seen.body["logs"].as_array().unwrap() {
                let output = log["output"].as_str().unwrap().to_owned();
                if !outputs.contains(&output) {
                    outputs.push(output);
                }
            }
        }
        outputs
    }
}

fn target(url: &str) -> Target {
    Target {
        base: url.to_owned(),
        token: Secret::new("agent-token-never-logged"),
        extra_roots: Vec::new(),
    }
}

/// The forwarder is process-wide: tests that start a sender take turns.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn lines_are_sent_in_order_under_one_registered_source_with_the_token_header() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let coder = StandInCoder::default();
    let url = coder.clone().serve().await;
    let log = AgentLog::start(target(&url));
    progress::emit(Kind::Info, "agentlog-test: pulling");
    progress::emit(Kind::Done, "agentlog-test: up");
    log.send(Kind::Error, "agentlog-test: failed");
    log.close(Duration::from_secs(5)).await;
    // After close nothing is forwarded any more.
    progress::emit(Kind::Info, "agentlog-test: after close");

    let seen = coder.seen();
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path.as_str()),
        ("POST", "/api/v2/workspaceagents/me/log-source")
    );
    let source = seen[0].body["id"].as_str().unwrap().to_owned();
    assert_eq!(source.len(), 36, "a UUID: {source}");
    assert_eq!(seen[0].body["display_name"], "envbox");
    for request in &seen {
        assert_eq!(request.token.as_deref(), Some("agent-token-never-logged"));
    }
    let patches: Vec<_> = seen.iter().filter(|s| s.method == "PATCH").collect();
    assert!(!patches.is_empty());
    for patch in &patches {
        assert_eq!(patch.path, "/api/v2/workspaceagents/me/logs");
        assert_eq!(patch.body["log_source_id"], source.as_str());
    }
    let ours: Vec<String> = coder
        .outputs()
        .into_iter()
        .filter(|o| o.starts_with("agentlog-test"))
        .collect();
    assert_eq!(
        ours,
        [
            "agentlog-test: pulling",
            "agentlog-test: up",
            "agentlog-test: failed"
        ]
    );
    let levels: Vec<String> = patches
        .iter()
        .flat_map(|p| p.body["logs"].as_array().unwrap().clone())
        .filter(|l| l["output"].as_str().unwrap().starts_with("agentlog-test"))
        .map(|l| l["level"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(levels, ["info", "info", "error"]);
}

#[tokio::test]
async fn a_coder_that_fails_at_first_gets_every_line_later() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let coder = StandInCoder {
        failures: Arc::new(Mutex::new(2)),
        ..StandInCoder::default()
    };
    let url = coder.clone().serve().await;
    let log = AgentLog::start(target(&url));
    for i in 0..5 {
        log.send(Kind::Info, &format!("retry-test {i}"));
    }
    log.close(Duration::from_secs(10)).await;
    let ours: Vec<String> = coder
        .outputs()
        .into_iter()
        .filter(|o| o.starts_with("retry-test"))
        .collect();
    assert_eq!(ours.len(), 5, "{ours:?}");
    // Registration was retried until it succeeded, then kept.
    let registrations = coder.seen().iter().filter(|s| s.method == "POST").count();
    assert_eq!(registrations, 3);
}

#[tokio::test]
async fn an_unreachable_coder_never_holds_up_the_close_beyond_its_deadline() {
    let _turn = ONE_AT_A_TIME.lock().await;
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = AgentLog::start(target(&format!("http://127.0.0.1:{port}")));
    log.send(Kind::Info, "nobody hears this");
    let started = std::time::Instant::now();
    log.close(Duration::from_millis(700)).await;
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn a_full_agent_log_stops_the_sending_without_an_error() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let coder = StandInCoder {
        full: true,
        ..StandInCoder::default()
    };
    let url = coder.clone().serve().await;
    let log = AgentLog::start(target(&url));
    log.send(Kind::Info, "first");
    tokio::time::sleep(Duration::from_millis(600)).await;
    log.send(Kind::Info, "second");
    log.close(Duration::from_secs(5)).await;
    // One refused PATCH, then nothing more is tried.
    let patches = coder.seen().iter().filter(|s| s.method == "PATCH").count();
    assert_eq!(patches, 1);
}

#[test]
fn the_target_needs_both_the_url_and_the_token() {
    let mut raw = crate::config::RawSettings {
        image: Some("alpine".into()),
        username: Some("coder".into()),
        ..Default::default()
    };
    let settings = |raw: &crate::config::RawSettings| {
        Settings::from_raw(raw, None, crate::config::Purpose::Docker).unwrap()
    };
    assert!(Target::from_settings(&settings(&raw)).unwrap().is_none());
    raw.agent_url = Some("https://coder.example.com/".into());
    assert!(Target::from_settings(&settings(&raw)).unwrap().is_none());
    raw.agent_token = Some(Secret::new("tok"));
    let target = Target::from_settings(&settings(&raw)).unwrap().unwrap();
    assert_eq!(target.base, "https://coder.example.com");
}

#[test]
fn uuids_are_version_4_and_differ() {
    let (a, b) = (random_uuid(), random_uuid());
    assert_ne!(a, b);
    assert_eq!(&a[14..15], "4");
    assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"), "{a}");
}
