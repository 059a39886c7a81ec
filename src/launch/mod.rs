//! `envbox docker` end to end: from settings to a running workspace, and back down.
//!
//! Owns: the order of the stages and what is undone when one fails or a stop is asked for. Start:
//! supervised daemons (sysbox when the runtime is sysbox-runc, then containerd) start while the
//! image is prepared; then rootfs assembly, the runtime spec and its host setup, leftovers of a
//! previous run removed (task, container, network lease), container + task created, CNI ADD on the
//! task's namespace, task started, CPU quota mirrored, bootstrap script exec'd with its output in
//! the progress log, `done`, and the blobs fetched and layers unpacked for this start synced to
//! disk in the background (they are crash-safe meanwhile, see `crate::cache` and `crate::unpack`:
//! the workspace need not wait for the disk). Then it waits for a signal, a daemon's death or the
//! init's exit, and stops ([`stop`]): agent and init signalled, grace period, everything killed,
//! CNI DEL, task and container deleted, rootfs released, daemons stopped. Each stage's logic lives
//! in its own module; this one only composes them.

mod host;
mod netns;
pub mod stop;
mod teardown;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::bootstrap;
use crate::config::Settings;
use crate::network::{self, Attachment, Network, NetworkPlan};
use crate::overlay::{self, Rootfs};
use crate::pipeline;
use crate::prepare::PreparedImage;
use crate::progress::{self, warn_all, Kind};
use crate::rootfs::PasswdEntry;
use crate::runtime::{self, ContainerDef, Engine, ExecDef, ExecSignaller, ExitStatus, Task};
use crate::setup::{self, RealSys};
use crate::spec::STOP_SIGNAL_ANNOTATION;
use crate::supervise::{self, Daemons};
use crate::unpack::Limits;

pub use netns::NetnsHold;

/// The inner container's ID (and name), as in the Go envbox.
pub const CONTAINER_ID: &str = "workspace_cvm";

/// Errors of this module: which stage failed, with its cause.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("starting the supervised daemons: {0}")]
    Daemons(#[from] supervise::SuperviseError),
    #[error("preparing the image: {0}")]
    Prepare(anyhow::Error),
    #[error("assembling the root filesystem: {0}")]
    Rootfs(#[from] overlay::OverlayError),
    #[error(transparent)]
    Plan(#[from] pipeline::PipelineError),
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
    #[error("{path} (mode {mode:o}, owner {uid}) cannot be searched by the workspace's root (uid {shifted}), so the runtime cannot reach the root filesystem under it: allow others to search it (chmod o+x) or put ENVBOX_STATE_DIR elsewhere", shifted = crate::spec::ID_SHIFT)]
    Unreachable { path: PathBuf, mode: u32, uid: u32 },
    #[error("listening for signals: {0}")]
    Signals(std::io::Error),
    #[error("the workspace was stopped because {0}")]
    DaemonDied(String),
    #[error("the workspace's init process ended ({0}); the workspace was stopped")]
    InitExited(ExitStatus),
    #[error("containerd stopped answering about the workspace's init; the workspace was stopped")]
    LostContainerd,
    #[error("stopped by {0} before the workspace was up")]
    Interrupted(&'static str),
}

/// How the image is made ready: given by the caller (`cmd`), which owns registry wiring.
pub type PrepareFn =
    Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = anyhow::Result<PreparedImage>>>>>;

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
    /// A supervised daemon died: containerd may be gone, so the stop works without it.
    daemon_died: bool,
}

/// Runs the workspace until a signal stops it. `Ok` after a clean stop on SIGTERM/SIGINT.
pub async fn run(settings: &Settings, prepare: PrepareFn) -> Result<(), LaunchError> {
    let mut signals = Signals::new()?;
    let mut ws = Workspace::default();
    let started = tokio::select! {
        result = ws.start(settings, prepare) => result,
        name = signals.next() => Err(LaunchError::Interrupted(name)),
    };
    if let Err(error) = started {
        // The caller reports the error (progress line, termination log) once stopped.
        ws.stop(settings.stop_timeout).await;
        return Err(error);
    }
    let outcome = ws.wait(&mut signals).await;
    ws.stop(settings.stop_timeout).await;
    outcome
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
    async fn start(&mut self, settings: &Settings, prepare: PrepareFn) -> Result<(), LaunchError> {
        let begun = Instant::now();
        // The daemons start while the image is pulled and unpacked.
        // The first failure of either ends the other (a missing sysbox is said at once, not
        // after the pull's retries).
        let daemon_config = supervise::DaemonConfig::from_settings(settings);
        let (daemons, prepared) = tokio::try_join!(
            async {
                supervise::Daemons::start(&daemon_config)
                    .await
                    .map_err(LaunchError::from)
            },
            async { prepare().await.map_err(LaunchError::Prepare) }
        )?;
        self.daemons = Some(daemons);
        stage(begun, "daemons ready and image prepared");

        // A previous run's container still uses the rootfs about to be reassembled.
        let daemons = self.daemons.as_ref().expect("started above");
        let engine = Engine::with_channel(daemons.channel());
        self.engine = Some(engine.clone());
        if engine.remove_leftovers(CONTAINER_ID).await? {
            progress::emit(
                Kind::Info,
                "Removed the workspace container a previous run left",
            );
        }

        let rootfs = {
            let state_dir = settings.state_dir.clone();
            let sources = prepared.sources.clone();
            let dirs = prepared.layer_dirs.clone();
            blocking(move || {
                overlay::assemble(
                    &state_dir,
                    &sources,
                    &dirs,
                    overlay::Mode::Auto,
                    &Limits::default(),
                )
            })
            .await?
        };
        warn_all(&rootfs.warnings);
        stage(begun, "root filesystem assembled");
        let rootfs_path = rootfs.path.clone();
        host::check_searchable(&rootfs_path)?;
        self.rootfs = Some(rootfs);

        let planned = pipeline::plan_with_facts(settings, &rootfs_path, &prepared.config)?;
        warn_all(&planned.plan.warnings);
        let setup_warnings = setup::apply(&planned.plan.actions, &RealSys)?;
        warn_all(&setup_warnings);
        stage(begun, "runtime spec built and host set up");
        let spec = planned.plan.spec;
        self.image_init = planned.facts.has_init;
        self.init_signal = spec
            .annotations()
            .as_ref()
            .and_then(|a| a.get(STOP_SIGNAL_ANNOTATION))
            .map_or(Ok(libc::SIGTERM), |s| bootstrap::parse_signal(s))?;

        let link_mtu = network::read_link_mtu(&settings.ethlink);
        let plan = NetworkPlan::new(settings, CONTAINER_ID, &link_mtu)?;
        warn_all(&plan.warnings);
        let net = Arc::new(Network::new(plan));
        {
            let net = Arc::clone(&net);
            if let Some(stale) = blocking(move || net.cleanup_stale()).await? {
                progress::emit(
                    Kind::Info,
                    &format!(
                        "Released the network lease a previous run of {} left",
                        stale.container_id
                    ),
                );
            }
        }
        // envbox is the bridge's only user: one left by a killed run (perhaps with another
        // subnet) is removed, and the bridge plugin makes it afresh.
        {
            let net = Arc::clone(&net);
            blocking(move || net.remove_bridge()).await?;
        }
        self.network = Some(Arc::clone(&net));
        stage(begun, "previous network state released");

        let task = engine
            .create(&ContainerDef {
                id: CONTAINER_ID,
                spec: &spec,
                runtime_binary: settings.runtime.binary(),
                runtime_root: settings.run_dir.join("runtime"),
                output: format!("file://{}", settings.run_dir.join("init.log").display()),
            })
            .await?;
        self.task = Some(task.clone());
        stage(begun, "container and task created");
        let hold = NetnsHold::of_pid(task.pid).map_err(|source| LaunchError::Netns {
            pid: task.pid,
            source,
        })?;
        let netns_path = hold.path();
        self.netns = Some(hold);
        let attachment = {
            let net = Arc::clone(&net);
            blocking(move || net.add(&netns_path)).await?
        };
        progress::emit(
            Kind::Info,
            &format!(
                "Workspace network: {}/{} via {} (MTU {})",
                attachment.address, attachment.prefix, attachment.gateway, attachment.mtu
            ),
        );
        self.attachment = Some(attachment);
        stage(begun, "network attached");
        task.start().await?;
        stage(begun, "task started");
        progress::emit(
            Kind::Info,
            &format!(
                "Workspace container started in {:.1}s",
                begun.elapsed().as_secs_f64()
            ),
        );
        if settings.cpus_milli.is_none() {
            host::mirror_cpu_quota(task.pid);
        }

        if let Some(script) = &settings.bootstrap_script {
            self.start_bootstrap(settings, &task, &spec, &planned.facts.user, script)
                .await?;
            stage(begun, "bootstrap script started");
        }
        progress::emit(Kind::Done, "Workspace is up");
        // Also when nothing was fetched or unpacked now: an earlier start of this boot that was
        // killed before its sync left blobs or layers marked (a directory listing each when
        // there are none).
        tokio::task::spawn_blocking(move || sync_volume(&prepared));
        Ok(())
    }

    async fn start_bootstrap(
        &mut self,
        settings: &Settings,
        task: &Task,
        spec: &oci_spec::runtime::Spec,
        user: &PasswdEntry,
        script: &str,
    ) -> Result<(), LaunchError> {
        let init = spec
            .process()
            .as_ref()
            .ok_or(bootstrap::BootstrapError::NoInitProcess)?;
        let process = bootstrap::process(init, user)?;
        let sink: runtime::OutputSink = Arc::new(|_, line: &str| progress::emit(Kind::Info, line));
        let exec = task
            .exec(
                &ExecDef {
                    exec_id: bootstrap::EXEC_ID,
                    process: &process,
                    stdin: Some(script.as_bytes().to_vec()),
                    io_dir: settings.run_dir.join("io"),
                },
                &sink,
            )
            .await?;
        progress::emit(
            Kind::Info,
            &format!(
                "Bootstrap script running as {} (uid {})",
                user.name, user.uid
            ),
        );
        self.bootstrap = Some(RunningBootstrap {
            signaller: exec.signaller(),
            done: tokio::spawn(exec.wait()),
        });
        Ok(())
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
                        Ok(Ok(status)) => return Err(LaunchError::InitExited(status)),
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
