//! `envbox docker` end to end: from settings to a running workspace, and back down.
//!
//! Owns: the order of the stages and what is undone when one fails or a stop is asked for. Start:
//! supervised daemons (sysbox when the runtime is sysbox-runc, then containerd) start while the
//! image is prepared and the rest of the host side is laid on it (`groundwork`: rootfs assembly,
//! the runtime spec and its host setup, a previous run's network lease and bridge released; only
//! after containerd has removed an earlier container when one may still use the rootfs); then
//! leftovers of a previous run removed (task, container), container + task created, CNI ADD on the
//! task's namespace while the bootstrap script's exec is started in the created task with its stdin
//! (the script) held back, task started, CPU quota mirrored, the script fed to the exec (its output
//! in the progress log), `done`, and the blobs fetched and layers unpacked for this start synced to
//! disk in the background (they are crash-safe meanwhile, see `crate::cache` and `crate::unpack`:
//! the workspace need not wait for the disk), then the caller's cleanup of the image cache, still
//! in the background. An init that exits (at once, so the bootstrap script meets a stopped
//! container, or later) is reported as such: which init, its status, its last output, a hint for
//! systemd under runc ([`init_exit`]). Then it waits for a signal, a daemon's death or the init's
//! exit, and stops ([`stop`]): agent and init signalled, grace period, everything killed, CNI DEL,
//! task and container deleted, rootfs released, daemons stopped. Each stage's logic lives in its
//! own module; this one only composes them.

mod groundwork;
mod init_exit;
mod netns;
mod outer;
pub(crate) mod stop;
mod teardown;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::bootstrap;
use crate::config::Settings;
use crate::network::{self, Attachment, Network};
use crate::overlay::{self, Rootfs};
use crate::plan;
use crate::prepare::PreparedImage;
use crate::progress::{self, warn_all, Kind};
use crate::rootfs::PasswdEntry;
use crate::run_dir::{Keep, RunLayout};
use crate::runtime::{
    self, ContainerDef, Engine, ExecDef, ExecSignaller, ExitStatus, HeldExec, PendingExec, Task,
};
use crate::setup;
use crate::supervise::{self, Daemons};

use groundwork::{Groundwork, WorkspacePlan};
pub(crate) use init_exit::InitEnded;
use init_exit::{InitLog, InitWatch};
pub(crate) use netns::NetnsHold;

/// The inner container's ID (and name), as in the Go envbox.
pub const CONTAINER_ID: &str = "workspace_cvm";

/// How long a failed bootstrap exec waits to learn whether the init has exited (a stopped
/// init answers at once).
const INIT_EXIT_WAIT: Duration = Duration::from_secs(1);

/// Errors of this module: which stage failed, with its cause.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LaunchError {
    #[error("starting the supervised daemons: {0}")]
    Daemons(#[from] supervise::SuperviseError),
    #[error("preparing the image: {0}")]
    Prepare(anyhow::Error),
    #[error("assembling the root filesystem: {0}")]
    Rootfs(#[from] overlay::OverlayError),
    #[error(transparent)]
    Plan(#[from] plan::PlanError),
    #[error("setting up the host for the workspace: {0}")]
    Setup(#[from] setup::SetupError),
    #[error(transparent)]
    Runtime(#[from] runtime::RuntimeError),
    #[error("workspace network: {0}")]
    Network(#[from] network::NetworkError),
    #[error("bootstrap: {0}")]
    Bootstrap(#[from] bootstrap::BootstrapError),
    #[error("holding the workspace's network namespace (/proc/{pid}/ns/net): {source}")]
    Netns { pid: u32, source: std::io::Error },
    #[error("{path} (mode {mode:o}, owner {uid}) cannot be searched by the workspace's root (uid {shifted}), so the runtime cannot reach the root filesystem under it: allow others to search it (chmod o+x) or put ENVBOX_STATE_DIR elsewhere", shifted = crate::image::ID_SHIFT)]
    Unreachable { path: PathBuf, mode: u32, uid: u32 },
    #[error("making {path} readable by root alone (it holds the agent token): {source}")]
    Private {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("listening for signals: {0}")]
    Signals(std::io::Error),
    #[error("the workspace was stopped because {0}")]
    DaemonDied(String),
    /// The init ended: right after start (the bootstrap exec then fails in a stopped
    /// container), or later.
    #[error("{0}")]
    InitExited(InitEnded),
    #[error("containerd stopped answering about the workspace's init; the workspace was stopped")]
    LostContainerd,
    #[error("stopped by {0} before the workspace was up")]
    Interrupted(&'static str),
}

/// How the image is made ready: given by the caller (`cmd`), which owns registry wiring.
pub(crate) type PrepareFn =
    Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = anyhow::Result<PreparedImage>>>>>;

/// What runs in the background once the workspace is up and the volume synced (the cache's
/// cleanup), on a blocking thread: given by the caller (`cmd`).
pub(crate) type AfterUpFn = Box<dyn FnOnce(PreparedImage) + Send>;

/// The bootstrap process while it runs: a handle to signal it, and its exit.
struct RunningBootstrap {
    signaller: ExecSignaller,
    done: tokio::task::JoinHandle<Result<ExitStatus, runtime::RuntimeError>>,
}

/// Everything started so far; what [`Workspace::stop`] undoes.
#[derive(Default)]
struct Workspace {
    daemons: Option<Daemons>,
    rootfs: Option<Rootfs>,
    engine: Option<Engine>,
    task: Option<Task>,
    netns: Option<NetnsHold>,
    network: Option<Arc<Network>>,
    attachment: Option<Attachment>,
    bootstrap: Option<RunningBootstrap>,
    init_signal: i32,
    image_init: bool,
    /// What explains the init's end, from its start on.
    init: Option<InitWatch>,
    /// A supervised daemon died: containerd may be gone, so the stop works without it.
    daemon_died: bool,
}

/// Runs the workspace until a signal stops it. `Ok` after a clean stop on SIGTERM/SIGINT.
pub(crate) async fn run(
    settings: &Settings,
    prepare: PrepareFn,
    after_up: AfterUpFn,
) -> Result<(), LaunchError> {
    let mut signals = Signals::new()?;
    let run_dir = RunLayout::new(&settings.run_dir);
    let made_run_dir = !run_dir.root().exists();
    let mut ws = Workspace::default();
    let started = tokio::select! {
        result = ws.start(settings, prepare, after_up) => result,
        name = signals.next() => Err(LaunchError::Interrupted(name)),
    };
    let outcome = match started {
        Ok(()) => ws.wait(&mut signals).await,
        Err(error) => Err(error),
    };
    // The caller reports an error (progress line, termination log) once stopped.
    let complete = ws.stop(settings.stop_timeout).await;
    clear_run_dir(&run_dir, complete, outcome.is_err(), made_run_dir);
    outcome
}

/// After a complete stop, removes what the start created under the run dir, and the run dir
/// if this start made it. After a failure the logs (the init's and the daemons') stay, for
/// whoever looks into it; CNI state whose DEL failed stays for the next start to release.
/// After an incomplete stop everything stays: the next start cleans up with it.
fn clear_run_dir(run_dir: &RunLayout, complete: bool, failed: bool, made_run_dir: bool) {
    let root = run_dir.root().display();
    if !complete {
        progress::emit(
            Kind::Info,
            &format!("{root} left as it is: the next start with this run dir cleans up with it"),
        );
        return;
    }
    let keep = Keep {
        logs: failed,
        cni: network::attachment_cached(&run_dir.cni()),
    };
    for problem in run_dir.clear(keep, made_run_dir) {
        progress::emit(Kind::Error, &format!("clearing the run dir: {problem}"));
    }
    if failed && run_dir.logs().exists() {
        progress::emit(
            Kind::Info,
            &format!(
                "logs kept for a look into the failure: {} (the workspace's init) and {} (the daemons)",
                run_dir.init_log().display(),
                run_dir.logs().display()
            ),
        );
    }
}

/// SIGTERM and SIGINT.
struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    fn new() -> Result<Signals, LaunchError> {
        Ok(Signals {
            term: signal(SignalKind::terminate()).map_err(LaunchError::Signals)?,
            int: signal(SignalKind::interrupt()).map_err(LaunchError::Signals)?,
        })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

impl Workspace {
    async fn start(
        &mut self,
        settings: &Settings,
        prepare: PrepareFn,
        after_up: AfterUpFn,
    ) -> Result<(), LaunchError> {
        let begun = Instant::now();
        // The daemons start while the image is prepared and, unless a container of an earlier
        // run may still use the rootfs, while the rootfs and spec are laid on top of it.
        // The first failure of either ends the other (a missing sysbox is said at once, not
        // after the pull's retries).
        let daemon_config = supervise::DaemonConfig::from_settings(settings);
        let early = !groundwork::earlier_container_may_run(settings);
        let mut laid_early = None;
        let joined = tokio::try_join!(
            async {
                supervise::Daemons::start(&daemon_config)
                    .await
                    .map_err(LaunchError::from)
            },
            async {
                let prepared = prepare().await.map_err(LaunchError::Prepare)?;
                stage(begun, "image prepared");
                if early {
                    laid_early = Some(lay(settings, &prepared, begun).await?);
                }
                Ok(prepared)
            }
        );
        // Kept before the daemons' outcome is looked at, so a stop after their failure undoes
        // it. (A failure while it is being laid leaves the rootfs to the next start, which
        // clears it first.)
        let plan_early = laid_early.map(|laid| self.keep(laid));
        let (daemons, prepared) = joined?;
        self.daemons = Some(daemons);
        stage(begun, "daemons ready");

        let daemons = self.daemons.as_ref().expect("started above");
        let engine = Engine::with_channel(daemons.channel());
        self.engine = Some(engine.clone());
        if engine.remove_leftovers(CONTAINER_ID).await? {
            progress::emit(
                Kind::Info,
                "Removed the workspace container a previous run left",
            );
        }
        // Only now when that container may have been using the rootfs.
        let plan = match plan_early {
            Some(plan) => plan,
            None => {
                let laid = lay(settings, &prepared, begun).await?;
                self.keep(laid)
            }
        };
        let spec = plan.spec;
        let net = plan.network;

        let init_log = InitLog::mark(&RunLayout::new(&settings.run_dir).init_log());
        let task = engine
            .create(&ContainerDef {
                id: CONTAINER_ID,
                spec: &spec,
                runtime_binary: settings.runtime.binary(),
                runtime_root: runtime_root(settings),
                output: format!("file://{}", init_log.path.display()),
            })
            .await?;
        self.init = Some(InitWatch {
            args: spec
                .process()
                .as_ref()
                .and_then(|p| p.args().clone())
                .unwrap_or_default(),
            rootfs: self
                .rootfs
                .as_ref()
                .map(|r| r.path.clone())
                .unwrap_or_default(),
            runtime: settings.runtime,
            log: init_log,
            started: None,
        });
        self.task = Some(task.clone());
        // The spec holds the agent token: its copy in the bundle is root's alone, as the
        // metadata database is (supervise::containerd), in a tree only root can enter.
        let bundle_config = supervise::ContainerdPaths::new(&settings.state_dir, &settings.run_dir)
            .bundle_config(runtime::NAMESPACE, CONTAINER_ID);
        make_private(&bundle_config)?;
        stage(begun, "container and task created");
        let hold = NetnsHold::of_pid(task.pid).map_err(|source| LaunchError::Netns {
            pid: task.pid,
            source,
        })?;
        let netns_path = hold.path();
        self.netns = Some(hold);
        // While the network is attached, the bootstrap's exec is started in the created task
        // with its stdin, the script, held back: the runtime's work for it (runc exec, the
        // seccomp filter) is done beside the CNI ADD, and the script still runs only once the
        // init has started. A runtime that refuses to exec into a created task gets the exec
        // again once the task runs.
        let attach = {
            let net = Arc::clone(&net);
            blocking(move || net.add(&netns_path))
        };
        let boot = match &settings.bootstrap_script {
            Some(script) => Some(BootstrapExec {
                script,
                process: bootstrap_process(&spec, &plan.user, &plan.user_gids)?,
                io_dir: RunLayout::new(&settings.run_dir).exec_io(),
            }),
            None => None,
        };
        let early = async {
            match &boot {
                Some(boot) => Ok(Some(match boot.register(&task).await?.start().await {
                    Ok(held) => {
                        stage(begun, "bootstrap exec started, its script held");
                        EarlyExec::Held(held)
                    }
                    Err(refused) => EarlyExec::Refused(refused),
                })),
                None => Ok(None),
            }
        };
        let (attached, early): (_, Result<_, LaunchError>) = tokio::join!(attach, early);
        let held = match (attached, early) {
            (Ok(attachment), early) => {
                progress::emit(
                    Kind::Info,
                    &format!(
                        "Workspace network: {}/{} via {} (MTU {})",
                        attachment.address, attachment.prefix, attachment.gateway, attachment.mtu
                    ),
                );
                self.attachment = Some(attachment);
                early?
            }
            (Err(error), early) => {
                if let Ok(Some(EarlyExec::Held(held))) = early {
                    held.abandon(INIT_EXIT_WAIT).await;
                }
                return Err(error.into());
            }
        };
        stage(begun, "network attached");
        if let Err(error) = task.start().await {
            if let Some(EarlyExec::Held(held)) = held {
                held.abandon(INIT_EXIT_WAIT).await;
            }
            return Err(error.into());
        }
        if let Some(init) = self.init.as_mut() {
            init.started = Some(Instant::now());
        }
        stage(begun, "task started");
        progress::emit(
            Kind::Info,
            &format!(
                "Workspace container started in {:.1}s",
                begun.elapsed().as_secs_f64()
            ),
        );
        if settings.cpus_milli.is_none() {
            outer::mirror_cpu_quota(task.pid);
        }

        if let (Some(held), Some(boot)) = (held, &boot) {
            let held = match held {
                EarlyExec::Held(held) => Ok(held),
                EarlyExec::Refused(refused) => {
                    tracing::debug!(
                        "the bootstrap exec before the task's start failed ({refused}); \
                         starting it again now that the task runs"
                    );
                    boot.register(&task).await?.start().await
                }
            };
            // Said before the script is fed, so that its first lines follow in the log.
            let exec = match held {
                Ok(held) => {
                    progress::emit(
                        Kind::Info,
                        &format!(
                            "Bootstrap script running as {} (uid {}, groups {})",
                            plan.user.name,
                            plan.user.uid,
                            plan.user_gids
                                .iter()
                                .map(u32::to_string)
                                .collect::<Vec<_>>()
                                .join(",")
                        ),
                    );
                    held.release().await
                }
                Err(error) => Err(error),
            };
            let exec = match exec {
                Ok(exec) => exec,
                // The init exiting at once leaves a stopped container to exec in: say that.
                Err(error) => return Err(self.init_ended_or(&task, error).await),
            };
            self.bootstrap = Some(RunningBootstrap {
                signaller: exec.signaller(),
                done: tokio::spawn(exec.wait()),
            });
            stage(begun, "bootstrap script started");
        }
        progress::emit(Kind::Done, "Workspace is up");
        // Also when nothing was fetched or unpacked now: an earlier start of this boot that was
        // killed before its sync left blobs or layers marked (a directory listing each when
        // there are none).
        // Then the caller's cleanup, which the image's hold on the store (`prepared.hold`)
        // kept waiting until its overlay was mounted.
        tokio::task::spawn_blocking(move || {
            sync_volume(&prepared);
            after_up(prepared);
        });
        Ok(())
    }

    /// Takes over what [`groundwork::lay`] made: from here on the stop undoes it.
    fn keep(&mut self, laid: Groundwork) -> WorkspacePlan {
        self.rootfs = Some(laid.rootfs);
        self.network = Some(Arc::clone(&laid.plan.network));
        self.image_init = laid.plan.image_init;
        self.init_signal = laid.plan.init_signal;
        laid.plan
    }

    /// What a failure to start the bootstrap exec means: when the init has exited (at once,
    /// or within [`INIT_EXIT_WAIT`]), that; else `error` itself.
    async fn init_ended_or(&self, task: &Task, error: runtime::RuntimeError) -> LaunchError {
        match tokio::time::timeout(INIT_EXIT_WAIT, task.wait()).await {
            Ok(Ok(status)) => self.init_ended(status, true).await,
            _ => error.into(),
        }
    }

    /// The init exited with `status`: which init, its last output, and a hint when known.
    async fn init_ended(&self, status: ExitStatus, before_bootstrap: bool) -> LaunchError {
        let init = self.init.as_ref().expect("the task was created");
        LaunchError::InitExited(init.ended(status, before_bootstrap).await)
    }

    /// Waits for what ends the workspace: a signal (`Ok`), a daemon's death or the init's exit
    /// (`Err`). The bootstrap script ending is logged, not an end.
    async fn wait(&mut self, signals: &mut Signals) -> Result<(), LaunchError> {
        let task = self.task.clone().expect("started");
        let init = task.clone();
        let mut init_exit = tokio::spawn(async move { init.wait().await });
        loop {
            let bootstrap = async {
                match self.bootstrap.as_mut() {
                    Some(running) => Some((&mut running.done).await),
                    None => std::future::pending().await,
                }
            };
            let daemons = self.daemons.as_ref().expect("started");
            tokio::select! {
                name = signals.next() => {
                    progress::emit(Kind::Info, &format!("{name} received: stopping the workspace"));
                    return Ok(());
                }
                death = daemons.died() => {
                    self.daemon_died = true;
                    return Err(LaunchError::DaemonDied(death.to_string()));
                }
                status = &mut init_exit => {
                    match status {
                        Ok(Ok(status)) => return Err(self.init_ended(status, false).await),
                        // No answer from containerd: most likely it died; say so if it did.
                        _ => {
                            let death = tokio::time::timeout(Duration::from_secs(2), daemons.died()).await;
                            self.daemon_died = true;
                            return Err(match death {
                                Ok(death) => LaunchError::DaemonDied(death.to_string()),
                                Err(_) => LaunchError::LostContainerd,
                            });
                        }
                    }
                }
                Some(result) = bootstrap => {
                    self.bootstrap = None;
                    match result {
                        Ok(Ok(status)) if status.0 == 0 => progress::emit(Kind::Info, "Bootstrap script finished"),
                        Ok(Ok(status)) => progress::emit(Kind::Error, &format!("Bootstrap script failed: {status}")),
                        Ok(Err(e)) => progress::emit(Kind::Error, &format!("Bootstrap script: {e}")),
                        Err(e) => progress::emit(Kind::Error, &format!("Bootstrap script: {e}")),
                    }
                }
            }
        }
    }
}

/// The bootstrap's exec as started in the created task: running with its script held back, or
/// refused by the runtime (it is started again once the task runs).
enum EarlyExec {
    Held(HeldExec),
    Refused(runtime::RuntimeError),
}

/// The bootstrap script's exec: the script (its stdin) and the process that reads it.
struct BootstrapExec<'a> {
    script: &'a str,
    process: oci_spec::runtime::Process,
    io_dir: PathBuf,
}

impl BootstrapExec<'_> {
    /// Registers the exec with containerd (nothing runs yet).
    async fn register(&self, task: &Task) -> Result<PendingExec, runtime::RuntimeError> {
        let def = ExecDef {
            exec_id: bootstrap::EXEC_ID,
            process: &self.process,
            stdin: Some(self.script.as_bytes().to_vec()),
            io_dir: self.io_dir.clone(),
        };
        task.register_exec(&def, &bootstrap_sink()).await
    }
}

/// The bootstrap script's process: `/bin/sh -s` as the user, beside the init (see
/// [`bootstrap::process`]).
fn bootstrap_process(
    spec: &oci_spec::runtime::Spec,
    user: &PasswdEntry,
    gids: &[u32],
) -> Result<oci_spec::runtime::Process, LaunchError> {
    let init = spec
        .process()
        .as_ref()
        .ok_or(bootstrap::BootstrapError::NoInitProcess)?;
    Ok(bootstrap::process(init, user, gids)?)
}

/// Every line the bootstrap script writes goes to the progress log.
fn bootstrap_sink() -> runtime::OutputSink {
    Arc::new(|_, line: &str| progress::emit(Kind::Info, line))
}

/// [`groundwork::lay`] on a blocking thread.
async fn lay(
    settings: &Settings,
    prepared: &PreparedImage,
    begun: Instant,
) -> Result<Groundwork, LaunchError> {
    let (settings, prepared) = (settings.clone(), prepared.clone());
    blocking(move || groundwork::lay(&settings, &prepared, begun)).await
}

/// Where the OCI runtime keeps its state (on the run dir, per boot).
fn runtime_root(settings: &Settings) -> PathBuf {
    RunLayout::new(&settings.run_dir).runtime_root()
}

/// Makes a file readable by root alone.
fn make_private(path: &std::path::Path) -> Result<(), LaunchError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        LaunchError::Private {
            path: path.to_owned(),
            source,
        }
    })
}

/// A debug line: how long after `begun` a stage of the start finished (`ENVBOX_LOG=debug`).
fn stage(begun: Instant, stage: &str) {
    tracing::debug!(ms = begun.elapsed().as_millis() as u64, "start: {stage}");
}

/// Makes the blobs fetched and layers unpacked in this boot durable; a failure only means a
/// later start after a machine crash fetches or unpacks them again, so it is a warning.
fn sync_volume(prepared: &PreparedImage) {
    let started = Instant::now();
    match prepared.sync() {
        Ok(synced) => tracing::debug!(
            blobs = synced.blobs,
            layers = synced.layers,
            elapsed = ?started.elapsed(),
            "fetched blobs and unpacked layers synced to disk"
        ),
        Err(e) => warn_all([format!(
            "{e} (what did not reach the disk is fetched or unpacked again if the machine restarts first)"
        )]),
    }
}

/// Runs blocking stage code off the async threads.
async fn blocking<T: Send + 'static, E: Send + 'static>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, E> {
    tokio::task::spawn_blocking(f)
        .await
        .expect("a blocking stage panicked")
}
