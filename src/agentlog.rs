//! The progress log, also sent to the Coder dashboard as the workspace agent's startup logs.
//!
//! Owns: with `CODER_AGENT_URL` and `CODER_AGENT_TOKEN` both set (and no `--no-startup-log`), a
//! log source named `envbox` registered for the agent (`POST
//! /api/v2/workspaceagents/me/log-source`) and every progress line after that sent in batches (`PATCH /api/v2/workspaceagents/me/logs`, the token in the
//! `Coder-Session-Token` header, behaviour doc §3). Coder being unreachable or refusing is
//! never fatal: a batch that fails is kept (up to [`MAX_PENDING`] lines) and sent again with
//! backoff, and the first failure is said once on stderr. It never puts the token anywhere but
//! that header, and never delays the start: lines are queued, sent by a task of their own.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::Settings;
use crate::progress::{self, Kind};
use crate::tls::{client_builder, load_extra_certs};

/// Lines gathered for one request at most.
const BATCH: usize = 100;
/// How long the first line of a batch waits for company.
const LINGER: Duration = Duration::from_millis(200);
/// Lines kept while Coder cannot be reached; older ones are dropped (and counted).
pub(crate) const MAX_PENDING: usize = 2000;
/// Backoff between failed attempts: doubles from the first to the last.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(30));
/// One request's limit.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The icon shown beside the source in the dashboard (an icon Coder ships).
const ICON: &str = "/icon/docker.svg";

/// Errors of this module: reading the settings' certificates, building the client (a warning
/// then: sending never fails the start).
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each variant's #[error] message documents it
pub enum AgentLogError {
    #[error("startup logs to Coder: {0}")]
    Certificates(#[from] crate::tls::CertsError),
    #[error("startup logs to Coder: building the HTTP client: {0}")]
    Client(String),
}

/// One progress line on its way.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Line {
    kind: Kind,
    output: String,
    time: SystemTime,
}

/// Where the lines go and how: the settings' part of this module.
#[derive(Debug, Clone)]
pub struct Target {
    /// `CODER_AGENT_URL` (an http(s) URL without a trailing `/`: checked by `crate::config`).
    base: String,
    token: crate::config::Secret,
    /// PEM roots trusted besides the system's (`CODER_EXTRA_CERTS_PATH`).
    extra_roots: Vec<String>,
}

impl Target {
    /// The target the settings name, `None` unless both URL and token are set, or with
    /// `--no-startup-log`.
    pub fn from_settings(settings: &Settings) -> Result<Option<Target>, AgentLogError> {
        if settings.no_startup_log {
            return Ok(None);
        }
        let (Some(url), Some(token)) = (&settings.agent_url, &settings.agent_token) else {
            return Ok(None);
        };
        let extra_roots = match &settings.extra_certs_path {
            Some(path) => load_extra_certs(path)?,
            None => Vec::new(),
        };
        Ok(Some(Target {
            base: url.trim_end_matches('/').to_owned(),
            token: token.clone(),
            extra_roots,
        }))
    }

    fn client(&self) -> Result<reqwest::Client, AgentLogError> {
        client_builder(&self.extra_roots)
            .map_err(AgentLogError::Client)?
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("envbox/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| AgentLogError::Client(e.to_string()))
    }
}

/// The running sender. Lines emitted after [`AgentLog::start`] are queued for it.
pub struct AgentLog {
    lines: mpsc::UnboundedSender<Line>,
    task: JoinHandle<()>,
}

impl AgentLog {
    /// Starts sending (needs a tokio runtime) and routes every later progress line to it.
    /// The HTTP client is built on the sender's task, off the start's path; a failure there
    /// is a warning, like any other failure to reach Coder.
    pub fn start(target: Target) -> AgentLog {
        let (lines, queue) = mpsc::unbounded_channel();
        let forward = lines.clone();
        progress::forward(Box::new(move |kind, output, time| {
            let _ = forward.send(Line {
                kind,
                output: output.to_owned(),
                time,
            });
        }));
        let task = tokio::spawn(async move {
            match target.client() {
                Ok(client) => Sender::new(client, target).run(queue).await,
                Err(e) => {
                    progress::emit_local(
                        Kind::Info,
                        &format!("warning: startup logs are not sent to Coder: {e}"),
                    );
                    drain(queue).await;
                }
            }
        });
        AgentLog { lines, task }
    }

    /// Queues a line that must not go to stderr (the caller writes it there itself).
    pub fn send(&self, kind: Kind, output: &str) {
        let _ = self.lines.send(Line {
            kind,
            output: output.to_owned(),
            time: SystemTime::now(),
        });
    }

    /// Stops routing progress lines here and sends what is queued, for at most `deadline`.
    pub async fn close(self, deadline: Duration) {
        progress::stop_forwarding();
        drop(self.lines);
        let mut task = self.task;
        if tokio::time::timeout(deadline, &mut task).await.is_err() {
            task.abort();
            progress::emit_local(
                Kind::Info,
                "warning: startup logs not all sent to Coder before the deadline",
            );
        }
    }
}

struct Sender {
    client: reqwest::Client,
    target: Target,
    source: String,
    registered: bool,
    pending: VecDeque<Line>,
    dropped: usize,
    failed_once: bool,
}

/// Why a request did not succeed.
enum Failure {
    /// Worth trying again later (network, 5xx, 429, ...).
    Again(String),
    /// Coder will not take any more (413: the agent's logs are full).
    Refused(String),
}

impl Sender {
    fn new(client: reqwest::Client, target: Target) -> Sender {
        Sender {
            client,
            target,
            source: random_uuid(),
            registered: false,
            pending: VecDeque::new(),
            dropped: 0,
            failed_once: false,
        }
    }

    /// Sends batches until the queue is closed and empty (or Coder refuses for good).
    async fn run(mut self, mut queue: mpsc::UnboundedReceiver<Line>) {
        let mut backoff = BACKOFF.0;
        let mut open = true;
        loop {
            if self.pending.is_empty() && !(open && self.gather(&mut queue).await) {
                return;
            }
            while let Ok(line) = queue.try_recv() {
                self.push(line);
            }
            match self.send_batch().await {
                Ok(()) => backoff = BACKOFF.0,
                Err(Failure::Refused(why)) => {
                    progress::emit_local(
                        Kind::Info,
                        &format!("warning: Coder takes no more startup logs from envbox: {why}"),
                    );
                    return drain(queue).await;
                }
                Err(Failure::Again(why)) => {
                    if !self.failed_once {
                        self.failed_once = true;
                        progress::emit_local(
                            Kind::Info,
                            &format!(
                                "warning: cannot send startup logs to Coder at {} (trying again): {why}",
                                self.target.base
                            ),
                        );
                    }
                    open = self.wait(&mut queue, backoff, open).await;
                    backoff = (backoff * 2).min(BACKOFF.1);
                }
            }
        }
    }

    /// Waits for a line, then lets the lines that follow within [`LINGER`] join its batch.
    /// `false` when the queue closed before any line came.
    async fn gather(&mut self, queue: &mut mpsc::UnboundedReceiver<Line>) -> bool {
        let Some(line) = queue.recv().await else {
            return false;
        };
        self.push(line);
        let linger = tokio::time::sleep(LINGER);
        tokio::pin!(linger);
        while self.pending.len() < BATCH {
            tokio::select! {
                line = queue.recv() => match line {
                    Some(line) => self.push(line),
                    None => break,
                },
                _ = &mut linger => break,
            }
        }
        true
    }

    /// Sleeps for `backoff`, queueing what arrives meanwhile. Returns whether the queue is
    /// still open.
    async fn wait(
        &mut self,
        queue: &mut mpsc::UnboundedReceiver<Line>,
        backoff: Duration,
        mut open: bool,
    ) -> bool {
        let sleep = tokio::time::sleep(backoff);
        tokio::pin!(sleep);
        while open {
            tokio::select! {
                line = queue.recv() => match line {
                    Some(line) => self.push(line),
                    None => open = false,
                },
                _ = &mut sleep => return true,
            }
        }
        // Closing: one more try after the backoff, within the caller's deadline.
        sleep.await;
        false
    }

    fn push(&mut self, line: Line) {
        if self.pending.len() >= MAX_PENDING {
            self.pending.pop_front();
            self.dropped += 1;
        }
        self.pending.push_back(line);
    }

    /// Registers the source if needed, then sends up to [`BATCH`] pending lines (removed on
    /// success). A note about dropped lines goes first.
    async fn send_batch(&mut self) -> Result<(), Failure> {
        if !self.registered {
            let body = json!({"id": self.source, "display_name": "envbox", "icon": ICON});
            self.request(reqwest::Method::POST, "log-source", &body)
                .await?;
            self.registered = true;
        }
        if self.dropped > 0 {
            let note = Line {
                kind: Kind::Info,
                output: format!(
                    "({} earlier lines were dropped while Coder could not be reached)",
                    self.dropped
                ),
                time: SystemTime::now(),
            };
            self.pending.push_front(note);
            self.dropped = 0;
        }
        let count = self.pending.len().min(BATCH);
        let logs: Vec<_> = self.pending.iter().take(count).map(log_json).collect();
        let body = json!({"log_source_id": self.source, "logs": logs});
        self.request(reqwest::Method::PATCH, "logs", &body).await?;
        self.pending.drain(..count);
        Ok(())
    }

    async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<(), Failure> {
        let url = format!("{}/api/v2/workspaceagents/me/{path}", self.target.base);
        let response = self
            .client
            .request(method, &url)
            .header("Coder-Session-Token", self.target.token.expose())
            .json(body)
            .send()
            .await
            .map_err(|e| Failure::Again(format!("{path}: {}", describe(e))))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let text = response.text().await.unwrap_or_default();
        let why = format!("{path}: HTTP {status}: {}", text.trim());
        match status.as_u16() {
            413 => Err(Failure::Refused(why)),
            _ => Err(Failure::Again(why)),
        }
    }
}

/// A request error with its causes (connection refused, certificate not trusted, ...), without
/// the URL (the caller names the endpoint).
fn describe(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(&error);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Takes lines until the queue closes, sending none (Coder cannot or will not take them).
async fn drain(mut queue: mpsc::UnboundedReceiver<Line>) {
    while queue.recv().await.is_some() {}
}

/// A line as the logs endpoint takes it.
fn log_json(line: &Line) -> serde_json::Value {
    json!({
        "created_at": progress::rfc3339(line.time),
        "level": match line.kind {
            Kind::Error => "error",
            Kind::Info | Kind::Done => "info",
        },
        "output": line.output,
    })
}

/// A random (version 4) UUID: a fresh log source per start, as the Go envbox registers.
fn random_uuid() -> String {
    let mut bytes = [0u8; 16];
    // SAFETY: the buffer is valid for its length; getrandom only writes into it.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != 16 {
        // No entropy syscall: time and pid still make it unique enough for one agent.
        let seed = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
            ^ u128::from(std::process::id());
        bytes = seed.to_le_bytes();
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests;
