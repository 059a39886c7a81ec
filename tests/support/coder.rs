//! A stand-in for the two Coder agent endpoints envbox sends its startup logs to (Coder
//! cannot run here): it accepts `POST /api/v2/workspaceagents/me/log-source` and
//! `PATCH /api/v2/workspaceagents/me/logs`, and records each request with its session token.

use std::sync::{Arc, Mutex};

use http_body_util::BodyExt;

use super::server::{handler, respond, Server};

/// One request the stand-in received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub token: Option<String>,
    pub body: serde_json::Value,
}

/// The running stand-in; stopped on drop.
pub struct StandInCoder {
    pub url: String,
    received: Arc<Mutex<Vec<Received>>>,
    _server: Server,
}

impl StandInCoder {
    pub fn start() -> StandInCoder {
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&received);
        let server = Server::start(
            "coder",
            None,
            handler(move |req| {
                let log = Arc::clone(&log);
                async move {
                    let method = req.method().to_string();
                    let path = req.uri().path().to_owned();
                    let token = req
                        .headers()
                        .get("Coder-Session-Token")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    let body = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                    log.lock().unwrap().push(Received {
                        method,
                        path,
                        token,
                        body,
                    });
                    respond(200, &[("content-type", "application/json")], "{}")
                }
            }),
        );
        StandInCoder {
            url: format!("http://{}", server.addr),
            received,
            _server: server,
        }
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Every log line received, in order, as `(level, output)`.
    pub fn lines(&self) -> Vec<(String, String)> {
        self.received()
            .iter()
            .filter(|r| r.method == "PATCH")
            .flat_map(|r| r.body["logs"].as_array().cloned().unwrap_or_default())
            .map(|l| {
                (
                    l["level"].as_str().unwrap_or("").to_owned(),
                    l["output"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    }
}
