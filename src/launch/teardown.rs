//! Taking the workspace down: what [`super::run`] does after a signal, a daemon's death, the
//! init's exit, or a failed start. Every step is tried whatever happened to the previous one,
//! and failures are logged, never raised: a stop always runs to the end. The policy (who gets
//! which signal, what is waited for) is [`super::stop`]'s; this module carries it out.

use std::time::Duration;

use super::{blocking, stop, Workspace, CONTAINER_ID};
use crate::overlay;
use crate::progress::{self, Kind};
use crate::runtime::Task;
use crate::supervise;

impl Workspace {
    /// Undoes whatever was started, in reverse order; every step is tried, failures logged.
    /// Returns whether everything was undone: if not (a failed step, or containerd died and
    /// left the shim), the run dir's state is what the next start cleans up with.
    pub(super) async fn stop(&mut self, grace: Duration) -> bool {
        let mut complete = true;
        if let Some(task) = self.task.take() {
            if self.daemon_died {
                if let Err(e) = kill_without_containerd(&task) {
                    failed(&mut complete, e);
                }
                self.bootstrap = None;
                self.engine = None;
                // The shim stays until the next start's containerd removes it.
                complete = false;
            } else if let Err(e) = self.stop_task(&task, grace).await {
                failed(&mut complete, e);
            }
        }
        if let (Some(net), Some(attachment)) = (self.network.take(), self.attachment.take()) {
            let result = blocking(move || {
                net.del(&attachment)?;
                net.remove_bridge()
            })
            .await;
            if let Err(e) = result {
                failed(&mut complete, format!("workspace network: {e}"));
            }
        }
        if let Some(engine) = &self.engine {
            if let Err(e) = engine.remove_leftovers(CONTAINER_ID).await {
                failed(
                    &mut complete,
                    format!("removing the workspace container: {e}"),
                );
            }
        }
        self.netns = None;
        if let Some(rootfs) = self.rootfs.take() {
            if let Err(e) = overlay::release(&rootfs) {
                failed(&mut complete, format!("releasing the root filesystem: {e}"));
            }
        }
        if let Some(daemons) = self.daemons.take() {
            for problem in daemons.stop().await {
                // A death was reported already, as the reason for this stop.
                if !matches!(problem, supervise::StopProblem::AlreadyDead { .. }) {
                    failed(&mut complete, format!("stopping the daemons: {problem}"));
                }
            }
        }
        complete
    }

    /// Signals, grace period, SIGKILL, per [`stop::plan`]. The network namespace stays held,
    /// so CNI DEL still works after the processes are gone. Fails when the workspace could not
    /// be killed.
    async fn stop_task(&mut self, task: &Task, grace: Duration) -> Result<(), String> {
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
            if let Err(e) = bootstrap.signaller.kill(signal as u32).await {
                progress::emit(Kind::Info, &format!("signalling the bootstrap script: {e}"));
            }
        }
        if let Err(e) = task.kill(plan.signal_init as u32, false).await {
            if !e.is_not_found() {
                progress::emit(Kind::Info, &format!("signalling the workspace's init: {e}"));
            }
        }
        if plan.wait_bootstrap {
            if let Some(bootstrap) = self.bootstrap.as_mut() {
                let _ = tokio::time::timeout_at(deadline, &mut bootstrap.done).await;
            }
        }
        if plan.wait_init {
            let _ = tokio::time::timeout_at(deadline, &mut init_exit).await;
        }
        let mut killed = Ok(());
        if !init_exit.is_finished() {
            if let Err(e) = task.kill(libc::SIGKILL as u32, true).await {
                if !e.is_not_found() {
                    killed = Err(format!("killing the workspace: {e}"));
                }
            }
            let _ = tokio::time::timeout(Duration::from_secs(10), &mut init_exit).await;
        }
        if let Some(bootstrap) = self.bootstrap.take() {
            bootstrap.done.abort();
        }
        killed
    }
}

/// A step of the stop failed: said in the progress log, and the stop is not complete.
fn failed(complete: &mut bool, text: String) {
    progress::emit(Kind::Error, &text);
    *complete = false;
}

/// With containerd gone, the workspace is ended by killing its init: the kernel then kills every
/// process of its pid namespace. The shim stays until the next start's containerd removes it
/// (in a pod, envbox exiting as PID 1 ends it too).
fn kill_without_containerd(task: &Task) -> Result<(), String> {
    if task.pid == 0 {
        return Ok(());
    }
    let pid = nix::unistd::Pid::from_raw(task.pid as i32);
    match nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(format!(
            "killing the workspace's init (pid {pid}) without containerd: {e}"
        )),
    }
}
