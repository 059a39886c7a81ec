//! `envbox docker` end to end: from settings to a running workspace, and back down.
//!
//! Owns: the order of the stages and what is undone when one fails or a stop is asked for.
//! Start: supervised daemons (sysbox when the runtime is sysbox-runc, then containerd) start
//! while the image is prepared; then rootfs assembly, the runtime spec and its host setup,
//! leftovers of a previous run removed (task, container, network lease), container + task
//! created, CNI ADD on the task's namespace, task started, CPU quota mirrored, bootstrap
//! script exec'd with its output in the progress log, `done`. Then it waits for a signal, a
//! daemon's death or the init's exit, and stops ([`stop`]): agent and init signalled, grace
//! period, everything killed, CNI DEL, task and container deleted, rootfs released, daemons
//! stopped. Each stage's logic lives in its own module; this one only composes them.

mod netns;
pub mod stop;

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
use crate::progress::{self, Kind};
use crate::rootfs::PasswdEntry;
use crate::runtime::{self, ContainerDef, Engine, ExecDef, ExecSignaller, ExitStatus, Task};
use crate::setup::{self, RealSys};
use crate::spec::STOP_SIGNAL_ANNOTATION;
use crate::supervise::{self, cgroup, Daemons};
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
    bootstrap: Option<ExecSignaller>,
    bootstrap_done: Option<tokio::task::JoinHandle<Result<ExitStatus, runtime::RuntimeError>>>,
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
        let rootfs_path = rootfs.path.clone();
        check_searchable(&rootfs_path)?;
        self.rootfs = Some(rootfs);

        let planned = pipeline::plan_with_facts(settings, &rootfs_path, &prepared.config)?;
        warn_all(&planned.plan.warnings);
        let setup_warnings = setup::apply(&planned.plan.actions, &RealSys)?;
        warn_all(&setup_warnings);
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
        task.start().await?;
        progress::emit(
            Kind::Info,
            &format!(
                "Workspace container started in {:.1}s",
                begun.elapsed().as_secs_f64()
            ),
        );
        if settings.cpus_milli.is_none() {
            mirror_cpu_quota(task.pid);
        }

        if let Some(script) = &settings.bootstrap_script {
            self.start_bootstrap(settings, &task, &spec, &planned.facts.user, script)
                .await?;
        }
        progress::emit(Kind::Done, "Workspace is up");
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
        self.bootstrap = Some(exec.signaller());
        self.bootstrap_done = Some(tokio::spawn(exec.wait()));
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
                match self.bootstrap_done.as_mut() {
                    Some(handle) => Some(handle.await),
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
                    self.bootstrap_done = None;
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

    /// Undoes whatever was started, in reverse order; every step is tried, failures logged.
    async fn stop(&mut self, grace: Duration) {
        if let Some(task) = self.task.take() {
            if self.daemon_died {
                kill_without_containerd(&task);
                self.bootstrap = None;
                self.bootstrap_done = None;
                self.engine = None;
            } else {
                self.stop_task(&task, grace).await;
            }
        }
        if let (Some(net), Some(attachment)) = (self.network.take(), self.attachment.take()) {
            let result = blocking(move || {
                if let Err(first) = net.del(&attachment) {
                    // The bridge plugin's own iptables teardown can fail transiently
                    // (iptables-nft EBUSY on the chain just unreferenced): once more through the
                    // cached attachment, whose sweep retries.
                    std::thread::sleep(Duration::from_millis(100));
                    if net.cleanup_stale().is_err() {
                        return Err(first);
                    }
                }
                net.remove_bridge()
            })
            .await;
            if let Err(e) = result {
                progress::emit(Kind::Error, &format!("workspace network: {e}"));
            }
        }
        if let Some(engine) = &self.engine {
            if let Err(e) = engine.remove_leftovers(CONTAINER_ID).await {
                progress::emit(
                    Kind::Error,
                    &format!("removing the workspace container: {e}"),
                );
            }
        }
        self.netns = None;
        if let Some(rootfs) = self.rootfs.take() {
            if let Err(e) = overlay::release(&rootfs) {
                progress::emit(Kind::Error, &format!("releasing the root filesystem: {e}"));
            }
        }
        if let Some(daemons) = self.daemons.take() {
            for problem in daemons.stop().await {
                // A death was reported already, as the reason for this stop.
                if !matches!(problem, supervise::StopProblem::AlreadyDead { .. }) {
                    progress::emit(Kind::Error, &format!("stopping the daemons: {problem}"));
                }
            }
        }
    }

    /// Signals, grace period, SIGKILL, per [`stop::plan`]. The network namespace stays held,
    /// so CNI DEL still works after the processes are gone.
    async fn stop_task(&mut self, task: &Task, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        let waiter = task.clone();
        let mut init_exit = tokio::spawn(async move { waiter.wait().await });
        let plan = stop::plan(
            stop::Running {
                bootstrap: self.bootstrap.is_some(),
                image_init: self.image_init,
                init_signal: self.init_signal,
            },
            grace,
        );
        if let (Some(signal), Some(bootstrap)) = (plan.signal_bootstrap, &self.bootstrap) {
            if let Err(e) = bootstrap.kill(signal as u32).await {
                progress::emit(Kind::Info, &format!("signalling the bootstrap script: {e}"));
            }
        }
        if let Err(e) = task.kill(plan.signal_init as u32, false).await {
            if !e.is_not_found() {
                progress::emit(Kind::Info, &format!("signalling the workspace's init: {e}"));
            }
        }
        if plan.wait_bootstrap {
            if let Some(done) = self.bootstrap_done.take() {
                let _ = tokio::time::timeout_at(deadline, done).await;
            }
        }
        if plan.wait_init {
            let _ = tokio::time::timeout_at(deadline, &mut init_exit).await;
        }
        if !init_exit.is_finished() {
            if let Err(e) = task.kill(libc::SIGKILL as u32, true).await {
                if !e.is_not_found() {
                    progress::emit(Kind::Error, &format!("killing the workspace: {e}"));
                }
            }
            let _ = tokio::time::timeout(Duration::from_secs(10), &mut init_exit).await;
        }
        self.bootstrap = None;
        if let Some(done) = self.bootstrap_done.take() {
            done.abort();
        }
    }
}

/// Copies the pod's CPU limit into the workspace's cgroup (sysbox does not: its issue 582), so
/// tools inside see the limit. Only without `CODER_CPUS` (which sets the container's own). Never
/// fatal.
fn mirror_cpu_quota(pid: u32) {
    let Some(inner) = cpu_cgroup_of(pid) else {
        progress::emit(
            Kind::Info,
            &format!("warning: the workspace's CPU cgroup was not found in /proc/{pid}/cgroup; the pod's CPU limit is not copied"),
        );
        return;
    };
    match cgroup::copy_cpu_quota(&cgroup::RealCgroupSys, &inner) {
        Ok(Some(quota)) => progress::emit(
            Kind::Info,
            &format!(
                "Copied the pod's CPU limit ({} us per {} us) into the workspace",
                quota.quota_us, quota.period_us
            ),
        ),
        Ok(None) => {}
        Err(warning) => progress::emit(Kind::Info, &format!("warning: {warning}")),
    }
}

/// The cgroup of `pid` holding the CPU controller: the unified one (`0::/path`) or the v1 line
/// whose controllers include `cpu`.
fn cpu_cgroup_of(pid: u32) -> Option<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    cpu_cgroup_in(&text)
}

fn cpu_cgroup_in(proc_cgroup: &str) -> Option<PathBuf> {
    let mut unified = None;
    for line in proc_cgroup.lines() {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        if controllers.split(',').any(|c| c == "cpu") {
            return Some(PathBuf::from(path));
        }
        if controllers.is_empty() {
            unified = Some(PathBuf::from(path));
        }
    }
    unified
}

/// Every directory above the rootfs must be searchable by the workspace's root (the shifted
/// uid, which the runtime is once inside the user namespace), or creating the container fails
/// with a bare "permission denied".
fn check_searchable(rootfs: &std::path::Path) -> Result<(), LaunchError> {
    use std::os::unix::fs::MetadataExt;
    for dir in rootfs.ancestors().skip(1) {
        let Ok(meta) = std::fs::metadata(dir) else {
            continue;
        };
        let mode = meta.mode() & 0o7777;
        let shifted = crate::spec::ID_SHIFT;
        let searchable = mode & 0o001 != 0
            || (meta.uid() == shifted && mode & 0o100 != 0)
            || (meta.gid() == shifted && mode & 0o010 != 0);
        if !searchable {
            return Err(LaunchError::Unreachable {
                path: dir.to_owned(),
                mode,
                uid: meta.uid(),
            });
        }
    }
    Ok(())
}

/// With containerd gone, the workspace is ended by killing its init: the kernel then kills every
/// process of its pid namespace. The shim stays until the next start's containerd removes it
/// (in a pod, envbox exiting as PID 1 ends it too).
fn kill_without_containerd(task: &Task) {
    if task.pid == 0 {
        return;
    }
    let pid = nix::unistd::Pid::from_raw(task.pid as i32);
    match nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => progress::emit(
            Kind::Error,
            &format!("killing the workspace's init (pid {pid}) without containerd: {e}"),
        ),
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

fn warn_all<W: std::fmt::Display>(warnings: impl IntoIterator<Item = W>) {
    for warning in warnings {
        progress::emit(Kind::Info, &format!("warning: {warning}"));
    }
}

/// Where the init's output is kept (for errors about it).
pub fn init_log(settings: &Settings) -> PathBuf {
    settings.run_dir.join("init.log")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_private_directory_above_the_rootfs_is_named() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let private = dir.path().join("private");
        let rootfs = private.join("state/container/merged");
        std::fs::create_dir_all(&rootfs).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
        let error = check_searchable(&rootfs).unwrap_err().to_string();
        assert!(error.contains(&private.display().to_string()), "{error}");
        assert!(error.contains("mode 700"), "{error}");
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o711)).unwrap();
        check_searchable(&rootfs).unwrap();
    }

    #[test]
    fn the_cpu_cgroup_is_the_v1_cpu_line_or_the_unified_one() {
        let v1 = "12:memory:/a\n4:cpu,cpuacct:/workspace_cvm\n0::/init\n";
        assert_eq!(cpu_cgroup_in(v1), Some(PathBuf::from("/workspace_cvm")));
        let v2 = "0::/envbox/workspace_cvm\n";
        assert_eq!(
            cpu_cgroup_in(v2),
            Some(PathBuf::from("/envbox/workspace_cvm"))
        );
        assert_eq!(cpu_cgroup_in("garbage"), None);
    }
}
