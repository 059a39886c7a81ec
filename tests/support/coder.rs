//! A stand-in for the two Coder agent endpoints envbox sends its startup logs to (Coder
//! cannot run here): it accepts `POST /api/v2/workspaceagents/me/log-source` and
//! `PATCH /api/v2/workspaceagents/me/logs`, and records each request with its session token.
//! It can misbehave: answer the first requests with 503, or every PATCH with 413 (the agent's
//! log limit reached).

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
    /// A stand-in that accepts everything.
    pub fn start() -> StandInCoder {
        Self::misbehaving(0, false)
    }

    /// A stand-in that answers the first `failures` requests with 503 and, when `full`, every
    /// PATCH after them with 413.
    pub fn misbehaving(failures: usize, full: bool) -> StandInCoder {
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&received);
        let failures = Arc::new(Mutex::new(failures));
        let server = Server::start(
            "coder",
            None,
            handler(move |req| {
                let log = Arc::clone(&log);
                let failures = Arc::clone(&failures);
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
                    let status = {
                        let mut failures = failures.lock().unwrap();
                        if *failures > 0 {
                            *failures -= 1;
                            503
                        } else if full && method == "PATCH" {
                            413
                        } else {
                            200
                        }
                    };
                    log.lock().unwrap().push(Received {
                        method,
                        path,
                        token,
                        body,
                    });
                    respond(status, &[("content-type", "application/json")], "{}")
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

    /// The outputs of every PATCH (refused or not), in order, each once (retries resend).
    pub fn outputs(&self) -> Vec<String> {
        let mut outputs: Vec<String> = Vec::new();
        for (_, output) in self.lines() {
            if !outputs.contains(&output) {
                outputs.push(output);
            }
        }
        outputs
    }
}
