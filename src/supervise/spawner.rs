//! The one thread every supervised daemon is forked from, and the `pre_exec` that ties each
//! daemon's life to envbox's.
//!
//! Owns: a process-wide thread that never exits ([`on_spawner_thread`] runs a closure on it),
//! and [`spawn`], which forks there with `PR_SET_PDEATHSIG = SIGKILL`. The kernel sends the
//! death signal when the *thread* that forked the child exits, not the process: forking from a
//! tokio worker or blocking-pool thread (which come and go) could kill containerd mid-run, so
//! every fork happens here. Namespace changes the daemons must inherit (the cgroup namespace of
//! [`super::cgroup::prepare`]) run on this thread for the same reason. It must never block on
//! anything but a fork or a short syscall: all daemons start through it.

use std::io;
use std::sync::mpsc::{self, Sender};
use std::sync::Mutex;

use tokio::process::{Child, Command};
use tokio::sync::oneshot;

/// A closure to run on the spawner thread.
type Job = Box<dyn FnOnce() + Send>;

static SPAWNER: Mutex<Option<Sender<Job>>> = Mutex::new(None);

/// The spawner thread could not be started, or is gone.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each variant's #[error] message documents it
pub enum SpawnerError {
    #[error("starting the thread that forks envbox's daemons: {0}")]
    Start(#[source] io::Error),
    #[error("the thread that forks envbox's daemons is gone")]
    Gone,
}

/// The sender of the spawner thread's queue, starting the thread on first use.
fn queue() -> Result<Sender<Job>, SpawnerError> {
    let mut guard = SPAWNER
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(sender) = guard.as_ref() {
        return Ok(sender.clone());
    }
    let (sender, receiver) = mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("envbox-spawner".into())
        .spawn(move || {
            for job in receiver {
                job();
            }
        })
        .map_err(SpawnerError::Start)?;
    *guard = Some(sender.clone());
    Ok(sender)
}

/// Runs `job` on the spawner thread and returns its result.
pub(crate) async fn on_spawner_thread<R, F>(job: F) -> Result<R, SpawnerError>
where
    R: Send + 'static,
    F: FnOnce() -> R + Send + 'static,
{
    let (done, result) = oneshot::channel();
    queue()?
        .send(Box::new(move || {
            // The caller may have given up waiting; the result is then dropped.
            let _ = done.send(job());
        }))
        .map_err(|_| SpawnerError::Gone)?;
    result.await.map_err(|_| SpawnerError::Gone)
}

/// Spawns `command` from the spawner thread, killed (SIGKILL) when envbox dies, in its own
/// process group (a terminal's Ctrl-C reaches envbox only, which then stops it in order), and
/// killed when its [`Child`] is dropped. Must be called inside a tokio runtime.
pub(crate) async fn spawn(mut command: Command) -> Result<io::Result<Child>, SpawnerError> {
    let parent = std::process::id() as libc::pid_t;
    command.process_group(0).kill_on_drop(true);
    // SAFETY: the closure runs between fork and exec and makes only async-signal-safe calls
    // (prctl, getppid); it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // envbox died between fork and prctl: the signal was never going to come.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    let runtime = tokio::runtime::Handle::current();
    on_spawner_thread(move || {
        let _entered = runtime.enter();
        command.spawn()
    })
    .await
}
