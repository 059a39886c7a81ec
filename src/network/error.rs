//! [`NetworkError`]: what can go wrong attaching the workspace to its network.
//!
//! Owns: the error variants and their wording, each naming the plugin, the CNI command, the
//! path or the value involved. It never decides whether an error is fatal.

use std::io;
use std::net::Ipv4Addr;
use std::path::PathBuf;

/// A CNI command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CniCommand {
    /// `ADD`: attach.
    Add,
    /// `DEL`: detach.
    Del,
}

impl CniCommand {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CniCommand::Add => "ADD",
            CniCommand::Del => "DEL",
        }
    }
}

impl std::fmt::Display for CniCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why attaching a namespace to the workspace network, or detaching it, failed.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each variant's #[error] message documents it
pub enum NetworkError {
    #[error("invalid {what} {value:?} for CNI: expected {expected}")]
    InvalidName {
        what: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("network namespace {path}: {source}")]
    Netns { path: PathBuf, source: io::Error },
    #[error("CNI plugin {plugin} {command}: cannot run {path}: {source} (is containernetworking-plugins installed there? see ENVBOX_CNI_PATH)")]
    Spawn {
        plugin: String,
        command: CniCommand,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "CNI plugin {plugin} {command} failed (code {code}): {msg}{}",
        details_suffix(details)
    )]
    Plugin {
        plugin: String,
        command: CniCommand,
        code: u64,
        msg: String,
        details: String,
    },
    #[error("CNI plugin {plugin} {command} failed ({status}) without a CNI error: {output}")]
    PluginCrashed {
        plugin: String,
        command: CniCommand,
        status: String,
        output: String,
    },
    #[error("CNI plugin {plugin} ADD returned an unusable result: {problem}")]
    BadResult { plugin: String, problem: String },
    #[error("CNI ADD gave {interface} the address {got}, not {expected}, the one /etc/hosts names (is a lease left over in {ipam_dir}?)")]
    UnexpectedAddress {
        interface: String,
        expected: Ipv4Addr,
        got: String,
        ipam_dir: PathBuf,
    },
    #[error("a previous attachment of container {container_id:?} is still recorded in {path}: cleanup_stale must run before add")]
    StaleAttachment { container_id: String, path: PathBuf },
    #[error("deleting the workspace bridge {bridge}: {source}")]
    Bridge { bridge: String, source: io::Error },
    #[error("{action} {path}: {source}")]
    State {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("CNI state file {path} is unreadable: {source}")]
    CorruptState {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// `args` is the whole command line (`iptables -w -t nat ...`, `iptables-restore ...`).
    #[error("cannot run {args}: {source}")]
    IptablesSpawn { args: String, source: io::Error },
    #[error("{args} failed ({status}): {output}")]
    Iptables {
        args: String,
        status: String,
        output: String,
    },
}

fn details_suffix(details: &str) -> String {
    if details.is_empty() {
        String::new()
    } else {
        format!(" ({details})")
    }
}

impl NetworkError {
    /// A plugin's way of saying the thing to delete is already gone: CNI error code 3 (unknown
    /// container) or a "not found"/"no such"/"does not exist" message.
    pub(crate) fn is_not_found(&self) -> bool {
        match self {
            NetworkError::Plugin { code, msg, .. } => {
                let msg = msg.to_ascii_lowercase();
                *code == 3
                    || ["not found", "no such", "does not exist"]
                        .iter()
                        .any(|m| msg.contains(m))
            }
            _ => false,
        }
    }
}
