//! One supervised daemon: [`ChildSpec`] says what to run, [`Supervised`] is the running child.
//!
//! Owns: the life of one daemon process: stale sockets and pid files of a previous run removed
//! (refusing when a live process still serves the socket), stdout and stderr into a fresh log
//! file, a clean environment (`PATH` and the spec's variables only: envbox's own environment
//! holds the agent token), the fork through [`spawner`](super::spawner) (death signal, own
//! process group), the readiness wait ([`Supervised::wait_ready`]), unexpected-exit detection
//! ([`Supervised::died`]) and the orderly stop (SIGTERM, grace period, SIGKILL, reap). One
//! task per child owns the process handle, so only that task signals and reaps it: a pid is
//! never signalled after it was reaped. It never decides what a daemon's readiness means: the
//! caller's probe does.

use std::ffi::OsString;
use std::fs;
use std::future::Future;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, SystemTime};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use super::error::{Death, Phase, StopProblem, SuperviseError};
use super::{log, spawner};

/// How long a stale socket that still accepts connections may take to go away (its owner
/// still dying: a killed multi-threaded daemon closes its files only when its last thread
/// is gone) before it counts as served by a live process.
const IN_USE_GRACE: Duration = Duration::from_secs(2);

/// `PATH` for daemons when envbox has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What to run and where its traces go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChildSpec {
    /// Short name used in logs and errors (`containerd`).
    pub name: String,
    /// The executable: a path, or a name looked up in `PATH`.
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// Variables set besides `PATH` (which is envbox's own, or a default).
    pub env: Vec<(OsString, OsString)>,
    /// The log file; the previous run's is kept as `<log>.1`.
    pub log: PathBuf,
    /// Sockets and pid files a previous run may have left; removed before the start.
    pub stale_files: Vec<PathBuf>,
    /// Appended to the message when the daemon dies.
    pub hint: Option<&'static str>,
}

/// How the child ended.
#[derive(Debug, Clone, Copy)]
struct Exit {
    status: Option<ExitStatus>,
    /// The exit followed a stop request (or the drop of the [`Supervised`]).
    requested: bool,
    /// SIGKILL was needed.
    killed: bool,
}

/// A running daemon. Dropping it kills the daemon (SIGKILL); [`Supervised::stop`] stops it in
/// order.
#[derive(Debug)]
pub struct Supervised {
    name: String,
    pid: u32,
    log: PathBuf,
    hint: Option<&'static str>,
    exit: watch::Receiver<Option<Exit>>,
    stop: Option<oneshot::Sender<Duration>>,
}

impl Supervised {
    /// Removes the spec's stale files, opens its log and spawns it. Must be called inside a
    /// tokio runtime (a task watches the child).
    pub(crate) async fn start(spec: ChildSpec) -> Result<Supervised, SuperviseError> {
        for path in &spec.stale_files {
            remove_stale(&spec.name, path).await?;
        }
        let header = format!(
            "envbox: starting {} {:?} at {}",
            spec.program.display(),
            spec.args,
            crate::progress::rfc3339(SystemTime::now())
        );
        let open_log = |e| SuperviseError::OpenLog {
            name: spec.name.clone(),
            path: spec.log.clone(),
            source: e,
        };
        let out = log::open_for_run(&spec.log, &header).map_err(open_log)?;
        let err = out.try_clone().map_err(open_log)?;
        let mut command = Command::new(&spec.program);
        command
            .args(&spec.args)
            .env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or(DEFAULT_PATH.into()),
            )
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let spawn_error = |source| SuperviseError::Spawn {
            name: spec.name.clone(),
            program: spec.program.display().to_string(),
            source,
        };
        let child = spawner::spawn(command).await?.map_err(spawn_error)?;
        let pid = child
            .id()
            .ok_or_else(|| spawn_error(io::Error::from(io::ErrorKind::NotFound)))?;
        let (exit_tx, exit) = watch::channel(None);
        let (stop, stop_rx) = oneshot::channel();
        tokio::spawn(watch_child(child, pid, exit_tx, stop_rx));
        Ok(Supervised {
            name: spec.name,
            pid,
            log: spec.log,
            hint: spec.hint,
            exit,
            stop: Some(stop),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The daemon's process id (valid until it is reaped).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Its log file.
    #[cfg(test)]
    pub(crate) fn log(&self) -> &Path {
        &self.log
    }

    /// The last lines of its log.
    pub(crate) fn log_tail(&self) -> Vec<String> {
        log::tail(&self.log, log::TAIL_LINES)
    }

    /// Polls `probe` every `interval` until it succeeds, the daemon exits
    /// ([`SuperviseError::Died`]) or `timeout` passes ([`SuperviseError::NotReady`], with the
    /// last probe error). A probe still running at the deadline is abandoned.
    pub(crate) async fn wait_ready<T, E, F, Fut>(
        &self,
        timeout: Duration,
        interval: Duration,
        mut probe: F,
    ) -> Result<T, SuperviseError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        let deadline = Instant::now() + timeout;
        let mut last_error: Option<Box<dyn std::error::Error + Send + Sync>> = None;
        loop {
            tokio::select! {
                biased;
                exit = self.exited() => return Err(self.died_error(exit, Phase::Starting)),
                attempt = tokio::time::timeout_at(deadline, probe()) => match attempt {
                    Ok(Ok(value)) => return Ok(value),
                    Ok(Err(e)) => last_error = Some(Box::new(e)),
                    Err(_) => {}
                },
            }
            if Instant::now() >= deadline {
                return Err(SuperviseError::NotReady {
                    name: self.name.clone(),
                    waited: timeout,
                    last_error,
                    log: self.log.clone(),
                    log_tail: self.log_tail(),
                });
            }
            tokio::select! {
                biased;
                exit = self.exited() => return Err(self.died_error(exit, Phase::Starting)),
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }

    /// Resolves when the daemon exits without a stop request; pending forever otherwise.
    /// Cancel-safe: call it again after a `select!` dropped it.
    pub(crate) async fn died(&self) -> Death {
        match self.exit_matching(|e| !e.requested).await {
            Some(exit) => self.death(exit, Phase::Running),
            None => std::future::pending().await,
        }
    }

    /// SIGTERM, up to `grace` for the exit, then SIGKILL; always reaps. `Ok` carries the exit
    /// status after a timely exit.
    pub(crate) async fn stop(mut self, grace: Duration) -> Result<ExitStatus, StopProblem> {
        if let Some(stop) = self.stop.take() {
            // Refused when the daemon already exited by itself: reported below.
            let _ = stop.send(grace);
        }
        let name = self.name.clone();
        match self.exit_matching(|_| true).await {
            None => Err(StopProblem::Lost { name }),
            Some(exit) if !exit.requested => Err(StopProblem::AlreadyDead {
                name,
                death: Box::new(self.death(exit, Phase::Running)),
            }),
            Some(exit) if exit.killed => Err(StopProblem::Killed { name, grace }),
            Some(Exit { status: None, .. }) => Err(StopProblem::Lost { name }),
            Some(Exit {
                status: Some(status),
                ..
            }) => Ok(status),
        }
    }

    /// Any exit (used while not yet ready, when no stop can have been requested).
    async fn exited(&self) -> Option<Exit> {
        self.exit_matching(|_| true).await
    }

    /// The exit once it matches `wanted`; `None` when the watching task is gone without one.
    async fn exit_matching(&self, wanted: impl Fn(&Exit) -> bool) -> Option<Exit> {
        let mut exit = self.exit.clone();
        let seen = exit
            .wait_for(|e| e.as_ref().is_some_and(&wanted))
            .await
            .ok()
            .and_then(|e| *e);
        seen
    }

    fn died_error(&self, exit: Option<Exit>, phase: Phase) -> SuperviseError {
        let exit = exit.unwrap_or(Exit {
            status: None,
            requested: false,
            killed: false,
        });
        SuperviseError::Died(Box::new(self.death(exit, phase)))
    }

    fn death(&self, exit: Exit, phase: Phase) -> Death {
        Death {
            name: self.name.clone(),
            phase,
            status: exit.status,
            log: self.log.clone(),
            log_tail: self.log_tail(),
            hint: self.hint,
        }
    }
}

/// Removes a socket or pid file left by a previous run; a socket something still accepts
/// connections on after [`IN_USE_GRACE`] is refused.
async fn remove_stale(name: &str, path: &Path) -> Result<(), SuperviseError> {
    let stale_error = |source| SuperviseError::RemoveStale {
        name: name.to_owned(),
        path: path.to_owned(),
        source,
    };
    let meta = match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(stale_error(e)),
        Ok(meta) => meta,
    };
    if meta.is_dir() {
        return Err(SuperviseError::StaleIsDirectory {
            name: name.to_owned(),
            path: path.to_owned(),
        });
    }
    if meta.file_type().is_socket() {
        let deadline = Instant::now() + IN_USE_GRACE;
        while UnixStream::connect(path).is_ok() {
            if Instant::now() >= deadline {
                return Err(SuperviseError::SocketInUse {
                    name: name.to_owned(),
                    path: path.to_owned(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(stale_error(e)),
        _ => Ok(()),
    }
}

/// Owns the process: waits for it, or on a stop request (or the [`Supervised`] dropped)
/// terminates it; publishes how it ended.
async fn watch_child(
    mut child: Child,
    pid: u32,
    exit: watch::Sender<Option<Exit>>,
    stop: oneshot::Receiver<Duration>,
) {
    let request = tokio::select! {
        status = child.wait() => {
            exit.send_replace(Some(Exit { status: status.ok(), requested: false, killed: false }));
            return;
        }
        request = stop => request.ok(),
    };
    exit.send_replace(Some(terminate(&mut child, pid, request).await));
}

/// SIGTERM and up to `grace` for the exit (no grace: the handle was dropped), then SIGKILL.
async fn terminate(child: &mut Child, pid: u32, grace: Option<Duration>) -> Exit {
    if let Some(grace) = grace {
        // The child is not reaped yet (we hold it), so the pid is still its own.
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        if let Ok(status) = tokio::time::timeout(grace, child.wait()).await {
            return Exit {
                status: status.ok(),
                requested: true,
                killed: false,
            };
        }
    }
    let _ = child.start_kill();
    Exit {
        status: child.wait().await.ok(),
        requested: true,
        killed: true,
    }
}
