//! Running the CNI plugins of a cached [`Record`]: ADD in order with `prevResult` chained, DEL
//! in reverse with the final ADD result.
//!
//! Owns: each plugin's environment (`CNI_*`, `PATH`, nothing inherited) and stdin (the plugin
//! object plus `cniVersion`, `name`, `runtimeConfig` for its declared capabilities, and
//! `prevResult`), and turning a failed run into a [`NetworkError`] naming the plugin and the
//! command. The masquerade is added beside the network, and deleted after it. It never holds
//! the lock or touches the state file: the caller does, around it.

use serde_json::{Map, Value};

use super::masq;
use super::plan::PLUGIN_PATH;
use super::result::plugin_error;
use super::state::Record;
use super::sys::{Invocation, NetSys, Outcome};
use super::{CniCommand, NetworkError};

/// The environment of one plugin call.
pub(crate) fn plugin_env(
    command: CniCommand,
    record: &Record,
    netns: &str,
    ifname: &str,
) -> Vec<(String, String)> {
    [
        ("CNI_COMMAND", command.as_str()),
        ("CNI_CONTAINERID", record.container_id.as_str()),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", ifname),
        ("CNI_PATH", &record.cni_path.to_string_lossy()),
        ("PATH", PLUGIN_PATH),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// The stdin of plugin `plugin` of `conflist`: the plugin object with the list's `cniVersion`
/// and `name`, the runtime arguments its capabilities ask for, and `prevResult`.
pub(crate) fn plugin_stdin(
    conflist: &Value,
    plugin: &Value,
    runtime_config: &Value,
    prev_result: Option<&Value>,
) -> Value {
    let mut object = plugin.as_object().cloned().unwrap_or_default();
    object.insert("cniVersion".into(), conflist["cniVersion"].clone());
    object.insert("name".into(), conflist["name"].clone());
    let wanted: Map<String, Value> = plugin["capabilities"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, on)| on.as_bool() == Some(true))
        .filter_map(|(key, _)| Some((key.clone(), runtime_config.get(key)?.clone())))
        .collect();
    if !wanted.is_empty() {
        object.insert("runtimeConfig".into(), Value::Object(wanted));
    }
    if let Some(prev) = prev_result {
        object.insert("prevResult".into(), prev.clone());
    }
    Value::Object(object)
}

/// The plugins of a conflist, with their type checked to be a plain executable name.
fn plugins(conflist: &Value) -> Result<Vec<(String, &Value)>, NetworkError> {
    let list = conflist["plugins"].as_array().map(Vec::as_slice);
    list.unwrap_or_default()
        .iter()
        .map(|plugin| {
            let kind = plugin["type"].as_str().unwrap_or_default();
            let plain = !kind.is_empty()
                && kind
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
                && !kind.starts_with('.');
            if !plain {
                return Err(NetworkError::InvalidName {
                    what: "CNI plugin type",
                    value: kind.to_owned(),
                    expected: "the name of an executable in ENVBOX_CNI_PATH",
                });
            }
            Ok((kind.to_owned(), plugin))
        })
        .collect()
}

/// The type of the last plugin of a conflist: the one whose result is final.
pub(crate) fn last_plugin(conflist: &Value) -> String {
    let last = conflist["plugins"].as_array().and_then(|p| p.last());
    last.and_then(|p| p["type"].as_str())
        .unwrap_or("(none)")
        .to_owned()
}

/// Where a conflist's plugins act: the namespace path (empty when gone) and the interface.
struct Target<'a> {
    record: &'a Record,
    conflist: &'a Value,
    netns: &'a str,
    ifname: &'a str,
}

impl Target<'_> {
    /// One plugin call. ADD returns the plugin's result; DEL returns `None`.
    fn call(
        &self,
        sys: &dyn NetSys,
        (kind, plugin): &(String, &Value),
        command: CniCommand,
        prev_result: Option<&Value>,
    ) -> Result<Option<Value>, NetworkError> {
        let record = self.record;
        let path = record.cni_path.join(kind);
        let stdin = plugin_stdin(self.conflist, plugin, &record.runtime_config, prev_result);
        let invocation = Invocation {
            program: path.clone(),
            args: Vec::new(),
            env: plugin_env(command, record, self.netns, self.ifname),
            stdin: serde_json::to_vec(&stdin).expect("JSON serialises"),
        };
        let outcome = sys.run(&invocation).map_err(|source| NetworkError::Spawn {
            plugin: kind.clone(),
            command,
            path,
            source,
        })?;
        if !outcome.success {
            return Err(failure(kind, command, outcome));
        }
        if command == CniCommand::Del {
            return Ok(None);
        }
        serde_json::from_slice(&outcome.stdout)
            .map(Some)
            .map_err(|e| NetworkError::BadResult {
                plugin: kind.clone(),
                problem: format!("stdout is not JSON: {e}"),
            })
    }

    /// ADD of every plugin in order, each given the previous one's result.
    fn add(&self, sys: &dyn NetSys) -> Result<Option<Value>, NetworkError> {
        let mut prev: Option<Value> = None;
        for plugin in plugins(self.conflist)? {
            prev = self.call(sys, &plugin, CniCommand::Add, prev.as_ref())?;
        }
        Ok(prev)
    }
}

/// The error of a failed plugin run: its CNI error object, else what it printed.
fn failure(kind: &str, command: CniCommand, outcome: Outcome) -> NetworkError {
    match plugin_error(&outcome.stdout) {
        Some(e) => NetworkError::Plugin {
            plugin: kind.to_owned(),
            command,
            code: e.code,
            msg: e.msg,
            details: e.details,
        },
        None => NetworkError::PluginCrashed {
            plugin: kind.to_owned(),
            command,
            status: outcome.status,
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&outcome.stdout),
                String::from_utf8_lossy(&outcome.stderr)
            )
            .trim()
            .to_owned(),
        },
    }
}

/// Attaches: the network and the masquerade of `subnet`, both at once (they touch different
/// things: the bridge and veth, the `nat` table). Returns the final ADD result; the first error
/// (network, masquerade) otherwise.
pub(crate) fn add(
    sys: &(dyn NetSys + Sync),
    record: &Record,
    subnet: &str,
) -> Result<Value, NetworkError> {
    let netns = record.netns.to_string_lossy();
    let target = |conflist, ifname| Target {
        record,
        conflist,
        netns: &netns,
        ifname,
    };
    let (main, masq) = std::thread::scope(|scope| {
        let masq = scope.spawn(|| masq::install(sys, record.network_name(), subnet));
        let main = target(&record.conflist, &record.ifname).add(sys);
        (main, joined(masq))
    });
    let result = main?;
    masq?;
    result.ok_or_else(|| NetworkError::BadResult {
        plugin: "(none)".into(),
        problem: "the network has no plugins".into(),
    })
}

/// A scoped thread's value; its panic goes on in the caller.
fn joined<T>(handle: std::thread::ScopedJoinHandle<'_, T>) -> T {
    handle
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Whether DEL treats "already gone" plugin errors as done (after a crash) or as errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Missing {
    Report,
    Ignore,
}

/// Detaches: every plugin of the network in reverse order with the cached final ADD result as
/// `prevResult`, then the masquerade. Every step runs even when one fails; the first error not
/// ignored is returned, the ignored ones are listed.
pub(crate) fn del(
    sys: &dyn NetSys,
    record: &Record,
    missing: Missing,
) -> Result<Vec<String>, NetworkError> {
    // Enter the namespace only while the path still names the one the ADD used.
    let alive = sys.netns_id(&record.netns) == Some(record.netns_id);
    let netns = if alive {
        record.netns.to_string_lossy().into_owned()
    } else {
        String::new()
    };
    let mut ignored = Vec::new();
    let mut first_error = None;
    let mut keep = |outcome: Result<(), NetworkError>| match outcome {
        Err(e) if missing == Missing::Ignore && e.is_not_found() => ignored.push(e.to_string()),
        Err(e) => {
            first_error.get_or_insert(e);
        }
        Ok(()) => {}
    };
    match plugins(&record.conflist) {
        Err(e) => keep(Err(e)),
        Ok(plugins) => {
            let target = Target {
                record,
                conflist: &record.conflist,
                netns: &netns,
                ifname: &record.ifname,
            };
            for plugin in plugins.iter().rev() {
                keep(
                    target
                        .call(sys, plugin, CniCommand::Del, record.result.as_ref())
                        .map(drop),
                );
            }
        }
    }
    keep(masq::remove(sys, record.network_name()).map(drop));
    match first_error {
        Some(e) => Err(e),
        None => Ok(ignored),
    }
}
