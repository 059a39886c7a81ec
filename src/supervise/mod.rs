//! envbox's supervised daemons: containerd always, sysbox-mgr and sysbox-fs when the runtime is
//! sysbox-runc, and the cgroup v2 preparation they need first.
//!
//! Owns: starting them in order and in parallel where they do not depend on each other,
//! waiting until each one really serves its socket, noticing when one dies, and stopping them.
//! Each daemon's stdout and stderr go to `<run_dir>/log/<name>.log` (the previous run's kept
//! as `.log.1`); errors quote the last lines. Daemons die with envbox (`PR_SET_PDEATHSIG`), get
//! a clean environment (never the agent token), and stale sockets and pid files of a previous
//! run are removed before they start. It never creates containers or talks CNI: the launcher
//! does, over [`Daemons::channel`].
//!
//! ```ignore
//! let daemons = Daemons::start(&DaemonConfig::from_settings(&settings)).await?;
//! let channel = daemons.channel();            // containerd gRPC, ready
//! tokio::select! {
//!     death = daemons.died() => return Err(death.into()),   // name, status, log tail, hint
//!     _ = run_workspace(channel) => {}
//! }
//! for problem in daemons.stop().await { warn(problem) }   // containerd, then sysbox-fs, -mgr
//! ```
//!
//! After the container started, [`cgroup::copy_cpu_quota`] copies the outer CPU limit into its
//! cgroup (non-fatal: a cgroup `QuotaWarning`).

pub(crate) mod cgroup;
mod child;
mod containerd;
mod error;
pub(crate) mod log;
mod spawner;
#[cfg(test)]
mod stand_in_tests;
mod sysbox;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use tonic::transport::Channel;

use crate::config::{Runtime, Settings};
use crate::progress::{self, Kind};

#[cfg(test)]
pub(crate) use child::ChildSpec;
pub(crate) use child::Supervised;
pub use containerd::{render_config, ContainerdOptions, ContainerdPaths, DISABLED_PLUGINS};
pub use error::{Death, Phase, StopProblem, SuperviseError};
pub use spawner::SpawnerError;
pub use sysbox::{SysboxOptions, HINT as SYSBOX_HINT};

/// Whether [`Daemons::start`] prepares cgroups first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupSetup {
    /// On cgroup v2 only: own cgroup namespace and mount when needed, processes into `init`,
    /// controllers enabled. Only inside the pod: it remounts `/sys/fs/cgroup`.
    Prepare,
    /// Leave cgroups alone (tests, development machines).
    Skip,
}

impl CgroupSetup {
    /// `Prepare` only for PID 1, the pod's entrypoint.
    pub(crate) fn for_pid(pid: u32) -> CgroupSetup {
        if pid == 1 {
            CgroupSetup::Prepare
        } else {
            CgroupSetup::Skip
        }
    }
}

/// Everything [`Daemons::start`] needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonConfig {
    /// sysbox-runc starts the sysbox daemons; runc needs none.
    pub runtime: Runtime,
    /// The persistent volume's envbox directory (where an earlier envbox kept containerd's
    /// metadata: removed at start).
    pub state_dir: PathBuf,
    /// Per-boot files: containerd's state, sockets and config, daemon logs.
    pub run_dir: PathBuf,
    /// Whether to prepare cgroups before the daemons start.
    pub cgroups: CgroupSetup,
    /// containerd's settings.
    pub containerd: ContainerdOptions,
    /// sysbox-mgr's and sysbox-fs's settings.
    pub sysbox: SysboxOptions,
    /// How long each daemon gets after SIGTERM before SIGKILL; default 10 s.
    pub stop_grace: Duration,
}

impl DaemonConfig {
    /// The production configuration: real binaries from `PATH`; cgroups prepared only when
    /// envbox is PID 1, i.e. the pod's entrypoint (the preparation moves every process of its
    /// cgroup and may remount `/sys/fs/cgroup`: never on a developer's machine or a CI host).
    pub(crate) fn from_settings(settings: &Settings) -> Self {
        DaemonConfig {
            runtime: settings.runtime,
            state_dir: settings.state_dir.clone(),
            run_dir: settings.run_dir.clone(),
            cgroups: CgroupSetup::for_pid(std::process::id()),
            containerd: ContainerdOptions::default(),
            sysbox: SysboxOptions {
                disable_idmapped_mount: settings.disable_idmapped_mount,
                ..SysboxOptions::default()
            },
            stop_grace: Duration::from_secs(10),
        }
    }

    /// `<run_dir>/log`.
    pub(crate) fn log_dir(&self) -> PathBuf {
        crate::run_dir::RunLayout::new(&self.run_dir).logs()
    }
}

/// The running daemons. Dropping this kills them (SIGKILL); [`Daemons::stop`] stops them in
/// order.
#[derive(Debug)]
pub struct Daemons {
    containerd: containerd::Containerd,
    sysbox: Option<sysbox::Sysbox>,
    socket: PathBuf,
    stop_grace: Duration,
}

impl Daemons {
    /// Prepares cgroups (if asked), then starts the sysbox daemons (sysbox-runc only) and
    /// containerd side by side, and returns when all of them are ready. On any failure, what
    /// was started is killed and the error names the daemon, with its log's tail.
    pub async fn start(config: &DaemonConfig) -> Result<Daemons, SuperviseError> {
        if config.cgroups == CgroupSetup::Prepare {
            // On the spawner thread: the daemons must inherit its cgroup namespace.
            let report =
                spawner::on_spawner_thread(|| cgroup::prepare(&cgroup::RealCgroupSys)).await??;
            progress::warn_all(&report.warnings);
        }
        let log_dir = config.log_dir();
        let paths = ContainerdPaths::new(&config.state_dir, &config.run_dir);
        let with_sysbox = config.runtime == Runtime::SysboxRunc;
        if with_sysbox {
            progress::emit(Kind::Info, "Starting sysbox-mgr and sysbox-fs...");
        }
        progress::emit(Kind::Info, "Starting containerd...");
        let sysbox = async {
            if !with_sysbox {
                return Ok(None);
            }
            let sysbox = sysbox::start(&config.sysbox, &log_dir).await?;
            progress::emit(Kind::Info, "sysbox-mgr and sysbox-fs are ready");
            Ok(Some(sysbox))
        };
        let (sysbox, containerd) =
            tokio::try_join!(sysbox, containerd::start(&paths, &config.containerd))?;
        progress::emit(
            Kind::Info,
            &format!(
                "containerd {} is ready ({} ms)",
                containerd.version,
                containerd.ready_after.as_millis()
            ),
        );
        Ok(Daemons {
            containerd,
            sysbox,
            socket: paths.grpc_socket,
            stop_grace: config.stop_grace,
        })
    }

    /// containerd's gRPC socket.
    pub fn containerd_socket(&self) -> &Path {
        &self.socket
    }

    /// A connected channel to containerd (cheap to clone).
    pub fn channel(&self) -> Channel {
        self.containerd.channel.clone()
    }

    /// What containerd's `Version` answered.
    pub fn containerd_version(&self) -> &str {
        &self.containerd.version
    }

    /// Every daemon, in start order (sysbox-mgr, sysbox-fs, containerd).
    pub fn daemons(&self) -> Vec<&Supervised> {
        let mut all = Vec::new();
        if let Some(sysbox) = &self.sysbox {
            all.extend([&sysbox.mgr, &sysbox.fs]);
        }
        all.push(&self.containerd.child);
        all
    }

    /// Resolves when any daemon exits without being stopped: its name, exit status, log tail
    /// and (sysbox) the likely cause. Cancel-safe, for `select!`.
    pub async fn died(&self) -> Death {
        let watches: Vec<Pin<Box<dyn Future<Output = Death> + Send + '_>>> = self
            .daemons()
            .into_iter()
            .map(|d| Box::pin(d.died()) as Pin<Box<dyn Future<Output = Death> + Send + '_>>)
            .collect();
        futures_util::future::select_all(watches).await.0
    }

    /// Stops containerd, then sysbox-fs, then sysbox-mgr: SIGTERM, the grace period, SIGKILL.
    /// Every daemon is stopped and reaped whatever happens to the others; what went wrong is
    /// returned (empty after a clean stop). Stop the container first: containerd's shims (and
    /// so the container) outlive containerd.
    pub async fn stop(self) -> Vec<StopProblem> {
        let mut problems = Vec::new();
        let mut order = vec![self.containerd.child];
        if let Some(sysbox) = self.sysbox {
            order.extend([sysbox.fs, sysbox.mgr]);
        }
        for daemon in order {
            if let Err(problem) = daemon.stop(self.stop_grace).await {
                problems.push(problem);
            }
        }
        problems
    }
}
