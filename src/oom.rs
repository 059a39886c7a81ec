//! Whom the OOM killer takes: the workspace, never its supervisors.
//!
//! Owns: envbox's own `oom_score_adj` (lowered to [`SUPERVISOR`] when `envbox docker` starts,
//! so containerd, the shims, sysbox-mgr and sysbox-fs inherit it) and the workspace's score:
//! the value the pod had (the kubelet's choice for its QoS class), kept above the supervisors';
//! [`FIRST`] where they could not be lowered. It never touches a process envbox did not start.
//!
//! Written by root with CAP_SYS_RESOURCE, a score is also the floor of its process and its
//! descendants: nothing in the workspace can lower its own below it.

use std::path::PathBuf;
use std::sync::OnceLock;

/// envbox, containerd, the shims and the sysbox daemons: taken last (-1000 would mean never,
/// which leaves the kernel nothing to free if they are what runs away).
pub const SUPERVISOR: i32 = -999;

/// The workspace's score, settled by [`protect_supervisors`].
static WORKSPACE: OnceLock<i32> = OnceLock::new();

/// The score that makes the workspace the OOM killer's first choice.
pub const FIRST: i32 = 1000;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum OomError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds {text:?}, not a number")]
    Parse { path: PathBuf, text: String },
    #[error(
        "setting {path} to {score} (the pod needs CAP_SYS_RESOURCE: run it privileged): {source}"
    )]
    Write {
        path: PathBuf,
        score: i32,
        source: std::io::Error,
    },
}

fn path(pid: Option<u32>) -> PathBuf {
    match pid {
        Some(pid) => PathBuf::from(format!("/proc/{pid}/oom_score_adj")),
        None => PathBuf::from("/proc/self/oom_score_adj"),
    }
}

/// The score of `pid` (this process when `None`).
pub fn read(pid: Option<u32>) -> Result<i32, OomError> {
    let path = path(pid);
    let text = std::fs::read_to_string(&path).map_err(|source| OomError::Read {
        path: path.clone(),
        source,
    })?;
    text.trim().parse().map_err(|_| OomError::Parse {
        path,
        text: text.trim().to_owned(),
    })
}

/// Sets the score of `pid` (this process when `None`).
pub fn set(pid: Option<u32>, score: i32) -> Result<(), OomError> {
    let path = path(pid);
    std::fs::write(&path, score.to_string()).map_err(|source| OomError::Write {
        path,
        score,
        source,
    })
}

/// Lowers this process's score to [`SUPERVISOR`] (the daemons started after it inherit it)
/// and settles the workspace's: the pod's, kept above the supervisors'. Where the score cannot
/// be lowered (no CAP_SYS_RESOURCE), the workspace gets [`FIRST`] instead, so that it is
/// still taken before its supervisors, and the error says why.
pub fn protect_supervisors() -> Result<(), OomError> {
    let pod = read(None)?;
    let lowered = set(None, SUPERVISOR);
    let workspace = match lowered {
        Ok(()) => workspace_score(pod),
        Err(_) => FIRST,
    };
    WORKSPACE.get_or_init(|| workspace);
    lowered
}

/// The workspace's score: as [`protect_supervisors`] settled it, else (`envbox spec`, a bundle)
/// the one this process's score gives.
pub fn workspace() -> i32 {
    WORKSPACE
        .get()
        .copied()
        .unwrap_or_else(|| workspace_score(read(None).unwrap_or(0)))
}

/// The workspace's score for a pod score, once the supervisors are at [`SUPERVISOR`]: the
/// pod's, so the workspace weighs on the node as the kubelet meant, but always above theirs.
pub fn workspace_score(pod: i32) -> i32 {
    pod.max(SUPERVISOR + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workspace_keeps_the_pods_score_but_never_falls_to_the_supervisors() {
        assert_eq!(workspace_score(1000), 1000);
        assert_eq!(workspace_score(937), 937);
        assert_eq!(workspace_score(-997), -997, "a Guaranteed pod");
        assert_eq!(workspace_score(-999), -998);
        assert_eq!(workspace_score(-1000), -998);
    }

    #[test]
    fn a_missing_process_is_named() {
        let err = read(Some(u32::MAX)).unwrap_err();
        assert!(
            err.to_string().contains("/proc/4294967295/oom_score_adj"),
            "{err}"
        );
    }
}
