//! The spec as JSON: byte-for-byte deterministic, with secrets redacted unless asked.
//!
//! Owns: serialisation. Object keys are sorted and the capability sets (hash sets in oci-spec)
//! are emitted in sorted order, so the same inputs always give the same bytes (golden specs
//! depend on it). With [`Secrets::Redact`], the value of `CODER_AGENT_TOKEN` in the process
//! environment is replaced by `<redacted>`. It never changes anything else.

use oci_spec::runtime::Spec;
use serde_json::Value;

use crate::config::names;

/// Whether secret values appear in the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secrets {
    /// Replace them with `<redacted>`.
    Redact,
    /// Print them.
    Reveal,
}

fn sort_capabilities(value: &mut Value) {
    if let Some(Value::Object(caps)) = value.pointer_mut("/process/capabilities") {
        for set in caps.values_mut() {
            if let Value::Array(items) = set {
                items.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
            }
        }
    }
}

fn redact_env(value: &mut Value) {
    let prefix = format!("{}=", names::AGENT_TOKEN.env);
    if let Some(Value::Array(env)) = value.pointer_mut("/process/env") {
        for entry in env.iter_mut() {
            if entry.as_str().is_some_and(|e| e.starts_with(&prefix)) {
                *entry = Value::String(format!("{prefix}<redacted>"));
            }
        }
    }
}

/// The spec as a JSON value with deterministic order.
pub(crate) fn to_value(spec: &Spec, secrets: Secrets) -> Value {
    // Serialising plain data structures into a Value cannot fail.
    let mut value = serde_json::to_value(spec).unwrap_or(Value::Null);
    sort_capabilities(&mut value);
    if secrets == Secrets::Redact {
        redact_env(&mut value);
    }
    value
}

/// The spec as pretty JSON with a trailing newline.
pub fn to_json(spec: &Spec, secrets: Secrets) -> String {
    let mut text = serde_json::to_string_pretty(&to_value(spec, secrets)).unwrap_or_default();
    text.push('\n');
    text
}
