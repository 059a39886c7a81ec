//! How supervision fails: [`SuperviseError`] (a daemon could not be started or made ready) and
//! [`Death`] (a daemon exited without being asked to).
//!
//! Owns: the wording of those failures, each naming the daemon, what was being done, its exit
//! status and the last lines of its log. It never holds a free-form reason string: every
//! variant carries the path, the OS error or the exit it came from.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use super::cgroup::CgroupError;
use super::spawner::SpawnerError;

/// When a daemon died.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Before its readiness probe succeeded.
    Starting,
    /// After it was ready.
    Running,
}

/// A supervised daemon that exited without being asked to.
#[derive(Debug, Clone)]
pub struct Death {
    /// The daemon's name (`containerd`, `sysbox-mgr`, `sysbox-fs`).
    pub name: String,
    /// Whether it died starting or running.
    pub phase: Phase,
    /// Its exit status; `None` when it could not be collected.
    pub status: Option<ExitStatus>,
    /// Where its stdout and stderr went.
    pub log: PathBuf,
    /// The last lines of that log.
    pub log_tail: Vec<String>,
    /// What usually causes this daemon to die (the sysbox daemons: kernel and privileges).
    pub hint: Option<&'static str>,
}

impl fmt::Display for Death {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let when = match self.phase {
            Phase::Starting => "while starting",
            Phase::Running => "unexpectedly",
        };
        write!(f, "{} exited {when} (", self.name)?;
        match &self.status {
            Some(status) => write!(f, "{status}")?,
            None => f.write_str("exit status unknown")?,
        }
        f.write_str(")")?;
        if let Some(hint) = self.hint {
            write!(f, ": {hint}")?;
        }
        if self.log_tail.is_empty() {
            write!(f, "; its log {} is empty", self.log.display())
        } else {
            write!(f, "; last lines of {}:", self.log.display())?;
            for line in &self.log_tail {
                write!(f, "\n  {line}")?;
            }
            Ok(())
        }
    }
}

impl std::error::Error for Death {}

/// A daemon could not be started, made ready, or cleaned up after.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each variant's #[error] message documents it
pub enum SuperviseError {
    #[error("creating directory {path} for {name}: {source}")]
    CreateDir {
        name: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("removing {path}, where an earlier envbox kept {name}'s metadata (the workspace's spec, agent token included): {source}; remove it by hand")]
    RemoveLegacy {
        name: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("making {name}'s {path} readable by root alone (it holds the agent token): {source}")]
    Private {
        name: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("writing {name}'s configuration {path}: {source}")]
    WriteConfig {
        name: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{name}'s configuration: path {path} is not valid UTF-8")]
    NonUtf8Path { name: String, path: PathBuf },
    #[error("removing {name}'s stale file {path} left by a previous run: {source}")]
    RemoveStale {
        name: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{path} is a directory where {name}'s socket or pid file belongs")]
    StaleIsDirectory { name: String, path: PathBuf },
    #[error("{path} is still served by another process: another {name} is running (a previous envbox that did not stop?)")]
    SocketInUse { name: String, path: PathBuf },
    #[error("opening {name}'s log file {path}: {source}")]
    OpenLog {
        name: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("starting {name} ({program}): {source}{hint}", hint = spawn_hint(name, source))]
    Spawn {
        name: String,
        program: String,
        source: io::Error,
    },
    #[error(transparent)]
    Spawner(#[from] SpawnerError),
    #[error("{0}")]
    Died(Box<Death>),
    #[error("{name} was not ready after {waited:?}{}{}", last_error_text(.last_error), tail_text(.log, .log_tail))]
    NotReady {
        name: String,
        waited: Duration,
        /// Why the last readiness probe failed.
        last_error: Option<Box<dyn std::error::Error + Send + Sync>>,
        log: PathBuf,
        log_tail: Vec<String>,
    },
    #[error("containerd started without the plugins envbox needs ({}); its configuration or installation is broken; see {}", missing_text(.missing), .log.display())]
    ContainerdPlugins {
        /// `(plugin id, why it did not load)`.
        missing: Vec<(String, String)>,
        log: PathBuf,
    },
    #[error("asking containerd which plugins it loaded: {0}")]
    Introspection(#[source] tonic::Status),
    #[error("preparing cgroups: {0}")]
    Cgroup(#[from] CgroupError),
}

fn last_error_text(error: &Option<Box<dyn std::error::Error + Send + Sync>>) -> String {
    error
        .as_ref()
        .map(|e| format!(" (last attempt: {e})"))
        .unwrap_or_default()
}

fn tail_text(log: &std::path::Path, tail: &[String]) -> String {
    if tail.is_empty() {
        return format!("; its log {} is empty", log.display());
    }
    let mut text = format!("; last lines of {}:", log.display());
    for line in tail {
        text.push_str("\n  ");
        text.push_str(line);
    }
    text
}

fn missing_text(missing: &[(String, String)]) -> String {
    missing
        .iter()
        .map(|(id, why)| format!("{id}: {why}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// A problem while stopping the daemons; stopping went on with the others.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each variant's #[error] message documents it
pub enum StopProblem {
    #[error("{name} had already exited unexpectedly: {death}")]
    AlreadyDead { name: String, death: Box<Death> },
    #[error("{name} did not exit within {grace:?} of SIGTERM and was killed")]
    Killed { name: String, grace: Duration },
    #[error("waiting for {name} to exit: its exit status could not be collected")]
    Lost { name: String },
}

/// What to do when a daemon's program is missing.
fn spawn_hint(name: &str, source: &io::Error) -> &'static str {
    if source.kind() != io::ErrorKind::NotFound {
        return "";
    }
    if name.starts_with("sysbox") {
        "; sysbox is not installed in this image: it was built runc-only (deploy/image/Dockerfile with \
         an empty SYSBOX_DEB build argument); rebuild it with SYSBOX_DEB (the default), or set \
         ENVBOX_RUNTIME=runc to run without sysbox (for development: no systemd or Docker inside)"
    } else {
        "; it must be installed in envbox's image and found in PATH"
    }
}
