//! Processes exec'd into the running container (the bootstrap script): start with stdin fed
//! and output forwarded line by line, signal, wait, clean up.

use std::path::PathBuf;

use containerd_client::services::v1::{
    CloseIoRequest, DeleteProcessRequest, ExecProcessRequest, KillRequest, StartRequest,
    WaitRequest,
};
use oci_spec::runtime::Process;
use tokio::task::JoinHandle;

use super::io::{ExecIo, OutputSink};
use super::options::process_any;
use super::task::{ExitStatus, Task};
use super::RuntimeError;

/// What to exec.
#[derive(Debug, Clone)]
pub struct ExecDef<'a> {
    /// The exec ID (unique within the container while it runs).
    pub exec_id: &'a str,
    /// The process: args, env, user, cwd, capabilities.
    pub process: &'a Process,
    /// Written to the process's stdin, which is then closed; `None`: no stdin.
    pub stdin: Option<Vec<u8>>,
    /// Where the stdio FIFOs are made.
    pub io_dir: PathBuf,
}

/// A started exec'd process.
#[derive(Debug)]
pub struct Exec {
    task: Task,
    exec_id: String,
    /// Its pid in envbox's pid namespace.
    pub pid: u32,
    io: ExecIo,
    drains: Vec<JoinHandle<std::io::Result<()>>>,
}

impl Task {
    /// Execs `def` in the container and starts it; every output line goes to `sink`.
    pub async fn exec(&self, def: &ExecDef<'_>, sink: &OutputSink) -> Result<Exec, RuntimeError> {
        let io = ExecIo::create(&def.io_dir, def.exec_id, def.stdin.is_some())?;
        let drains = io.drain(sink);
        let feeder = def.stdin.clone().and_then(|data| io.feed_stdin(data));
        match self.start_exec(def, &io).await {
            Ok(pid) => {
                if let Some(feeder) = feeder {
                    let fed = feeder
                        .await
                        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
                    if let Err(e) = fed {
                        let path = io.stdin.clone().unwrap_or_default();
                        return Err(RuntimeError::io("writing the process's stdin", &path)(e));
                    }
                    self.engine
                        .tasks()
                        .close_io(self.engine.request(CloseIoRequest {
                            container_id: self.id.clone(),
                            exec_id: def.exec_id.to_owned(),
                            stdin: true,
                        }))
                        .await
                        .map_err(RuntimeError::call("close stdin of exec", def.exec_id))?;
                }
                Ok(Exec {
                    task: self.clone(),
                    exec_id: def.exec_id.to_owned(),
                    pid,
                    io,
                    drains,
                })
            }
            Err(error) => {
                io.release();
                if let Some(feeder) = feeder {
                    let _ = feeder.await;
                }
                for drain in drains {
                    let _ = drain.await;
                }
                io.remove();
                Err(error)
            }
        }
    }

    async fn start_exec(&self, def: &ExecDef<'_>, io: &ExecIo) -> Result<u32, RuntimeError> {
        let (stdin, stdout, stderr) = io.uris();
        let spec = process_any(def.process).map_err(|source| RuntimeError::Encode {
            what: "exec process",
            source,
        })?;
        let tasks = self.engine.tasks();
        tasks
            .clone()
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
            .map_err(RuntimeError::call("exec", def.exec_id))?;
        let started = tasks
            .clone()
            .start(self.engine.request(StartRequest {
                container_id: self.id.clone(),
                exec_id: def.exec_id.to_owned(),
            }))
            .await;
        match started {
            Ok(response) => Ok(response.into_inner().pid),
            Err(status) => {
                let _ = tasks
                    .clone()
                    .delete_process(self.engine.request(DeleteProcessRequest {
                        container_id: self.id.clone(),
                        exec_id: def.exec_id.to_owned(),
                    }))
                    .await;
                Err(RuntimeError::Call {
                    action: "start exec",
                    id: def.exec_id.to_owned(),
                    status,
                })
            }
        }
    }
}

impl Exec {
    /// The exec ID.
    pub fn id(&self) -> &str {
        &self.exec_id
    }

    /// A handle that signals this process (usable while `wait` runs).
    pub fn signaller(&self) -> ExecSignaller {
        ExecSignaller {
            task: self.task.clone(),
            exec_id: self.exec_id.clone(),
        }
    }

    /// Waits until the process exits and its output is drained, then deletes it.
    pub async fn wait(self) -> Result<ExitStatus, RuntimeError> {
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
        let deleted = self
            .task
            .engine
            .tasks()
            .delete_process(self.task.engine.request(DeleteProcessRequest {
                container_id: self.task.id.clone(),
                exec_id: self.exec_id.clone(),
            }))
            .await;
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
pub struct ExecSignaller {
    task: Task,
    exec_id: String,
}

impl ExecSignaller {
    /// Sends `signal` to the process.
    pub async fn kill(&self, signal: u32) -> Result<(), RuntimeError> {
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
