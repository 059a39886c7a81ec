//! Retrying registry requests: the one loop every request of the client runs in ([`run`]).
//!
//! Owns: what a failed attempt was ([`Failure`], read from the error's types rather than its
//! text; `Retry-After`), how many attempts and how long a wait each kind of failure gets (the
//! budgets below), the wait between attempts with the progress line that says so, and what is
//! left to say once a budget is spent ([`GaveUp`]). It never makes a request and never decides
//! what is fatal: an attempt retries only what it hands over as a [`Failure`].

use std::future::Future;
use std::time::{Duration, Instant};

use super::{RegistryConfig, RegistryError};
use crate::progress::{self, Kind};

/// How one attempt ended. `S` is what an attempt hands to the next (a blob's writer, so a
/// retry resumes where the last one stopped); `()` for requests that start afresh.
pub(crate) enum Step<S, T> {
    Done(T),
    /// No retry helps.
    Fatal(RegistryError),
    /// Worth another attempt within the failure's budget, after the wait.
    Retry(S, Failure),
    /// Try again at once, without counting an attempt (another location, new credentials).
    Again(S),
}

/// Runs `attempt` until it is done or fatal, or its failures' budget is spent (then
/// `gave_up` makes the error). `subject` names the request in progress lines.
pub(crate) async fn run<S, T, F, Fut>(
    config: &RegistryConfig,
    subject: String,
    mut state: S,
    mut attempt: F,
    gave_up: impl FnOnce(GaveUp) -> RegistryError,
) -> Result<T, RegistryError>
where
    F: FnMut(S) -> Fut,
    Fut: Future<Output = Step<S, T>>,
{
    let mut retry = Retry::new(config, subject);
    loop {
        state = match attempt(state).await {
            Step::Done(done) => return Ok(done),
            Step::Fatal(error) => return Err(error),
            Step::Again(next) => next,
            Step::Retry(next, failure) => match retry.failed(failure).await {
                Ok(()) => next,
                Err(spent) => return Err(gave_up(spent)),
            },
        };
    }
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

/// The failure of an answer with status 429 or 5xx (`Retry-After` read), else `None`.
pub(crate) fn status_failure(response: &reqwest::Response) -> Option<Failure> {
    let status = response.status().as_u16();
    (status == 429 || status >= 500).then(|| Failure::Status {
        status,
        url: response.url().to_string(),
        after: retry_after(response.headers()),
    })
}

/// How long `Retry-After` asks to wait (the budgets cap it at the longest backoff).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
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

/// Attempts when no connection can be made at all (refused, a name that does not resolve, no
/// route): a registry that is down or mistyped fails in seconds, not minutes.
pub(crate) const UNREACHABLE_ATTEMPTS: u32 = 6;
/// Longest wait between those attempts.
pub(crate) const UNREACHABLE_MAX_BACKOFF: Duration = Duration::from_secs(8);
/// Attempts when connecting timed out: each one already waited the whole connect timeout.
pub(crate) const CONNECT_TIMEOUT_ATTEMPTS: u32 = 3;

/// Why one attempt failed, when it is worth another.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// Nothing accepts connections at the registry's address.
    #[error("connection refused")]
    Refused,
    /// No connection could be made otherwise: the name does not resolve, no route to it, ...
    #[error("cannot connect ({0})")]
    Unreachable(String),
    /// No connection within the connect timeout.
    #[error("no connection within {0:?}")]
    ConnectTimeout(Duration),
    /// The registry answered 5xx or 429 (`Retry-After` is honoured up to the longest backoff).
    #[error("{status} from {url}")]
    Status {
        status: u16,
        url: String,
        after: Option<Duration>,
    },
    /// The connection broke, or went silent, during a request.
    #[error("{0}")]
    Broken(String),
}

impl Failure {
    /// Attempts this kind of failure gets, and the longest wait between them.
    fn budget(&self, config: &RegistryConfig) -> (u32, Duration) {
        let (attempts, longest) = match self {
            Failure::Refused | Failure::Unreachable(_) => {
                (UNREACHABLE_ATTEMPTS, UNREACHABLE_MAX_BACKOFF)
            }
            Failure::ConnectTimeout(_) => (CONNECT_TIMEOUT_ATTEMPTS, config.max_backoff),
            Failure::Status { .. } | Failure::Broken(_) => {
                (config.max_attempts, config.max_backoff)
            }
        };
        (
            attempts.min(config.max_attempts).max(1),
            longest.min(config.max_backoff),
        )
    }

    /// What a user can do about it, once retrying did not help.
    pub(crate) fn advice(&self, registry: &str) -> String {
        match self {
            Failure::Refused => format!(
                "nothing accepts connections at {registry}: check the host and port of the image reference and that the registry is running"
            ),
            Failure::Unreachable(_) => format!(
                "check the registry host {registry} in the image reference, and that this machine's DNS and network reach it"
            ),
            Failure::ConnectTimeout(_) => format!(
                "check that this machine can reach {registry} (firewall, network policy, proxy)"
            ),
            Failure::Status { .. } => {
                format!("{registry} kept failing or limiting requests; try again later")
            }
            Failure::Broken(_) => {
                format!("the connection to {registry} kept breaking; check the network path to it")
            }
        }
    }

    /// Reads a transport error (no HTTP answer) of a request. `None` when it is not worth
    /// another attempt: certificate and TLS errors, which [`tls_error`] tells apart.
    pub(crate) fn of(error: &reqwest::Error, config: &RegistryConfig) -> Option<Failure> {
        if tls_error(error).is_some() {
            return None;
        }
        if error.is_connect() {
            if error.is_timeout() {
                return Some(Failure::ConnectTimeout(config.connect_timeout));
            }
            return Some(
                match io_errors(error).find_map(|e| match e.kind() {
                    std::io::ErrorKind::ConnectionRefused => Some(Failure::Refused),
                    std::io::ErrorKind::TimedOut => {
                        Some(Failure::ConnectTimeout(config.connect_timeout))
                    }
                    _ => None,
                }) {
                    Some(failure) => failure,
                    None => Failure::Unreachable(innermost(error)),
                },
            );
        }
        Some(Failure::Broken(chain(error)))
    }
}

/// The causes of an error, looking inside `io::Error`s too (whose `source` skips the error
/// they wrap: rustls' errors reach reqwest wrapped in two of them).
fn causes<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(error), |e| match e.downcast_ref::<std::io::Error>() {
        Some(io) => io
            .get_ref()
            .map(|inner| inner as &(dyn std::error::Error + 'static)),
        None => e.source(),
    })
}

fn io_errors<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a std::io::Error> {
    causes(error).filter_map(|e| e.downcast_ref::<std::io::Error>())
}

/// The last message of an error chain (the one that says what happened).
fn innermost(error: &(dyn std::error::Error + 'static)) -> String {
    causes(error)
        .last()
        .map(|e| e.to_string())
        .unwrap_or_default()
}

/// A TLS failure of a request: an untrusted certificate, or no TLS at all on the other side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TlsError {
    Certificate,
    /// What came back was not TLS: most likely a plain-HTTP server.
    NotTls,
}

/// The TLS failure among an error's causes, if any.
pub(crate) fn tls_error(error: &(dyn std::error::Error + 'static)) -> Option<TlsError> {
    causes(error).find_map(|e| match e.downcast_ref::<rustls::Error>()? {
        rustls::Error::InvalidCertificate(_) => Some(TlsError::Certificate),
        rustls::Error::InvalidMessage(_) => Some(TlsError::NotTls),
        _ => None,
    })
}

/// A spent budget: what a caller's error says besides its own context.
#[derive(Debug)]
pub(crate) struct GaveUp {
    pub attempts: u32,
    pub elapsed: Duration,
    pub failure: Failure,
}

/// The retry state of one request: attempts so far, the next backoff, the start.
struct Retry<'a> {
    config: &'a RegistryConfig,
    /// What is being tried, for progress lines: "registry 127.0.0.1:1".
    subject: String,
    attempts: u32,
    delay: Duration,
    started: Instant,
}

impl<'a> Retry<'a> {
    fn new(config: &'a RegistryConfig, subject: String) -> Retry<'a> {
        Retry {
            config,
            subject,
            attempts: 0,
            delay: config.initial_backoff,
            started: Instant::now(),
        }
    }

    /// Counts a failed attempt. When the failure's budget allows another, writes a progress
    /// line saying what failed, which attempt it was and when the next comes, and waits until
    /// then; otherwise says why it gave up.
    async fn failed(&mut self, failure: Failure) -> Result<(), GaveUp> {
        let Some((wait, attempts)) = self.next_wait(&failure) else {
            return Err(GaveUp {
                attempts: self.attempts,
                elapsed: self.started.elapsed(),
                failure,
            });
        };
        progress::emit(Kind::Info, &self.line(&failure, attempts, wait));
        tokio::time::sleep(wait).await;
        Ok(())
    }

    /// Counts an attempt failed with `failure`: the wait before the next and the failure's
    /// budget of attempts, or `None` when that budget is spent.
    fn next_wait(&mut self, failure: &Failure) -> Option<(Duration, u32)> {
        self.attempts += 1;
        let (attempts, longest) = failure.budget(self.config);
        if self.attempts >= attempts {
            return None;
        }
        let after = match failure {
            Failure::Status { after, .. } => *after,
            _ => None,
        };
        let wait = after.unwrap_or(self.delay).min(longest);
        self.delay = (self.delay * 2).min(self.config.max_backoff);
        Some((wait, attempts))
    }

    fn line(&self, failure: &Failure, attempts: u32, wait: Duration) -> String {
        format!(
            "{}: {failure} (attempt {} of {attempts}); next try in {:.1} s",
            self.subject,
            self.attempts,
            wait.as_secs_f64()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> RegistryConfig {
        RegistryConfig {
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            max_attempts: 10,
            ..RegistryConfig::default()
        }
    }

    #[test]
    fn each_kind_of_failure_has_its_budget() {
        let c = config();
        let status = Failure::Status {
            status: 503,
            url: "u".into(),
            after: None,
        };
        assert_eq!(Failure::Refused.budget(&c), (6, Duration::from_secs(8)));
        assert_eq!(
            Failure::Unreachable("dns".into()).budget(&c),
            (6, Duration::from_secs(8))
        );
        assert_eq!(
            Failure::ConnectTimeout(c.connect_timeout).budget(&c),
            (3, Duration::from_secs(30))
        );
        assert_eq!(status.budget(&c), (10, Duration::from_secs(30)));
        assert_eq!(
            Failure::Broken("reset".into()).budget(&c),
            (10, Duration::from_secs(30))
        );
        // A caller asking for fewer attempts (a pinned tag's quick try) gets no more.
        let quick = RegistryConfig {
            max_attempts: 3,
            max_backoff: Duration::from_secs(5),
            ..config()
        };
        assert_eq!(Failure::Refused.budget(&quick), (3, Duration::from_secs(5)));
    }

    #[test]
    fn refused_gives_up_after_its_budget_and_the_waits_double() {
        let c = config();
        let mut retry = Retry::new(&c, "registry 127.0.0.1:1".into());
        let mut waits = Vec::new();
        while let Some((wait, attempts)) = retry.next_wait(&Failure::Refused) {
            assert_eq!(attempts, 6);
            waits.push(wait.as_millis());
        }
        // 15.5 s of waiting in all.
        assert_eq!(waits, [500, 1000, 2000, 4000, 8000]);
        assert_eq!(retry.attempts, 6);
        retry.attempts = 2;
        assert_eq!(
            retry.line(&Failure::Refused, 6, Duration::from_secs(1)),
            "registry 127.0.0.1:1: connection refused (attempt 2 of 6); next try in 1.0 s"
        );
    }

    #[test]
    fn a_failing_registry_keeps_the_long_budget_and_retry_after_is_capped() {
        let c = config();
        let mut retry = Retry::new(&c, "x".into());
        let busy = |after| Failure::Status {
            status: 503,
            url: "u".into(),
            after,
        };
        let mut waits = Vec::new();
        while let Some((wait, attempts)) = retry.next_wait(&busy(None)) {
            assert_eq!(attempts, 10);
            waits.push(wait.as_secs_f64());
        }
        assert_eq!(waits, [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]);
        assert_eq!(retry.attempts, 10);

        let mut retry = Retry::new(&c, "x".into());
        let wait = |r: &mut Retry, s| r.next_wait(&busy(Some(Duration::from_secs(s)))).unwrap().0;
        assert_eq!(wait(&mut retry, 3), Duration::from_secs(3));
        assert_eq!(wait(&mut retry, 600), Duration::from_secs(30));
        // Refused after that: its own, shorter budget counts the attempts already made.
        assert_eq!(retry.next_wait(&Failure::Refused).unwrap().1, 6);
    }

    #[tokio::test]
    async fn transport_errors_are_read_from_their_types() {
        crate::tls::install_crypto_provider();
        let c = config();
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        // A port nothing listens on.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let e = client
            .get(format!("http://127.0.0.1:{port}/v2/"))
            .send()
            .await
            .unwrap_err();
        assert_eq!(Failure::of(&e, &c), Some(Failure::Refused));
        assert_eq!(tls_error(&e), None);

        // A name that does not resolve (`.invalid` never does, RFC 6761).
        let e = client
            .get("http://registry.envbox-test.invalid/v2/")
            .send()
            .await
            .unwrap_err();
        match Failure::of(&e, &c) {
            Some(Failure::Unreachable(detail)) => assert!(!detail.is_empty()),
            other => panic!("{other:?} for {e:?}"),
        }

        // HTTPS spoken to a plain-HTTP server.
        let plain = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = plain.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut stream, _)) = plain.accept().await {
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                    .await;
            }
        });
        let e = client
            .get(format!("https://{addr}/v2/"))
            .send()
            .await
            .unwrap_err();
        assert_eq!(tls_error(&e), Some(TlsError::NotTls), "{e:?}");
        assert_eq!(Failure::of(&e, &c), None);
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
