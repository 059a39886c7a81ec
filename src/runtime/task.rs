//! The container and its init task: create, start, signal, wait, delete, and removal of what a
//! previous run left behind.

use std::time::Duration;

use containerd_client::services::v1::{
    container::Runtime, Container, CreateContainerRequest, CreateTaskRequest,
    DeleteContainerRequest, DeleteTaskRequest, GetRequest, KillRequest, StartRequest, WaitRequest,
};
use oci_spec::runtime::Spec;

use super::options::{runc_options, spec_any};
use super::{Engine, RuntimeError};
use std::path::PathBuf;

/// containerd's runc shim (v2): the one shim envbox uses; the OCI runtime is its `BinaryName`.
pub(crate) const SHIM: &str = "io.containerd.runc.v2";

/// What to create.
#[derive(Debug, Clone)]
pub(crate) struct ContainerDef<'a> {
    /// The container ID (`workspace_cvm`).
    pub id: &'a str,
    /// The runtime spec; its `root.path` is the absolute rootfs path.
    pub spec: &'a Spec,
    /// The OCI runtime executable (`sysbox-runc`, `runc`).
    pub runtime_binary: &'a str,
    /// The OCI runtime's state root (on `/run`).
    pub runtime_root: PathBuf,
    /// Where the init process's output goes: a `file://` URI, or `""` for nowhere.
    pub output: String,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ExitStatus(pub u32);

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            code @ 129..=192 => write!(f, "killed by signal {}", code - 128),
            code => write!(f, "exit status {code}"),
        }
    }
}

/// A created task (the container's init process). Cheap to clone: `wait` in one task while
/// signalling from another.
#[derive(Debug, Clone)]
pub(crate) struct Task {
    pub(super) engine: Engine,
    pub(super) id: String,
    /// The init process's pid in envbox's pid namespace.
    pub pid: u32,
}

impl Engine {
    /// Creates the container and its task (not started: the network is attached to its
    /// namespaces first).
    pub(crate) async fn create(&self, def: &ContainerDef<'_>) -> Result<Task, RuntimeError> {
        let container = Container {
            id: def.id.to_owned(),
            runtime: Some(Runtime {
                name: SHIM.to_owned(),
                options: Some(runc_options(def.runtime_binary, &def.runtime_root)),
            }),
            spec: Some(spec_any(def.spec).map_err(|source| RuntimeError::Encode {
                what: "runtime spec",
                source,
            })?),
            ..Default::default()
        };
        self.containers()
            .create(self.request(CreateContainerRequest {
                container: Some(container),
            }))
            .await
            .map_err(RuntimeError::call("create the container", def.id))?;
        let response = self
            .tasks()
            .create(self.request(CreateTaskRequest {
                container_id: def.id.to_owned(),
                stdout: def.output.clone(),
                stderr: def.output.clone(),
                ..Default::default()
            }))
            .await
            .map_err(RuntimeError::call("create the task of container", def.id))?;
        Ok(Task {
            engine: self.clone(),
            id: def.id.to_owned(),
            pid: response.into_inner().pid,
        })
    }

    /// Removes container `id` and its task if a previous run left them (the task killed
    /// first). Returns whether anything was there.
    pub(crate) async fn remove_leftovers(&self, id: &str) -> Result<bool, RuntimeError> {
        let mut found = false;
        let task = self
            .tasks()
            .get(self.request(GetRequest {
                container_id: id.to_owned(),
                exec_id: String::new(),
            }))
            .await;
        match task {
            Ok(response) => {
                found = true;
                let pid = response.into_inner().process.map_or(0, |p| p.pid);
                let task = Task {
                    engine: self.clone(),
                    id: id.to_owned(),
                    pid,
                };
                let waiter = task.clone();
                let wait = tokio::spawn(async move { waiter.wait().await });
                match task.kill(libc::SIGKILL as u32, true).await {
                    Ok(()) => {}
                    // Already stopped: nothing to wait for.
                    Err(e) if is_not_running(&e) => {}
                    Err(e) => return Err(e),
                }
                // A stopped task answers Wait at once; a killed one within moments.
                let _ = tokio::time::timeout(Duration::from_secs(10), wait).await;
                task.delete().await.or_else(ignore_not_found)?;
            }
            Err(status) if status.code() == containerd_client::tonic::Code::NotFound => {}
            Err(status) => {
                return Err(RuntimeError::Call {
                    action: "look up the task of container",
                    id: id.to_owned(),
                    status,
                })
            }
        }
        match self
            .containers()
            .delete(self.request(DeleteContainerRequest { id: id.to_owned() }))
            .await
        {
            Ok(_) => found = true,
            Err(status) if status.code() == containerd_client::tonic::Code::NotFound => {}
            Err(status) => {
                return Err(RuntimeError::Call {
                    action: "delete the container",
                    id: id.to_owned(),
                    status,
                })
            }
        }
        Ok(found)
    }
}

fn is_not_running(error: &RuntimeError) -> bool {
    error.is_not_found()
        || matches!(error, RuntimeError::Call { status, .. }
            if status.code() == containerd_client::tonic::Code::FailedPrecondition)
}

fn ignore_not_found(error: RuntimeError) -> Result<(), RuntimeError> {
    if error.is_not_found() {
        Ok(())
    } else {
        Err(error)
    }
}

impl Task {
    /// Starts the init process.
    pub(crate) async fn start(&self) -> Result<(), RuntimeError> {
        self.engine
            .tasks()
            .start(self.engine.request(StartRequest {
                container_id: self.id.clone(),
                exec_id: String::new(),
            }))
            .await
            .map_err(RuntimeError::call("start the task of container", &self.id))?;
        Ok(())
    }

    /// Sends `signal` to the init process, or with `all` to every process of the container.
    pub(crate) async fn kill(&self, signal: u32, all: bool) -> Result<(), RuntimeError> {
        self.engine
            .tasks()
            .kill(self.engine.request(KillRequest {
                container_id: self.id.clone(),
                exec_id: String::new(),
                signal,
                all,
            }))
            .await
            .map_err(RuntimeError::call("signal the task of container", &self.id))?;
        Ok(())
    }

    /// Waits until the init process exits.
    pub(crate) async fn wait(&self) -> Result<ExitStatus, RuntimeError> {
        let response = self
            .engine
            .tasks()
            .wait(self.engine.request(WaitRequest {
                container_id: self.id.clone(),
                exec_id: String::new(),
            }))
            .await
            .map_err(RuntimeError::call(
                "wait for the task of container",
                &self.id,
            ))?;
        Ok(ExitStatus(response.into_inner().exit_status))
    }

    /// Deletes the (stopped) task.
    pub(crate) async fn delete(&self) -> Result<(), RuntimeError> {
        self.engine
            .tasks()
            .delete(self.engine.request(DeleteTaskRequest {
                container_id: self.id.clone(),
            }))
            .await
            .map_err(RuntimeError::call("delete the task of container", &self.id))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_names_signals() {
        assert_eq!(ExitStatus(0).to_string(), "exit status 0");
        assert_eq!(ExitStatus(137).to_string(), "killed by signal 9");
        assert_eq!(ExitStatus(2).to_string(), "exit status 2");
    }
}
