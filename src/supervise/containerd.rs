//! containerd: its configuration, its start and its readiness.
//!
//! Owns: where containerd keeps things ([`ContainerdPaths`]: everything under the run dir,
//! private to root, since its metadata holds the workspace's spec and so the agent token; the
//! volume keeps nothing of it), the generated `config.toml`
//! ([`render_config`], pure: `version = 2`, the CRI plugin and everything envbox never uses
//! disabled), and [`start`]: spawn it supervised, ready when `Version` answers over the socket,
//! then check that the services envbox calls (containers, tasks) loaded. Shim sockets are not
//! ours to place: containerd always puts them in `/run/containerd/s/`. It never creates
//! containers: that is the launcher's job, over the channel this returns.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use containerd_client::services::v1::introspection_client::IntrospectionClient;
use containerd_client::services::v1::version_client::VersionClient;
use containerd_client::services::v1::PluginsRequest;
use tonic::transport::Channel;

use super::child::{ChildSpec, Supervised};
use super::error::SuperviseError;

/// The daemon's name in logs and errors.
pub(crate) const NAME: &str = "containerd";

/// Plugins disabled in the generated configuration. CRI: envbox is not a kubelet (and CRI
/// would start its own CNI and image services). The snapshotters other than `native`: envbox
/// gives the rootfs by path, and probing btrfs/zfs/devmapper/aufs/overlay only logs errors
/// (`native` stays: the metadata plugin refuses to load without any snapshotter). `opt`
/// creates `/opt/containerd` outside envbox's directories. Tracing: nothing collects traces
/// (those ids exist from containerd 1.7 on; unknown ids are ignored). Keep the runtime, task,
/// differ and event plugins: containerd 1.6's tasks service does not load without them.
pub const DISABLED_PLUGINS: &[&str] = &[
    "io.containerd.grpc.v1.cri",
    "io.containerd.internal.v1.opt",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.overlayfs",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.tracing.processor.v1.otlp",
    "io.containerd.internal.v1.tracing",
];

/// gRPC services (`io.containerd.grpc.v1.<id>`) envbox calls; a start without them fails.
pub(crate) const REQUIRED_SERVICES: &[&str] = &["containers", "tasks", "version"];
const GRPC_SERVICE_TYPE: &str = "io.containerd.grpc.v1";

/// How often the socket is tried while containerd starts (it is usually ready in 30-50 ms,
/// and every start waits for it: a failed try is one `connect` to a missing socket, so trying
/// often costs nothing and saves about half an interval per start; benches/warmstart.rs).
const PROBE_INTERVAL: Duration = Duration::from_millis(2);

/// Where containerd keeps its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerdPaths {
    /// `<run>/containerd`, mode 0700: everything below holds the container's spec.
    pub dir: PathBuf,
    /// `<run>/containerd/root`: the metadata database (the container records, their specs).
    pub root: PathBuf,
    /// `<state>/containerd`: where the metadata was kept before; removed at start (its specs
    /// held the agent token on the volume).
    pub legacy_root: PathBuf,
    /// `<run>/containerd/state`: task bundles, per boot.
    pub state: PathBuf,
    /// `<run>/containerd/config.toml`.
    pub config: PathBuf,
    /// `<run>/containerd/containerd.sock`.
    pub grpc_socket: PathBuf,
    /// `<run>/containerd/containerd.sock.ttrpc`.
    pub ttrpc_socket: PathBuf,
    /// `<run>/log/containerd.log`.
    pub log: PathBuf,
}

impl ContainerdPaths {
    /// The spec containerd writes into a container's bundle (its task's state).
    pub(crate) fn bundle_config(&self, namespace: &str, id: &str) -> PathBuf {
        self.state
            .join("io.containerd.runtime.v2.task")
            .join(namespace)
            .join(id)
            .join("config.json")
    }

    /// The metadata database, which holds every container's spec.
    pub(crate) fn metadata_db(&self) -> PathBuf {
        self.root
            .join("io.containerd.metadata.v1.bolt")
            .join("meta.db")
    }

    /// The paths for containerd state under `state_dir` and per-boot files under `run_dir`.
    pub fn new(state_dir: &Path, run_dir: &Path) -> Self {
        let layout = crate::run_dir::RunLayout::new(run_dir);
        let run = layout.containerd();
        ContainerdPaths {
            dir: run.clone(),
            root: run.join("root"),
            legacy_root: crate::volume::VolumeLayout::new(state_dir).legacy_containerd(),
            state: run.join("state"),
            config: run.join("config.toml"),
            grpc_socket: run.join("containerd.sock"),
            ttrpc_socket: run.join("containerd.sock.ttrpc"),
            log: layout.logs().join("containerd.log"),
        }
    }
}

/// How to run containerd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerdOptions {
    /// The executable; default `containerd`, looked up in `PATH`.
    pub binary: PathBuf,
    /// How long to wait for `Version` to answer; default 30 s.
    pub ready_timeout: Duration,
    /// Default [`DISABLED_PLUGINS`].
    pub disabled_plugins: Vec<String>,
}

impl Default for ContainerdOptions {
    fn default() -> Self {
        ContainerdOptions {
            binary: PathBuf::from("containerd"),
            ready_timeout: Duration::from_secs(30),
            disabled_plugins: DISABLED_PLUGINS.iter().map(|p| (*p).to_owned()).collect(),
        }
    }
}

/// A TOML basic string.
fn toml_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn toml_path(path: &Path) -> Result<String, SuperviseError> {
    path.to_str()
        .map(toml_string)
        .ok_or_else(|| SuperviseError::NonUtf8Path {
            name: NAME.into(),
            path: path.into(),
        })
}

/// Creates `dir` (and its parents) with mode 0700, or makes an existing one 0700.
fn make_private_dir(dir: &Path) -> Result<(), SuperviseError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let err = |source| SuperviseError::CreateDir {
        name: NAME.into(),
        path: dir.to_owned(),
        source,
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(err)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(err)
}

/// Makes a file containerd made (0644) readable by root alone, before a secret goes in it.
fn make_private_file(path: &Path) -> Result<(), SuperviseError> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(|source| {
        SuperviseError::Private {
            name: NAME.into(),
            path: path.to_owned(),
            source,
        }
    })
}

/// Removes the metadata an earlier envbox kept on the volume: it held the workspace's spec,
/// agent token included, and nothing in it is needed (every start creates its container anew).
fn remove_legacy_root(paths: &ContainerdPaths) -> Result<(), SuperviseError> {
    match fs::remove_dir_all(&paths.legacy_root) {
        Ok(()) => {
            crate::progress::emit(
                crate::progress::Kind::Info,
                &format!(
                    "removed {}: containerd's metadata now lives under the run dir, off the volume",
                    paths.legacy_root.display()
                ),
            );
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(SuperviseError::RemoveLegacy {
            name: NAME.into(),
            path: paths.legacy_root.clone(),
            source,
        }),
    }
}

/// The `config.toml` text for `paths` with `disabled` plugins.
pub fn render_config(
    paths: &ContainerdPaths,
    disabled: &[String],
) -> Result<String, SuperviseError> {
    let disabled: Vec<String> = disabled.iter().map(|p| toml_string(p)).collect();
    Ok(format!(
        "# Generated by envbox on every start: edits are lost.\n\
         version = 2\n\
         root = {root}\n\
         state = {state}\n\
         disabled_plugins = [{disabled}]\n\
         \n\
         [grpc]\n  address = {grpc}\n\
         \n\
         [ttrpc]\n  address = {ttrpc}\n",
        root = toml_path(&paths.root)?,
        state = toml_path(&paths.state)?,
        disabled = disabled.join(", "),
        grpc = toml_path(&paths.grpc_socket)?,
        ttrpc = toml_path(&paths.ttrpc_socket)?,
    ))
}

/// Why one readiness probe failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProbeError {
    #[error("connecting to {path}: {source}")]
    Connect {
        path: PathBuf,
        source: tonic::transport::Error,
    },
    #[error("Version call: {0}")]
    Version(#[source] tonic::Status),
}

/// A ready containerd.
#[derive(Debug)]
pub(crate) struct Containerd {
    pub child: Supervised,
    pub channel: Channel,
    /// What `Version` answered, e.g. `1.6.20~ds1`.
    pub version: String,
    /// Time from spawn to the `Version` answer.
    pub ready_after: Duration,
}

/// Writes the configuration, starts containerd (stale sockets removed) and waits until it
/// answers and has loaded [`REQUIRED_SERVICES`].
pub(crate) async fn start(
    paths: &ContainerdPaths,
    options: &ContainerdOptions,
) -> Result<Containerd, SuperviseError> {
    remove_legacy_root(paths)?;
    make_private_dir(&paths.dir)?;
    for dir in [&paths.root, &paths.state] {
        fs::create_dir_all(dir).map_err(|source| SuperviseError::CreateDir {
            name: NAME.into(),
            path: dir.clone(),
            source,
        })?;
    }
    let config = render_config(paths, &options.disabled_plugins)?;
    fs::write(&paths.config, config).map_err(|source| SuperviseError::WriteConfig {
        name: NAME.into(),
        path: paths.config.clone(),
        source,
    })?;
    let spec = ChildSpec {
        name: NAME.into(),
        program: options.binary.clone(),
        args: vec!["--config".into(), paths.config.clone().into()],
        env: Vec::new(),
        log: paths.log.clone(),
        stale_files: vec![paths.grpc_socket.clone(), paths.ttrpc_socket.clone()],
        hint: None,
    };
    let started = Instant::now();
    let child = Supervised::start(spec).await?;
    let socket = paths.grpc_socket.clone();
    let (channel, version) = child
        .wait_ready(options.ready_timeout, PROBE_INTERVAL, || {
            probe(socket.clone())
        })
        .await?;
    let ready_after = started.elapsed();
    check_plugins(&channel, &paths.log).await?;
    make_private_file(&paths.metadata_db())?;
    Ok(Containerd {
        child,
        channel,
        version,
        ready_after,
    })
}

async fn probe(socket: PathBuf) -> Result<(Channel, String), ProbeError> {
    let channel = containerd_client::connect(&socket)
        .await
        .map_err(|source| ProbeError::Connect {
            path: socket.clone(),
            source,
        })?;
    let version = VersionClient::new(channel.clone())
        .version(())
        .await
        .map_err(ProbeError::Version)?
        .into_inner()
        .version;
    Ok((channel, version))
}

/// Fails naming each required service that is absent or failed to load.
async fn check_plugins(channel: &Channel, log: &Path) -> Result<(), SuperviseError> {
    let plugins = IntrospectionClient::new(channel.clone())
        .plugins(PluginsRequest { filters: vec![] })
        .await
        .map_err(SuperviseError::Introspection)?
        .into_inner()
        .plugins;
    let missing: Vec<(String, String)> = REQUIRED_SERVICES
        .iter()
        .filter_map(|id| {
            let full = format!("{GRPC_SERVICE_TYPE}.{id}");
            match plugins
                .iter()
                .find(|p| p.r#type == GRPC_SERVICE_TYPE && p.id == *id)
            {
                None => Some((full, "not loaded (disabled?)".to_owned())),
                Some(p) => p.init_err.as_ref().map(|e| (full, e.message.clone())),
            }
        })
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(SuperviseError::ContainerdPlugins {
            missing,
            log: log.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_puts_everything_under_the_run_dir() {
        let paths =
            ContainerdPaths::new(Path::new("/var/lib/coder/envbox"), Path::new("/run/envbox"));
        let text = render_config(&paths, &ContainerdOptions::default().disabled_plugins).unwrap();
        assert_eq!(
            text,
            "# Generated by envbox on every start: edits are lost.\n\
             version = 2\n\
             root = \"/run/envbox/containerd/root\"\n\
             state = \"/run/envbox/containerd/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\", \"io.containerd.internal.v1.opt\", \
             \"io.containerd.snapshotter.v1.aufs\", \"io.containerd.snapshotter.v1.btrfs\", \
             \"io.containerd.snapshotter.v1.devmapper\", \"io.containerd.snapshotter.v1.overlayfs\", \
             \"io.containerd.snapshotter.v1.zfs\", \"io.containerd.tracing.processor.v1.otlp\", \
             \"io.containerd.internal.v1.tracing\"]\n\
             \n\
             [grpc]\n  address = \"/run/envbox/containerd/containerd.sock\"\n\
             \n\
             [ttrpc]\n  address = \"/run/envbox/containerd/containerd.sock.ttrpc\"\n"
        );
        assert_eq!(paths.log, Path::new("/run/envbox/log/containerd.log"));
    }

    #[test]
    fn config_never_disables_what_the_launcher_calls() {
        for plugin in DISABLED_PLUGINS {
            assert!(
                !plugin.contains("runtime")
                    && !plugin.contains("event")
                    && !plugin.contains("differ"),
                "{plugin}: containerd 1.6's tasks service needs it"
            );
            for service in REQUIRED_SERVICES {
                assert_ne!(*plugin, format!("{GRPC_SERVICE_TYPE}.{service}"));
            }
        }
        assert!(!DISABLED_PLUGINS.contains(&"io.containerd.snapshotter.v1.native"));
    }

    #[test]
    fn config_escapes_paths_as_toml_strings() {
        let paths = ContainerdPaths::new(
            Path::new("/var/lib/coder/envbox"),
            Path::new("/run/a \"quoted\" \\ x\ty"),
        );
        let text = render_config(&paths, &[]).unwrap();
        assert!(
            text.contains("root = \"/run/a \\\"quoted\\\" \\\\ x\\u0009y/containerd/root\"\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "address = \"/run/a \\\"quoted\\\" \\\\ x\\u0009y/containerd/containerd.sock\"\n"
            ),
            "{text}"
        );
        assert!(text.contains("disabled_plugins = []\n"));
    }

    #[test]
    fn config_refuses_non_utf8_paths() {
        use std::os::unix::ffi::OsStrExt;
        let run = Path::new(std::ffi::OsStr::from_bytes(b"/run/\xff"));
        let paths = ContainerdPaths::new(Path::new("/var/lib/coder/envbox"), run);
        let err = render_config(&paths, &[]).unwrap_err();
        assert!(matches!(err, SuperviseError::NonUtf8Path { .. }), "{err}");
    }
}
