//! Progress lines on stderr, in the Go envbox's format.
//!
//! Owns: `{"output":"...","time":"RFC3339","type":"info"|"error"|"done"}` lines, which tools
//! and the Coder dashboard watch (behaviour doc §3); each line is also handed to a forwarder
//! when one is set (`crate::agentlog` sends them to Coder). It never sees secrets: callers pass
//! messages built from redacted values.

use std::io::Write;
use std::sync::RwLock;
use std::time::SystemTime;

/// Kind of a progress line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A step in progress.
    Info,
    /// A fatal error.
    Error,
    /// The workspace is ready.
    Done,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Info => "info",
            Kind::Error => "error",
            Kind::Done => "done",
        }
    }
}

/// `bytes` as progress lines and messages say sizes: megabytes, one decimal (`12.3 MB`).
pub(crate) fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// RFC 3339 UTC timestamp with seconds, e.g. `2026-11-24T01:02:03Z`.
pub(crate) fn rfc3339(time: SystemTime) -> String {
    let secs = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// One progress line (without newline).
pub(crate) fn line(kind: Kind, output: &str, time: SystemTime) -> String {
    serde_json::json!({
        "output": output,
        "time": rfc3339(time),
        "type": kind.as_str(),
    })
    .to_string()
}

/// Where lines go besides stderr (see `crate::agentlog`).
type Forward = Box<dyn Fn(Kind, &str, SystemTime) + Send + Sync>;

static FORWARD: RwLock<Option<Forward>> = RwLock::new(None);

/// Writes one progress line to stderr, and hands it to the forwarder if one is set.
pub fn emit(kind: Kind, output: &str) {
    let time = SystemTime::now();
    write_stderr(kind, output, time);
    if let Some(forward) = FORWARD.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
        forward(kind, output, time);
    }
}

/// Writes one progress line to stderr only: for what the forwarder says about itself.
pub(crate) fn emit_local(kind: Kind, output: &str) {
    write_stderr(kind, output, SystemTime::now());
}

fn write_stderr(kind: Kind, output: &str, time: SystemTime) {
    let mut stderr = std::io::stderr().lock();
    // Nothing sensible is left to do when stderr is gone.
    let _ = writeln!(stderr, "{}", line(kind, output, time));
}

/// Hands every later line to `forward` too (replacing an earlier forwarder).
pub(crate) fn forward(forward: Forward) {
    *FORWARD.write().unwrap_or_else(|p| p.into_inner()) = Some(forward);
}

/// Lines go to stderr only from now on.
pub(crate) fn stop_forwarding() {
    *FORWARD.write().unwrap_or_else(|p| p.into_inner()) = None;
}

/// The error and its causes, each said once: many of our errors already name their cause in
/// their own message, so a cause whose text is already there is skipped.
pub fn render_error(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let part = cause.to_string();
        if !text.contains(&part) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&part);
        }
    }
    text
}

/// Logs each warning as an info progress line (`warning: ...`).
pub(crate) fn warn_all<W: std::fmt::Display>(warnings: impl IntoIterator<Item = W>) {
    for warning in warnings {
        emit(Kind::Info, &format!("warning: {warning}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn lines_have_the_go_envbox_shape() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_482_123);
        let l = line(Kind::Done, "workspace \"up\"", t);
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["type"], "done");
        assert_eq!(v["output"], "workspace \"up\"");
        assert_eq!(v["time"], "2026-11-24T01:02:03Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
    }
}
