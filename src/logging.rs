//! Diagnostics of the stages (`tracing` events) in the progress log.
//!
//! Owns: the one `tracing` subscriber of the binary, which turns each event at or above the
//! level `ENVBOX_LOG` names (default `warn`, at least `debug` with `envbox docker --debug` or
//! `CODER_DEBUG`; envbox's events only, never the libraries') into
//! a progress line: `warning: <message>
//! (field=value, ...)`, `debug: ...`. Stages report what they skipped or could not clean up
//! with `tracing::warn!` and their timings with `tracing::debug!`; without this subscriber
//! those events would go nowhere. It never builds messages itself: what an event carries is
//! what the stage chose to say (no secrets, see `crate::progress`).

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

use crate::progress::{self, Kind};

/// The variable that sets the level.
pub(crate) const VARIABLE: &str = "ENVBOX_LOG";

/// A bad `ENVBOX_LOG`.
#[derive(Debug, thiserror::Error)]
#[error("{VARIABLE}: expected one of off, error, warn, info, debug, trace, got {value:?}")]
pub struct LevelError {
    value: String,
}

/// The level `value` names; empty means the default (`warn`).
pub(crate) fn level(value: &str) -> Result<LevelFilter, LevelError> {
    Ok(match value.trim().to_ascii_lowercase().as_str() {
        "" | "warn" | "warning" => LevelFilter::WARN,
        "off" => LevelFilter::OFF,
        "error" => LevelFilter::ERROR,
        "info" => LevelFilter::INFO,
        "debug" => LevelFilter::DEBUG,
        "trace" => LevelFilter::TRACE,
        _ => {
            return Err(LevelError {
                value: value.to_owned(),
            })
        }
    })
}

/// Which events pass at `level`: envbox's own only. The libraries' (HTTP, gRPC, registry
/// client) never do: their debug events may carry request headers, and secrets never reach
/// the log.
fn targets(level: LevelFilter) -> Targets {
    Targets::new().with_target("envbox", level)
}

/// The level of `ENVBOX_LOG` (`value`), raised to `debug` at least when `debug` (the Go
/// envbox's `--debug` / `CODER_DEBUG`); never lowered: `trace` stays.
pub(crate) fn effective_level(value: &str, debug: bool) -> Result<LevelFilter, LevelError> {
    let level = level(value)?;
    Ok(if debug {
        level.max(LevelFilter::DEBUG)
    } else {
        level
    })
}

/// Installs the progress-log subscriber at the level of `ENVBOX_LOG`, at least `debug` when
/// `debug`. Once per process.
pub fn init(debug: bool) -> Result<(), LevelError> {
    let level = effective_level(&std::env::var(VARIABLE).unwrap_or_default(), debug)?;
    let subscriber = tracing_subscriber::registry().with(ProgressLayer.with_filter(targets(level)));
    // Only fails when a subscriber is set already (a second call): that one stays.
    let _ = tracing::subscriber::set_global_default(subscriber);
    Ok(())
}

/// The layer: one progress line per event.
struct ProgressLayer;

impl<S: Subscriber> Layer<S> for ProgressLayer {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        progress::emit(Kind::Info, &render(event));
    }
}

/// `<level prefix><message> (field=value, ...)`.
fn render(event: &Event<'_>) -> String {
    let mut text = Text::default();
    event.record(&mut text);
    let prefix = match *event.metadata().level() {
        Level::ERROR => "error: ",
        Level::WARN => "warning: ",
        Level::INFO => "",
        Level::DEBUG => "debug: ",
        Level::TRACE => "trace: ",
    };
    let mut line = format!("{prefix}{}", text.message);
    if !text.fields.is_empty() {
        let _ = write!(line, " ({})", text.fields.join(", "));
    }
    line
}

#[derive(Default)]
struct Text {
    message: String,
    fields: Vec<String>,
}

impl Visit for Text {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message = value.to_owned(),
            name => self.fields.push(format!("{name}={value}")),
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            name => self.fields.push(format!("{name}={value:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Collects rendered events (the real layer writes them to stderr).
    struct Collect(Arc<Mutex<Vec<String>>>);

    impl<S: Subscriber> Layer<S> for Collect {
        fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
            self.0.lock().unwrap().push(render(event));
        }
    }

    #[test]
    fn events_become_lines_with_their_fields_and_the_level_filters_them() {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry()
            .with(Collect(Arc::clone(&lines)).with_filter(targets(level("").unwrap())));
        tracing::subscriber::with_default(subscriber, || {
            let path = std::path::Path::new("/state/layers/x");
            tracing::warn!(path = %path.display(), error = "busy", "cannot remove {}", "it");
            tracing::debug!(ms = 3, "not shown at the default level");
            tracing::warn!(target: "h2::proto", "a library's warning: not shown");
        });
        assert_eq!(
            *lines.lock().unwrap(),
            ["warning: cannot remove it (path=/state/layers/x, error=busy)"]
        );
    }

    #[test]
    fn debug_raises_the_level_to_debug_and_never_lowers_it() {
        assert_eq!(effective_level("", true).unwrap(), LevelFilter::DEBUG);
        assert_eq!(effective_level("off", true).unwrap(), LevelFilter::DEBUG);
        assert_eq!(effective_level("trace", true).unwrap(), LevelFilter::TRACE);
        assert_eq!(effective_level("", false).unwrap(), LevelFilter::WARN);
        assert!(effective_level("loud", true).is_err());
    }

    #[test]
    fn levels_are_named_as_usual_and_anything_else_names_the_variable() {
        assert_eq!(level("DEBUG").unwrap(), LevelFilter::DEBUG);
        assert_eq!(level("off").unwrap(), LevelFilter::OFF);
        let err = level("loud").unwrap_err().to_string();
        assert!(
            err.contains("ENVBOX_LOG") && err.contains("\"loud\""),
            "{err}"
        );
    }
}
