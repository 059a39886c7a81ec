//! sysbox-mgr and sysbox-fs: the daemons sysbox-runc talks to.
//!
//! Owns: their command lines ([`mgr_spec`], [`fs_spec`], pure), the files a previous run may
//! have left (sockets and pid files under `/run/sysbox`), starting both and waiting until
//! `connect()` succeeds on each socket (they log "ready" slightly before their socket
//! accepts), and the message when one of them dies: the node kernel or the pod's privileges
//! are the usual cause. Paths and executables are [`SysboxOptions`] fields so tests can use
//! stand-ins. It never configures sysbox-runc itself (the launcher's shim options do).

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::UnixStream;

use super::child::{ChildSpec, Supervised};
use super::error::SuperviseError;

pub(crate) const MGR_NAME: &str = "sysbox-mgr";
pub(crate) const FS_NAME: &str = "sysbox-fs";

/// Why a sysbox daemon usually dies (behaviour doc §3).
pub const HINT: &str = "the node's kernel may be unsupported (sysbox needs Linux >= 5.12 \
    and seccomp notify with seccomp API level >= 5), or the pod is not privileged (envbox's \
    container needs securityContext.privileged: true)";

/// How often each socket is tried while the daemons start.
const PROBE_INTERVAL: Duration = Duration::from_millis(20);

/// How to run the sysbox daemons. Defaults are the real ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysboxOptions {
    /// Default `sysbox-mgr` (looked up in `PATH`).
    pub mgr_binary: PathBuf,
    /// Default `sysbox-fs`.
    pub fs_binary: PathBuf,
    /// Where they put their sockets and pid files; default `/run/sysbox` (fixed in sysbox:
    /// only stand-ins can use another).
    pub run_dir: PathBuf,
    /// Pass `--disable-idmapped-mount` to sysbox-mgr (`CODER_DISABLE_IDMAPPED_MOUNT`).
    pub disable_idmapped_mount: bool,
    /// How long to wait for both sockets; default 60 s.
    pub ready_timeout: Duration,
}

impl Default for SysboxOptions {
    fn default() -> Self {
        SysboxOptions {
            mgr_binary: PathBuf::from("sysbox-mgr"),
            fs_binary: PathBuf::from("sysbox-fs"),
            run_dir: PathBuf::from("/run/sysbox"),
            disable_idmapped_mount: false,
            ready_timeout: Duration::from_secs(60),
        }
    }
}

impl SysboxOptions {
    /// sysbox-mgr's gRPC socket (`sysmgr.sock`).
    pub fn mgr_socket(&self) -> PathBuf {
        self.run_dir.join("sysmgr.sock")
    }

    /// sysbox-fs's gRPC socket (`sysfs.sock`).
    pub fn fs_socket(&self) -> PathBuf {
        self.run_dir.join("sysfs.sock")
    }
}

/// sysbox-mgr's command line; its log goes to `<log_dir>/sysbox-mgr.log`.
pub(crate) fn mgr_spec(options: &SysboxOptions, log_dir: &Path) -> ChildSpec {
    let mut args = Vec::new();
    if options.disable_idmapped_mount {
        args.push("--disable-idmapped-mount".into());
    }
    ChildSpec {
        name: MGR_NAME.into(),
        program: options.mgr_binary.clone(),
        args,
        env: Vec::new(),
        log: log_dir.join(format!("{MGR_NAME}.log")),
        stale_files: vec![options.mgr_socket(), options.run_dir.join("sysmgr.pid")],
        hint: Some(HINT),
    }
}

/// sysbox-fs's command line (it takes no flags from envbox).
pub(crate) fn fs_spec(options: &SysboxOptions, log_dir: &Path) -> ChildSpec {
    ChildSpec {
        name: FS_NAME.into(),
        program: options.fs_binary.clone(),
        args: Vec::new(),
        env: Vec::new(),
        log: log_dir.join(format!("{FS_NAME}.log")),
        stale_files: vec![
            options.fs_socket(),
            options.run_dir.join("sysfs-seccomp.sock"),
            options.run_dir.join("sysfs.pid"),
        ],
        hint: Some(HINT),
    }
}

/// Both sysbox daemons, ready.
#[derive(Debug)]
pub(crate) struct Sysbox {
    pub mgr: Supervised,
    pub fs: Supervised,
}

/// Starts sysbox-mgr and sysbox-fs side by side and waits until each socket accepts a
/// connection. If either dies or times out, both are killed and the error names the one that
/// failed, with [`HINT`] and its log's tail.
pub(crate) async fn start(
    options: &SysboxOptions,
    log_dir: &Path,
) -> Result<Sysbox, SuperviseError> {
    std::fs::create_dir_all(&options.run_dir).map_err(|source| SuperviseError::CreateDir {
        name: MGR_NAME.into(),
        path: options.run_dir.clone(),
        source,
    })?;
    let mgr = Supervised::start(mgr_spec(options, log_dir)).await?;
    let fs = Supervised::start(fs_spec(options, log_dir)).await?;
    let (mgr_socket, fs_socket) = (options.mgr_socket(), options.fs_socket());
    tokio::try_join!(
        mgr.wait_ready(options.ready_timeout, PROBE_INTERVAL, || {
            UnixStream::connect(mgr_socket.clone())
        }),
        fs.wait_ready(options.ready_timeout, PROBE_INTERVAL, || {
            UnixStream::connect(fs_socket.clone())
        }),
    )?;
    Ok(Sysbox { mgr, fs })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mgr_gets_disable_idmapped_mount_only_when_set() {
        let mut options = SysboxOptions::default();
        let log_dir = Path::new("/run/envbox/log");
        assert!(mgr_spec(&options, log_dir).args.is_empty());
        options.disable_idmapped_mount = true;
        let mgr = mgr_spec(&options, log_dir);
        assert_eq!(mgr.args, ["--disable-idmapped-mount"]);
        assert!(
            fs_spec(&options, log_dir).args.is_empty(),
            "sysbox-fs takes no such flag"
        );
        assert_eq!(mgr.program, Path::new("sysbox-mgr"));
        assert_eq!(mgr.log, Path::new("/run/envbox/log/sysbox-mgr.log"));
    }

    #[test]
    fn stale_files_are_sysbox_s_fixed_sockets_and_pid_files() {
        let options = SysboxOptions::default();
        let log_dir = Path::new("/run/envbox/log");
        assert_eq!(
            mgr_spec(&options, log_dir).stale_files,
            [
                Path::new("/run/sysbox/sysmgr.sock"),
                Path::new("/run/sysbox/sysmgr.pid")
            ]
        );
        assert_eq!(
            fs_spec(&options, log_dir).stale_files,
            [
                Path::new("/run/sysbox/sysfs.sock"),
                Path::new("/run/sysbox/sysfs-seccomp.sock"),
                Path::new("/run/sysbox/sysfs.pid")
            ]
        );
        assert_eq!(fs_spec(&options, log_dir).hint, Some(HINT));
    }
}
