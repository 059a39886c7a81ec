//! The inner container's lifecycle over containerd's gRPC API.
//!
//! Owns: talking to a running containerd (the one `supervise` started): removing a previous
//! run's container and task, creating the container from a runtime spec with the runc shim
//! (`io.containerd.runc.v2`, `BinaryName` = the configured OCI runtime), its task, exec'd
//! processes with their stdio, signals, waiting and deleting. No image, no snapshotter: the
//! spec's absolute `root.path` is the rootfs. It never builds specs (that is `spec`) and never
//! touches the network (that is `network`).

mod exec;
mod io;
pub(crate) mod options;
mod task;

use std::path::{Path, PathBuf};

use containerd_client::tonic::{self, transport::Channel, Request};

pub(crate) use exec::{ExecDef, ExecSignaller, HeldExec, PendingExec};
pub(crate) use io::OutputSink;
pub(crate) use task::{ContainerDef, ExitStatus, Task};

/// The containerd namespace envbox's container lives in.
pub(crate) const NAMESPACE: &str = "envbox";

/// Where the OCI runtime keeps the state of container `id` while it exists: the shim runs
/// it with `--root <runtime root>/<namespace>`, and runc and sysbox-runc keep `<root>/<id>/`
/// from `create` until `delete`.
pub fn state_dir(runtime_root: &Path, id: &str) -> PathBuf {
    runtime_root.join(NAMESPACE).join(id)
}

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RuntimeError {
    #[error("containerd could not {action} {id}: {status}", status = .status.message())]
    Call {
        action: &'static str,
        id: String,
        status: tonic::Status,
    },
    #[error("encoding the {what} for containerd: {source}")]
    Encode {
        what: &'static str,
        source: serde_json::Error,
    },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl RuntimeError {
    /// Whether containerd answered "not found" (the object is already gone).
    pub(crate) fn is_not_found(&self) -> bool {
        matches!(self, RuntimeError::Call { status, .. } if status.code() == tonic::Code::NotFound)
    }

    fn call(action: &'static str, id: &str) -> impl FnOnce(tonic::Status) -> RuntimeError {
        let id = id.to_owned();
        move |status| RuntimeError::Call { action, id, status }
    }

    fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RuntimeError {
        let path = path.to_owned();
        move |source| RuntimeError::Io {
            action,
            path,
            source,
        }
    }
}

/// A connection to containerd, scoped to envbox's namespace. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Engine {
    channel: Channel,
    namespace: String,
}

impl Engine {
    /// An engine over an already connected channel.
    pub(crate) fn with_channel(channel: Channel) -> Engine {
        Engine {
            channel,
            namespace: NAMESPACE.to_owned(),
        }
    }

    /// `message` with the namespace header containerd routes by.
    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        let value = self
            .namespace
            .parse()
            .expect("the namespace is a valid header value");
        request.metadata_mut().insert("containerd-namespace", value);
        request
    }

    fn tasks(&self) -> containerd_client::services::v1::tasks_client::TasksClient<Channel> {
        containerd_client::services::v1::tasks_client::TasksClient::new(self.channel.clone())
    }

    fn containers(
        &self,
    ) -> containerd_client::services::v1::containers_client::ContainersClient<Channel> {
        containerd_client::services::v1::containers_client::ContainersClient::new(
            self.channel.clone(),
        )
    }
}
