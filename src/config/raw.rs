//! The settings exactly as the command line and environment gave them: strings, unvalidated.
//!
//! Owns: the flag/variable surface of every command, with the environment fallbacks `--help`
//! shows, defined once here in groups by what reads them ([`ImageSettings`],
//! [`WorkspaceSettings`], [`StateSettings`], [`KeepSettings`], [`EntrypointSettings`]). Each command flattens the
//! groups it reads (`envbox docker` all of them), so its `--help` lists only those, a flag of
//! another group is an unexpected argument there, and the variables of the other groups are not
//! read at all (pods set every `CODER_*` variable for every command). The groups are gathered into
//! one flat [`RawSettings`]. Secret values are [`Secret`]s from the start, so not even this raw
//! form can be rendered with them. A flag wins over its variable; an empty value counts as unset.
//! It never interprets a value: [`crate::config::Settings::from_raw`] does.

use clap::Args;

use super::{names, Secret};

fn secret(text: &str) -> Result<Secret, std::convert::Infallible> {
    Ok(Secret::new(text))
}

/// A group of settings a command flattens into its arguments.
pub(crate) trait SettingsGroup {
    /// Copies the group's settings into `raw`.
    fn fill(&self, raw: &mut RawSettings);
}

impl RawSettings {
    /// The settings of `groups`; those of the other groups are unset.
    pub(crate) fn of(groups: &[&dyn SettingsGroup]) -> RawSettings {
        let mut raw = RawSettings::default();
        for group in groups {
            group.fill(&mut raw);
        }
        raw
    }
}

/// Defines each group as a clap [`Args`] struct (its fields' docs and attributes are the flags),
/// and [`RawSettings`] with every field of every group, flat.
macro_rules! settings_groups {
    ($(
        $(#[$group_meta:meta])*
        pub(crate) struct $group:ident {
            $(
                $(#[$field_meta:meta])*
                pub $field:ident: $ty:ty,
            )*
        }
    )*) => {
        $(
            $(#[$group_meta])*
            #[derive(Debug, Clone, Default, Args)]
            pub struct $group {
                $(
                    $(#[$field_meta])*
                    pub $field: $ty,
                )*
            }

            impl SettingsGroup for $group {
                fn fill(&self, raw: &mut RawSettings) {
                    $(raw.$field = self.$field.clone();)*
                }
            }
        )*

        /// Every setting of `envbox docker`, as text: the fields of all the groups (documented
        /// there).
        #[derive(Debug, Clone, Default)]
        pub struct RawSettings {
            $($(
                #[doc = concat!("`", stringify!($field), "`, as given (see its group's field).")]
                pub $field: $ty,
            )*)*
        }
    };
}

settings_groups! {
    /// The image and how to fetch it: what every command that fills the cache reads.
    pub(crate) struct ImageSettings {
        /// Image of the workspace, e.g. `ubuntu` (= docker.io/library/ubuntu:latest), tags and
        /// `@sha256:` digests allowed; or a local image: oci:DIR[:NAME], oci-archive:FILE[:NAME],
        /// docker-archive:FILE[:NAME].
        #[arg(long = names::IMAGE.flag, env = names::IMAGE.env, value_name = "REF")]
        pub image: Option<String>,

        /// A docker config.json document with registry credentials. Never logged.
        #[arg(long = names::IMAGE_SECRET.flag, env = names::IMAGE_SECRET.env, hide_env_values = true, value_name = "JSON", value_parser = secret)]
        pub image_secret: Option<Secret>,

        /// Docker config file read for credentials [default: /root/.docker/config.json].
        #[arg(long = names::DOCKER_CONFIG.flag, env = names::DOCKER_CONFIG.env, value_name = "FILE")]
        pub docker_config: Option<String>,

        /// PEM CA file, or a directory of them, trusted for the registry and Coder.
        #[arg(long = names::EXTRA_CERTS_PATH.flag, env = names::EXTRA_CERTS_PATH.env, value_name = "PATH")]
        pub extra_certs_path: Option<String>,

        /// Comma list of registries (`host[:port]`) reached over plain HTTP instead of HTTPS.
        #[arg(long = names::INSECURE_REGISTRIES.flag, env = names::INSECURE_REGISTRIES.env, value_name = "HOSTS")]
        pub insecure_registries: Option<String>,
    }

    /// What the runtime spec is made of: what `envbox spec` and `envbox prepare --output` read.
    pub(crate) struct WorkspaceSettings {
        /// User of the image (looked up in its /etc/passwd) who owns the home mount, ~/.coder and
        /// runs the bootstrap script.
        #[arg(long = names::USERNAME.flag, env = names::USERNAME.env, value_name = "USER")]
        pub username: Option<String>,

        /// Coder agent token, passed in as CODER_AGENT_TOKEN. Never logged.
        #[arg(long = names::AGENT_TOKEN.flag, env = names::AGENT_TOKEN.env, hide_env_values = true, value_name = "TOKEN", value_parser = secret)]
        pub agent_token: Option<Secret>,

        /// Comma list of outer variable names to pass in; `PREFIX_*` matches a prefix.
        #[arg(long = names::INNER_ENVS.flag, env = names::INNER_ENVS.env, value_name = "NAMES")]
        pub envs: Option<String>,

        /// Hostname of the workspace [default: workspace-cvm].
        #[arg(long = names::HOSTNAME.flag, env = names::HOSTNAME.env, value_name = "NAME")]
        pub hostname: Option<String>,

        /// Working directory of the workspace [default: the image's, else /].
        #[arg(long = names::WORK_DIR.flag, env = names::WORK_DIR.env, value_name = "DIR")]
        pub work_dir: Option<String>,

        /// Network of the workspace; the gateway is its first address [default: 172.19.0.1/30].
        #[arg(long = names::BRIDGE_CIDR.flag, env = names::BRIDGE_CIDR.env, value_name = "CIDR")]
        pub bridge_cidr: Option<String>,

        /// Bind mounts `src:dst[:ro],...`, read-write unless `ro`.
        #[arg(long = names::MOUNTS.flag, env = names::MOUNTS.env, value_name = "LIST")]
        pub mounts: Option<String>,

        /// Give the workspace /dev/net/tun.
        #[arg(long = names::ADD_TUN.flag, env = names::ADD_TUN.env, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
        pub add_tun: Option<String>,

        /// Give the workspace /dev/fuse.
        #[arg(long = names::ADD_FUSE.flag, env = names::ADD_FUSE.env, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
        pub add_fuse: Option<String>,

        /// Pass the outer container's NVIDIA GPUs through (needs --usr-lib-dir).
        #[arg(long = names::ADD_GPU.flag, env = names::ADD_GPU.env, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
        pub add_gpu: Option<String>,

        /// Where the host's /usr/lib is mounted in this container (for GPU libraries).
        #[arg(long = names::USR_LIB_DIR.flag, env = names::USR_LIB_DIR.env, value_name = "DIR")]
        pub usr_lib_dir: Option<String>,

        /// Where GPU libraries go inside [default: from the image's os-release].
        #[arg(long = names::INNER_USR_LIB_DIR.flag, env = names::INNER_USR_LIB_DIR.env, value_name = "DIR")]
        pub inner_usr_lib_dir: Option<String>,

        /// CPU limit: 2, 1.5, 1500m; 0 = none.
        #[arg(long = names::CPUS.flag, env = names::CPUS.env, value_name = "CPUS")]
        pub cpus: Option<String>,

        /// Memory limit: bytes, 512Mi, 4Gi, 4G; 0 = none.
        #[arg(long = names::MEMORY.flag, env = names::MEMORY.env, value_name = "BYTES")]
        pub memory: Option<String>,

        /// Per-start files (generated /etc files, device nodes, sockets) [default: /run/envbox].
        #[arg(long = names::RUN_DIR.flag, env = names::RUN_DIR.env, value_name = "DIR")]
        pub run_dir: Option<String>,
    }

    /// Where the image cache is: what every command that uses the cache reads.
    pub(crate) struct StateSettings {
        /// Image cache and state, on the persistent volume [default: /var/lib/coder/envbox].
        #[arg(long = names::STATE_DIR.flag, env = names::STATE_DIR.env, value_name = "DIR")]
        pub state_dir: Option<String>,

        /// A directory shared by the pods of a node (a hostPath): blobs and unpacked layers
        /// are looked up and kept there instead of on the volume, so a new workspace of an
        /// image another one on the node uses starts without pulling [default: none, off].
        #[arg(long = names::NODE_CACHE.flag, env = names::NODE_CACHE.env, value_name = "DIR")]
        pub node_cache: Option<String>,
    }

    /// What stays in the image cache: what every command that may clean it up reads.
    pub(crate) struct KeepSettings {
        /// Images kept in the cache besides the current one, the most recently used first;
        /// the blobs and unpacked layers of the others are removed once the workspace is up,
        /// by `envbox cache prune`, and when the volume is full [default: 1].
        #[arg(long = names::KEEP_IMAGES.flag, env = names::KEEP_IMAGES.env, value_name = "COUNT")]
        pub keep_images: Option<String>,

        /// Node cache: how long a layer or blob no running workspace uses is kept after its
        /// last use: seconds, or 12h, 7d [default: 7d].
        #[arg(long = names::NODE_CACHE_TTL.flag, env = names::NODE_CACHE_TTL.env, value_name = "DURATION")]
        pub node_cache_ttl: Option<String>,

        /// Node cache: the most it holds of what no running workspace uses, least recently
        /// used removed first: bytes, or 50Gi, 20G [default: 50Gi].
        #[arg(long = names::NODE_CACHE_SIZE.flag, env = names::NODE_CACHE_SIZE.env, value_name = "BYTES")]
        pub node_cache_size: Option<String>,
    }

    /// How the workspace is started, run and stopped: what only `envbox docker` reads.
    pub(crate) struct EntrypointSettings {
        /// Coder deployment URL, for the workspace's startup logs.
        #[arg(long = names::AGENT_URL.flag, env = names::AGENT_URL.env, value_name = "URL")]
        pub agent_url: Option<String>,

        /// Script run as the user once the workspace is up (fed to /bin/sh -s).
        #[arg(long = names::BOOTSTRAP_SCRIPT.flag, alias = "boostrap-script", env = names::BOOTSTRAP_SCRIPT.env, hide_env_values = true, value_name = "SCRIPT")]
        pub bootstrap_script: Option<String>,

        /// Pass --disable-idmapped-mount to sysbox-mgr.
        #[arg(long = names::DISABLE_IDMAPPED_MOUNT.flag, env = names::DISABLE_IDMAPPED_MOUNT.env, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
        pub disable_idmapped_mount: Option<String>,

        /// Link whose MTU the workspace network copies [default: eth0].
        #[arg(long = names::ETHLINK.flag, env = names::ETHLINK.env, value_name = "LINK")]
        pub ethlink: Option<String>,

        /// OCI runtime: sysbox-runc, or runc where sysbox is absent [default: sysbox-runc].
        #[arg(long = names::RUNTIME.flag, env = names::RUNTIME.env, value_name = "RUNTIME")]
        pub runtime: Option<String>,

        /// On SIGTERM, how long the agent and the inner init get before everything in the
        /// workspace is killed: seconds, or 30s, 2m [default: 90s].
        #[arg(long = names::STOP_TIMEOUT.flag, env = names::STOP_TIMEOUT.env, value_name = "DURATION")]
        pub stop_timeout: Option<String>,

        /// Directory of the CNI plugins (bridge, host-local, portmap) [default: /usr/lib/cni].
        #[arg(long = names::CNI_PATH.flag, env = names::CNI_PATH.env, value_name = "DIR")]
        pub cni_path: Option<String>,

        /// Log additional output: the diagnostics of ENVBOX_LOG=debug (stage timings, what was
        /// skipped), or more if ENVBOX_LOG asks for more.
        #[arg(long = names::DEBUG.flag, env = names::DEBUG.env, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
        pub debug: Option<String>,

        /// Do not send the startup logs to Coder (the progress log still goes to stderr).
        #[arg(long = names::NO_STARTUP_LOG.flag, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
        pub no_startup_log: Option<String>,
    }
}
