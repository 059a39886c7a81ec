//! Validated settings: every `CODER_*` variable of the Go envbox, and ours.
//!
//! Owns: turning [`RawSettings`] (text from flags and environment) into [`Settings`] (typed
//! values), with errors that name the variable and the expected form. Secrets are wrapped in
//! [`Secret`] from the first moment, so no `Debug` or error rendering can show them. It never
//! touches the filesystem or the network: whether a path exists is checked by the stage that
//! uses it.

pub(crate) mod names;
mod raw;
mod secret;
pub(crate) mod value;

use std::path::PathBuf;

pub(crate) use names::Name;
pub use raw::RawSettings;
pub(crate) use raw::{
    EntrypointSettings, ImageSettings, KeepSettings, StateSettings, WorkspaceSettings,
};
pub use secret::Secret;
use value::Problem;
pub(crate) use value::{BridgeNet, EnvPattern, UserMount};

/// Defaults, in one place.
pub(crate) mod defaults {
    pub(crate) const HOSTNAME: &str = "workspace-cvm";
    pub(crate) const BRIDGE_CIDR: &str = "172.19.0.1/30";
    pub(crate) const DOCKER_CONFIG: &str = "/root/.docker/config.json";
    pub(crate) const ETHLINK: &str = "eth0";
    pub(crate) const STATE_DIR: &str = "/var/lib/coder/envbox";
    pub(crate) const RUN_DIR: &str = "/run/envbox";
    /// How long a stop waits for the agent and the inner init before killing everything.
    pub(crate) const STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(90);
    pub(crate) const CNI_PATH: &str = "/usr/lib/cni";
    /// Images kept in the cache besides the current one.
    pub(crate) const KEEP_IMAGES: usize = 1;
    /// How long the node cache keeps what no workspace has used since.
    pub(crate) const NODE_CACHE_TTL: std::time::Duration =
        std::time::Duration::from_secs(7 * 86400);
    /// The most the node cache holds of what no running workspace uses.
    pub(crate) const NODE_CACHE_SIZE: u64 = 50 << 30;
}

/// The OCI runtime the shim runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// sysbox-runc: the production runtime (system containers).
    SysboxRunc,
    /// Plain runc: where sysbox cannot run (tests, development machines).
    Runc,
}

impl Runtime {
    /// The executable name (`BinaryName` of the runc shim).
    pub(crate) fn binary(self) -> &'static str {
        match self {
            Runtime::SysboxRunc => "sysbox-runc",
            Runtime::Runc => "runc",
        }
    }
}

/// Which command the settings are for: `spec` needs no image (the rootfs is given), `pull`
/// and `cache` need no user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// `envbox docker`.
    Docker,
    /// `envbox spec`.
    Spec,
    /// `envbox pull` (and `cache`).
    Pull,
}

/// Typed, validated settings. Field docs state defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `CODER_INNER_IMAGE`; required for `docker` (`spec` does not read it: always `None`).
    pub image: Option<String>,
    /// `CODER_INNER_USERNAME`; required, except for `pull` and `cache` (empty there).
    pub username: String,
    /// `CODER_AGENT_TOKEN`.
    pub agent_token: Option<Secret>,
    /// `CODER_AGENT_URL`.
    pub agent_url: Option<String>,
    /// `CODER_INNER_ENVS`; empty by default.
    pub inner_envs: Vec<EnvPattern>,
    /// `CODER_INNER_HOSTNAME`; default `workspace-cvm`.
    pub hostname: String,
    /// `CODER_INNER_WORK_DIR`; default: the image's working directory, else `/`.
    pub work_dir: Option<PathBuf>,
    /// `CODER_IMAGE_PULL_SECRET`: a docker config.json document (checked to be JSON).
    pub image_pull_secret: Option<Secret>,
    /// `CODER_DOCKER_CONFIG`; `None` means the default `/root/.docker/config.json`, read only
    /// when it exists (a path set explicitly must exist).
    pub docker_config: Option<PathBuf>,
    /// `CODER_EXTRA_CERTS_PATH`.
    pub extra_certs_path: Option<PathBuf>,
    /// `CODER_DOCKER_BRIDGE_CIDR`; default `172.19.0.1/30`.
    pub bridge: BridgeNet,
    /// `CODER_BOOTSTRAP_SCRIPT`.
    pub bootstrap_script: Option<String>,
    /// `CODER_MOUNTS`; empty by default.
    pub mounts: Vec<UserMount>,
    /// `CODER_ADD_TUN`; default false.
    pub add_tun: bool,
    /// `CODER_ADD_FUSE`; default false.
    pub add_fuse: bool,
    /// `CODER_ADD_GPU`; default false. When true, `usr_lib_dir` is set.
    pub add_gpu: bool,
    /// `CODER_USR_LIB_DIR`.
    pub usr_lib_dir: Option<PathBuf>,
    /// `CODER_INNER_USR_LIB_DIR`; default: from the image's os-release.
    pub inner_usr_lib_dir: Option<PathBuf>,
    /// `CODER_CPUS` in thousandths of a CPU; `None` = no limit (default).
    pub cpus_milli: Option<u64>,
    /// `CODER_MEMORY` in bytes; `None` = no limit (default).
    pub memory_bytes: Option<u64>,
    /// `CODER_DISABLE_IDMAPPED_MOUNT`; default false.
    pub disable_idmapped_mount: bool,
    /// The inner `CODER_AGENT_SUBSYSTEM` (outer list + `envbox`, sorted, unique).
    pub agent_subsystem: String,
    /// `ENVBOX_ETHLINK`; default `eth0`.
    pub ethlink: String,
    /// `ENVBOX_RUNTIME`; default `sysbox-runc`.
    pub runtime: Runtime,
    /// `ENVBOX_STATE_DIR`; default `/var/lib/coder/envbox` (on the persistent volume).
    pub state_dir: PathBuf,
    /// `ENVBOX_KEEP_IMAGES`: images kept in the cache besides the current one, the most
    /// recently used first; default 1.
    pub keep_images: usize,
    /// `ENVBOX_NODE_CACHE`: the node cache's directory (`crate::nodecache`); default none.
    pub node_cache: Option<PathBuf>,
    /// `ENVBOX_NODE_CACHE_TTL`; default 7 days.
    pub node_cache_ttl: std::time::Duration,
    /// `ENVBOX_NODE_CACHE_SIZE` in bytes; default 50 GiB.
    pub node_cache_size: u64,
    /// `ENVBOX_RUN_DIR`; default `/run/envbox`.
    pub run_dir: PathBuf,
    /// `ENVBOX_CNI_PATH`: where the CNI plugins are; default `/usr/lib/cni`.
    pub cni_path: PathBuf,
    /// `ENVBOX_INSECURE_REGISTRIES`: registries reached over plain HTTP; default none.
    pub insecure_registries: Vec<String>,
    /// `ENVBOX_STOP_TIMEOUT`: on SIGTERM, how long the agent and the inner init get to stop
    /// before everything in the container is killed; default 90 s.
    pub stop_timeout: std::time::Duration,
    /// `CODER_DEBUG` (`--debug`): diagnostics at least at the debug level; default false.
    pub debug: bool,
    /// `--no-startup-log` (no variable, as in the Go envbox): the progress log is not sent to
    /// Coder; default false.
    pub no_startup_log: bool,
}

/// A setting that could not be accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[allow(missing_docs)] // each variant's #[error] message documents it
pub enum ConfigError {
    #[error("{name} is required: {hint}")]
    Missing { name: Name, hint: &'static str },
    #[error("invalid {name} {value:?}: {problem}")]
    Invalid {
        name: Name,
        /// The value as given, or `<redacted>` for secrets.
        value: String,
        problem: String,
    },
    #[error("{} is true but {} is not set: GPU passthrough needs the host's /usr/lib mounted in this container and its path in {}", names::ADD_GPU, names::USR_LIB_DIR, names::USR_LIB_DIR.env)]
    GpuWithoutUsrLibDir,
    #[error("invalid {}: not a JSON document (line {line}, column {column}); expected a docker config.json such as {{\"auths\":{{\"registry.example.com\":{{\"auth\":\"...\"}}}}}}", names::IMAGE_SECRET)]
    PullSecretNotJson { line: usize, column: usize },
}

/// Reads one optional value: empty counts as unset.
fn given(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|v| !v.is_empty())
}

/// A secret, empty counting as unset.
fn given_secret(value: &Option<Secret>) -> Option<Secret> {
    value.clone().filter(|s| !s.expose().is_empty())
}

/// Parses one optional value with `parse`, naming the setting on error.
fn parse_opt<T>(
    name: Name,
    value: &Option<String>,
    parse: impl FnOnce(&str) -> Result<T, Problem>,
) -> Result<Option<T>, ConfigError> {
    given(value)
        .map(|text| {
            parse(text).map_err(|problem| ConfigError::Invalid {
                name,
                value: text.to_owned(),
                problem: problem.0,
            })
        })
        .transpose()
}

fn parse_bool_setting(name: Name, value: &Option<String>) -> Result<bool, ConfigError> {
    Ok(parse_opt(name, value, value::parse_bool)?.unwrap_or(false))
}

fn parse_path(name: Name, value: &Option<String>) -> Result<Option<PathBuf>, ConfigError> {
    parse_opt(name, value, value::absolute_clean)
}

fn parse_runtime(text: &str) -> Result<Runtime, Problem> {
    match text {
        "sysbox-runc" => Ok(Runtime::SysboxRunc),
        "runc" => Ok(Runtime::Runc),
        _ => Err(Problem("expected sysbox-runc or runc".into())),
    }
}

fn required(name: Name, value: &Option<String>, hint: &'static str) -> Result<String, ConfigError> {
    given(value)
        .map(str::to_owned)
        .ok_or(ConfigError::Missing { name, hint })
}

impl Settings {
    /// Validates raw settings. `outer_subsystem` is the outer `CODER_AGENT_SUBSYSTEM`.
    pub fn from_raw(
        raw: &RawSettings,
        outer_subsystem: Option<&str>,
        purpose: Purpose,
    ) -> Result<Settings, ConfigError> {
        let image = match purpose {
            Purpose::Docker => Some(required(
                names::IMAGE,
                &raw.image,
                "the workspace image, e.g. ubuntu:24.04 or registry.example.com/team/dev@sha256:...",
            )?),
            Purpose::Spec | Purpose::Pull => given(&raw.image).map(str::to_owned),
        };
        if let Some(image) = &image {
            if image.contains(char::is_whitespace) {
                return Err(ConfigError::Invalid {
                    name: names::IMAGE,
                    value: image.clone(),
                    problem: "an image reference has no whitespace".into(),
                });
            }
        }
        let username = match purpose {
            Purpose::Pull => given(&raw.username).unwrap_or_default().to_owned(),
            Purpose::Docker | Purpose::Spec => required(
                names::USERNAME,
                &raw.username,
                "the image's user that owns the workspace, e.g. coder",
            )?,
        };
        let image_pull_secret = given_secret(&raw.image_secret);
        if let Some(secret) = &image_pull_secret {
            check_pull_secret(secret)?;
        }
        let agent_url = parse_opt(names::AGENT_URL, &raw.agent_url, |url| {
            if url.starts_with("http://") || url.starts_with("https://") {
                Ok(url.trim_end_matches('/').to_owned())
            } else {
                Err(Problem("expected an http:// or https:// URL".into()))
            }
        })?;
        let add_gpu = parse_bool_setting(names::ADD_GPU, &raw.add_gpu)?;
        let usr_lib_dir = parse_path(names::USR_LIB_DIR, &raw.usr_lib_dir)?;
        if add_gpu && usr_lib_dir.is_none() {
            return Err(ConfigError::GpuWithoutUsrLibDir);
        }
        Ok(Settings {
            image,
            username,
            agent_token: given_secret(&raw.agent_token),
            agent_url,
            inner_envs: parse_opt(names::INNER_ENVS, &raw.envs, value::parse_env_patterns)?
                .unwrap_or_default(),
            hostname: parse_opt(names::HOSTNAME, &raw.hostname, value::parse_hostname)?
                .unwrap_or_else(|| defaults::HOSTNAME.to_owned()),
            work_dir: parse_path(names::WORK_DIR, &raw.work_dir)?,
            image_pull_secret,
            docker_config: parse_path(names::DOCKER_CONFIG, &raw.docker_config)?,
            extra_certs_path: parse_path(names::EXTRA_CERTS_PATH, &raw.extra_certs_path)?,
            bridge: parse_opt(names::BRIDGE_CIDR, &raw.bridge_cidr, value::parse_cidr)?
                .map_or_else(|| value::parse_cidr(defaults::BRIDGE_CIDR), Ok)
                .map_err(|p| ConfigError::Invalid {
                    name: names::BRIDGE_CIDR,
                    value: defaults::BRIDGE_CIDR.into(),
                    problem: p.0,
                })?,
            bootstrap_script: given(&raw.bootstrap_script).map(str::to_owned),
            mounts: parse_opt(names::MOUNTS, &raw.mounts, value::parse_mounts)?.unwrap_or_default(),
            add_tun: parse_bool_setting(names::ADD_TUN, &raw.add_tun)?,
            add_fuse: parse_bool_setting(names::ADD_FUSE, &raw.add_fuse)?,
            add_gpu,
            usr_lib_dir,
            inner_usr_lib_dir: parse_path(names::INNER_USR_LIB_DIR, &raw.inner_usr_lib_dir)?,
            cpus_milli: parse_opt(names::CPUS, &raw.cpus, value::parse_cpus)?.flatten(),
            memory_bytes: parse_opt(names::MEMORY, &raw.memory, value::parse_memory)?.flatten(),
            disable_idmapped_mount: parse_bool_setting(
                names::DISABLE_IDMAPPED_MOUNT,
                &raw.disable_idmapped_mount,
            )?,
            agent_subsystem: value::agent_subsystem(outer_subsystem),
            ethlink: given(&raw.ethlink).unwrap_or(defaults::ETHLINK).to_owned(),
            runtime: parse_opt(names::RUNTIME, &raw.runtime, parse_runtime)?
                .unwrap_or(Runtime::SysboxRunc),
            state_dir: parse_path(names::STATE_DIR, &raw.state_dir)?
                .unwrap_or_else(|| defaults::STATE_DIR.into()),
            keep_images: parse_opt(names::KEEP_IMAGES, &raw.keep_images, value::parse_count)?
                .unwrap_or(defaults::KEEP_IMAGES),
            node_cache: parse_path(names::NODE_CACHE, &raw.node_cache)?,
            node_cache_ttl: parse_opt(
                names::NODE_CACHE_TTL,
                &raw.node_cache_ttl,
                value::parse_duration,
            )?
            .unwrap_or(defaults::NODE_CACHE_TTL),
            node_cache_size: parse_opt(
                names::NODE_CACHE_SIZE,
                &raw.node_cache_size,
                value::parse_size,
            )?
            .unwrap_or(defaults::NODE_CACHE_SIZE),
            run_dir: parse_path(names::RUN_DIR, &raw.run_dir)?
                .unwrap_or_else(|| defaults::RUN_DIR.into()),
            cni_path: parse_path(names::CNI_PATH, &raw.cni_path)?
                .unwrap_or_else(|| defaults::CNI_PATH.into()),
            insecure_registries: parse_opt(
                names::INSECURE_REGISTRIES,
                &raw.insecure_registries,
                value::parse_hosts,
            )?
            .unwrap_or_default(),
            stop_timeout: parse_opt(
                names::STOP_TIMEOUT,
                &raw.stop_timeout,
                value::parse_duration,
            )?
            .unwrap_or(defaults::STOP_TIMEOUT),
            debug: debug_requested(raw)?,
            no_startup_log: parse_bool_setting(names::NO_STARTUP_LOG, &raw.no_startup_log)?,
        })
    }
}

/// `CODER_DEBUG` (`--debug`) of `raw`: read before the settings (the log level is set first).
pub fn debug_requested(raw: &RawSettings) -> Result<bool, ConfigError> {
    parse_bool_setting(names::DEBUG, &raw.debug)
}

/// The pull secret must at least be a JSON object; its credentials are read by the registry
/// stage. The error carries only positions, never the text.
fn check_pull_secret(secret: &Secret) -> Result<(), ConfigError> {
    match serde_json::from_str::<serde_json::Value>(secret.expose()) {
        Ok(serde_json::Value::Object(_)) => Ok(()),
        Ok(_) => Err(ConfigError::PullSecretNotJson { line: 1, column: 1 }),
        Err(e) => Err(ConfigError::PullSecretNotJson {
            line: e.line(),
            column: e.column(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> RawSettings {
        RawSettings {
            image: Some("ubuntu".into()),
            username: Some("coder".into()),
            ..Default::default()
        }
    }

    fn settings(raw: &RawSettings) -> Result<Settings, ConfigError> {
        Settings::from_raw(raw, None, Purpose::Docker)
    }

    #[test]
    fn defaults_are_as_documented() {
        let s = settings(&raw()).unwrap();
        assert_eq!(s.hostname, "workspace-cvm");
        assert_eq!(s.bridge.to_string(), "172.19.0.0/30");
        assert_eq!(s.docker_config, None);
        assert_eq!(s.runtime, Runtime::SysboxRunc);
        assert_eq!(s.state_dir, PathBuf::from("/var/lib/coder/envbox"));
        assert_eq!(s.run_dir, PathBuf::from("/run/envbox"));
        assert_eq!(s.cni_path, PathBuf::from("/usr/lib/cni"));
        assert_eq!(s.agent_subsystem, "envbox");
        assert_eq!(s.ethlink, "eth0");
        assert!(!s.add_tun && !s.add_fuse && !s.add_gpu && !s.disable_idmapped_mount);
        assert!(!s.debug && !s.no_startup_log);
        assert_eq!((s.cpus_milli, s.memory_bytes), (None, None));
        assert_eq!(s.node_cache, None);
        assert_eq!(s.node_cache_ttl, std::time::Duration::from_secs(7 * 86_400));
        assert_eq!(s.node_cache_size, 50 << 30);
    }

    #[test]
    fn image_and_user_are_required_and_empty_counts_as_unset() {
        let mut r = raw();
        r.image = Some(String::new());
        let err = settings(&r).unwrap_err();
        assert!(
            err.to_string()
                .contains("CODER_INNER_IMAGE (--image) is required"),
            "{err}"
        );
        let mut r = raw();
        r.username = None;
        assert!(settings(&r)
            .unwrap_err()
            .to_string()
            .contains("CODER_INNER_USERNAME"));
        let mut r = raw();
        r.image = None;
        assert!(
            Settings::from_raw(&r, None, Purpose::Spec).is_ok(),
            "spec needs no image"
        );
    }

    #[test]
    fn errors_name_the_variable_and_the_expected_form() {
        type Edit = fn(&mut RawSettings);
        let cases: [(Edit, &str, &str); 11] = [
            (
                |r| r.add_tun = Some("yes".into()),
                "CODER_ADD_TUN",
                "expected a boolean",
            ),
            (
                |r| r.debug = Some("loud".into()),
                "CODER_DEBUG (--debug)",
                "expected a boolean",
            ),
            (
                |r| r.no_startup_log = Some("yes".into()),
                "invalid --no-startup-log \"yes\"",
                "expected a boolean",
            ),
            (|r| r.cpus = Some("lots".into()), "CODER_CPUS", "1500m"),
            (|r| r.memory = Some("4GB".into()), "CODER_MEMORY", "512Mi"),
            (
                |r| r.bridge_cidr = Some("172.19.0.1".into()),
                "CODER_DOCKER_BRIDGE_CIDR",
                "CIDR",
            ),
            (
                |r| r.mounts = Some("/a:/b:rx".into()),
                "CODER_MOUNTS",
                "unknown option",
            ),
            (
                |r| r.runtime = Some("crun".into()),
                "ENVBOX_RUNTIME",
                "sysbox-runc or runc",
            ),
            (
                |r| r.node_cache = Some("node-cache".into()),
                "ENVBOX_NODE_CACHE (--node-cache)",
                "absolute",
            ),
            (
                |r| r.node_cache_ttl = Some("1w".into()),
                "ENVBOX_NODE_CACHE_TTL",
                "7d",
            ),
            (
                |r| r.node_cache_size = Some("50GB".into()),
                "ENVBOX_NODE_CACHE_SIZE",
                "50Gi",
            ),
        ];
        for (mutate, variable, expected) in cases {
            let mut r = raw();
            mutate(&mut r);
            let err = settings(&r).unwrap_err().to_string();
            assert!(err.contains(variable) && err.contains(expected), "{err}");
        }
    }

    #[test]
    fn gpu_needs_usr_lib_dir() {
        let mut r = raw();
        r.add_gpu = Some("true".into());
        assert_eq!(settings(&r).unwrap_err(), ConfigError::GpuWithoutUsrLibDir);
        assert!(ConfigError::GpuWithoutUsrLibDir
            .to_string()
            .contains("CODER_USR_LIB_DIR"));
        r.usr_lib_dir = Some("/var/coder/usr/lib".into());
        assert!(settings(&r).unwrap().add_gpu);
    }

    #[test]
    fn secrets_never_render() {
        let mut r = raw();
        r.agent_token = Some(Secret::new("tok-very-secret"));
        r.image_secret = Some(Secret::new(
            r#"{"auths":{"r.example":{"auth":"cGFzc3dvcmQ="}}}"#,
        ));
        let raw_debug = format!("{r:?}");
        assert!(
            !raw_debug.contains("tok-very-secret") && !raw_debug.contains("cGFzc3dvcmQ="),
            "{raw_debug}"
        );
        let s = settings(&r).unwrap();
        let debug = format!("{s:?}");
        assert!(
            !debug.contains("tok-very-secret") && !debug.contains("cGFzc3dvcmQ="),
            "{debug}"
        );
        assert_eq!(s.agent_token.unwrap().expose(), "tok-very-secret");
    }

    #[test]
    fn a_pull_secret_that_is_not_json_is_refused_without_echoing_it() {
        let mut r = raw();
        r.image_secret = Some(Secret::new("password=hunter2"));
        let err = settings(&r).unwrap_err().to_string();
        assert!(
            err.contains("CODER_IMAGE_PULL_SECRET") && err.contains("not a JSON document"),
            "{err}"
        );
        assert!(!err.contains("hunter2"), "{err}");
        r.image_secret = Some(Secret::new(r#"["x"]"#));
        assert!(settings(&r).is_err());
    }

    #[test]
    fn relative_paths_are_refused() {
        let mut r = raw();
        r.usr_lib_dir = Some("usr/lib".into());
        let err = settings(&r).unwrap_err().to_string();
        assert!(
            err.contains("CODER_USR_LIB_DIR") && err.contains("not an absolute path"),
            "{err}"
        );
    }

    #[test]
    fn agent_url_must_be_http() {
        let mut r = raw();
        r.agent_url = Some("coder.example.com".into());
        assert!(settings(&r)
            .unwrap_err()
            .to_string()
            .contains("CODER_AGENT_URL"));
        r.agent_url = Some("https://coder.example.com/".into());
        assert_eq!(
            settings(&r).unwrap().agent_url.as_deref(),
            Some("https://coder.example.com")
        );
    }
}
