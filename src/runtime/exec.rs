//! Processes exec'd into the container (the bootstrap script): registered with their stdio (which
//! needs no started task), started (also in a task that is only created: runc and containerd
//! allow that) with their stdin held back until the caller releases it, then fed and closed,
//! output forwarded line by line, signalled, waited for, cleaned up.

use std::path::PathBuf;

use containerd_client::services::v1::{
    CloseIoRequest, DeleteProcessRequest, ExecProcessRequest, KillRequest, StartRequest,
    WaitRequest,
};
use oci_spec::runtime::Process;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::io::{ExecIo, OutputSink};
use super::options::process_any;
use super::task::{ExitStatus, Task};
use super::RuntimeError;

/// What to exec.
#[derive(Debug, Clone)]
pub(crate) struct ExecDef<'a> {
    /// The exec ID (unique within the container while it runs).
    pub exec_id: &'a str,
    /// The process: args, env, user, cwd, capabilities.
    pub process: &'a Process,
    /// Written to the process's stdin, which is then closed; `None`: no stdin.
    pub stdin: Option<Vec<u8>>,
    /// Where the stdio FIFOs are made.
    pub io_dir: PathBuf,
}

/// An exec'd process containerd knows, with its stdio ready, that has not started: registering
/// one runs nothing in the container (the shim only records it), so it can be done while the
/// task is still created and not started; [`PendingExec::start`] runs it. Dropped unstarted
/// (e.g. the start was interrupted), it frees the threads waiting on its FIFOs.
#[derive(Debug)]
pub(crate) struct PendingExec {
    task: Task,
    exec_id: String,
    /// `None` once handed on or released.
    stdio: Option<Stdio>,
}

/// The FIFOs and the threads waiting to feed and drain them.
#[derive(Debug)]
struct Stdio {
    io: ExecIo,
    drains: Vec<JoinHandle<std::io::Result<()>>>,
    feeder: Option<Feeder>,
}

/// The thread that writes the process's stdin once its gate opens.
#[derive(Debug)]
struct Feeder {
    gate: oneshot::Sender<()>,
    thread: JoinHandle<std::io::Result<()>>,
}

impl Stdio {
    /// Unblocks the threads waiting on the FIFOs (the feeder writes nothing), waits for them,
    /// and removes the FIFOs.
    async fn release(self) {
        self.io.release();
        if let Some(Feeder { gate, thread }) = self.feeder {
            drop(gate);
            let _ = thread.await;
        }
        for drain in self.drains {
            let _ = drain.await;
        }
        self.io.remove();
    }
}

impl Drop for PendingExec {
    fn drop(&mut self) {
        if let Some(stdio) = self.stdio.take() {
            stdio.unblock();
        }
    }
}

impl Stdio {
    /// Unblocks the threads without waiting for them (they end on their own) and removes the
    /// FIFOs: for a drop.
    fn unblock(self) {
        self.io.release();
        self.io.remove();
    }
}

/// A started exec'd process whose stdin is held back: it may already run (in a created task
/// too), and reads nothing until [`HeldExec::release`]. Dropped unreleased (the start was
/// interrupted), its stdin is closed with nothing written, which the task's stop ends anyway.
#[derive(Debug)]
pub(crate) struct HeldExec {
    task: Task,
    exec_id: String,
    /// `None` once handed on.
    stdio: Option<Stdio>,
}

impl Drop for HeldExec {
    fn drop(&mut self) {
        if let Some(stdio) = self.stdio.take() {
            stdio.unblock();
        }
    }
}

/// A started exec'd process.
#[derive(Debug)]
pub(crate) struct Exec {
    task: Task,
    exec_id: String,
    io: ExecIo,
    drains: Vec<JoinHandle<std::io::Result<()>>>,
}

impl Task {
    /// Registers `def` with containerd, its stdio FIFOs made and waited on; every output line
    /// will go to `sink`. Nothing runs until [`PendingExec::start`].
    pub(crate) async fn register_exec(
        &self,
        def: &ExecDef<'_>,
        sink: &OutputSink,
    ) -> Result<PendingExec, RuntimeError> {
        let io = ExecIo::create(&def.io_dir, def.exec_id, def.stdin.is_some())?;
        let (stdin, stdout, stderr) = io.uris();
        let mut pending = PendingExec {
            task: self.clone(),
            exec_id: def.exec_id.to_owned(),
            stdio: Some(Stdio {
                drains: io.drain(sink),
                feeder: def.stdin.clone().and_then(|data| {
                    let (gate, opened) = oneshot::channel();
                    let thread = io.feed_stdin(data, opened)?;
                    Some(Feeder { gate, thread })
                }),
                io,
            }),
        };
        let registered = match process_any(def.process) {
            Ok(spec) => self
                .engine
                .tasks()
                .exec(self.engine.request(ExecProcessRequest {
                    container_id: self.id.clone(),
                    stdin,
                    stdout,
                    stderr,
                    terminal: false,
                    spec: Some(spec),
                    exec_id: def.exec_id.to_owned(),
                }))
                .await
                .map_err(RuntimeError::call("exec", def.exec_id)),
            Err(source) => Err(RuntimeError::Encode {
                what: "exec process",
                source,
            }),
        };
        match registered {
            Ok(_) => Ok(pending),
            Err(error) => {
                pending.release_stdio().await;
                Err(error)
            }
        }
    }

    /// Deletes exec'd process `exec_id` from containerd.
    async fn delete_exec(&self, exec_id: &str) -> Result<(), containerd_client::tonic::Status> {
        self.engine
            .tasks()
            .delete_process(self.engine.request(DeleteProcessRequest {
                container_id: self.id.clone(),
                exec_id: exec_id.to_owned(),
            }))
            .await
            .map(|_| ())
    }
}

impl PendingExec {
    /// Starts the process with its stdin held back (see [`HeldExec`]). The task may be running
    /// or only created.
    pub(crate) async fn start(mut self) -> Result<HeldExec, RuntimeError> {
        let started = self
            .task
            .engine
            .tasks()
            .start(self.task.engine.request(StartRequest {
                container_id: self.task.id.clone(),
                exec_id: self.exec_id.clone(),
            }))
            .await;
        if let Err(status) = started {
            self.forget().await;
            self.release_stdio().await;
            return Err(RuntimeError::Call {
                action: "start exec",
                id: self.exec_id.clone(),
                status,
            });
        }
        Ok(HeldExec {
            task: self.task.clone(),
            exec_id: self.exec_id.clone(),
            stdio: self.stdio.take(),
        })
    }

    /// Removes the unstarted process from containerd (gone already is fine).
    async fn forget(&self) {
        let _ = self.task.delete_exec(&self.exec_id).await;
    }

    async fn release_stdio(&mut self) {
        if let Some(stdio) = self.stdio.take() {
            stdio.release().await;
        }
    }
}

impl HeldExec {
    /// The started process, and the feeder of its stdin still waiting on its gate.
    fn split(mut self) -> (Exec, Option<Feeder>) {
        let Stdio { io, drains, feeder } = self.stdio.take().expect("handed on only here");
        let exec = Exec {
            task: self.task.clone(),
            exec_id: self.exec_id.clone(),
            io,
            drains,
        };
        (exec, feeder)
    }

    /// Feeds the process its stdin and closes it: from here on it runs as started.
    pub(crate) async fn release(self) -> Result<Exec, RuntimeError> {
        let (exec, feeder) = self.split();
        if let Some(Feeder { gate, thread }) = feeder {
            let fed = match gate.send(()) {
                Ok(()) => thread
                    .await
                    .unwrap_or_else(|e| Err(std::io::Error::other(e))),
                Err(()) => Err(std::io::Error::other("the stdin feeder ended early")),
            };
            if let Err(e) = fed {
                let path = exec.io.stdin.clone().unwrap_or_default();
                return Err(RuntimeError::io("writing the process's stdin", &path)(e));
            }
            exec.task
                .engine
                .tasks()
                .close_io(exec.task.engine.request(CloseIoRequest {
                    container_id: exec.task.id.clone(),
                    exec_id: exec.exec_id.clone(),
                    stdin: true,
                }))
                .await
                .map_err(RuntimeError::call("close stdin of exec", &exec.exec_id))?;
        }
        Ok(exec)
    }

    /// Ends the process unreleased (its task is not going to run): stdin closed with nothing
    /// written, SIGKILL, then waited for (at most `patience`) and deleted.
    pub(crate) async fn abandon(self, patience: std::time::Duration) {
        let (exec, feeder) = self.split();
        if let Some(Feeder { gate, thread }) = feeder {
            drop(gate);
            let _ = thread.await;
        }
        let _ = exec.signaller().kill(libc::SIGKILL as u32).await;
        let _ = tokio::time::timeout(patience, exec.wait()).await;
    }
}

impl Exec {
    /// A handle that signals this process (usable while `wait` runs).
    pub(crate) fn signaller(&self) -> ExecSignaller {
        ExecSignaller {
            task: self.task.clone(),
            exec_id: self.exec_id.clone(),
        }
    }

    /// Waits until the process exits and its output is drained, then deletes it.
    pub(crate) async fn wait(self) -> Result<ExitStatus, RuntimeError> {
        let status = self
            .task
            .engine
            .tasks()
            .wait(self.task.engine.request(WaitRequest {
                container_id: self.task.id.clone(),
                exec_id: self.exec_id.clone(),
            }))
            .await
            .map_err(RuntimeError::call("wait for exec", &self.exec_id))
            .map(|r| ExitStatus(r.into_inner().exit_status));
        for drain in self.drains {
            let _ = drain.await;
        }
        let deleted = self.task.delete_exec(&self.exec_id).await;
        self.io.remove();
        let status = status?;
        match deleted {
            Ok(_) => Ok(status),
            Err(e) if e.code() == containerd_client::tonic::Code::NotFound => Ok(status),
            Err(e) => Err(RuntimeError::Call {
                action: "delete exec",
                id: self.exec_id,
                status: e,
            }),
        }
    }
}

/// Sends signals to an exec'd process.
#[derive(Debug, Clone)]
pub(crate) struct ExecSignaller {
    task: Task,
    exec_id: String,
}

impl ExecSignaller {
    /// Sends `signal` to the process.
    pub(crate) async fn kill(&self, signal: u32) -> Result<(), RuntimeError> {
        self.task
            .engine
            .tasks()
            .kill(self.task.engine.request(KillRequest {
                container_id: self.task.id.clone(),
                exec_id: self.exec_id.clone(),
                signal,
                all: false,
            }))
            .await
            .map_err(RuntimeError::call("signal exec", &self.exec_id))?;
        Ok(())
    }
}
