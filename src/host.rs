//! Facts about the outer container that the spec depends on, gathered in one place.
//!
//! Owns: the reads of the outer world (environment, `/proc/self/mountinfo`, `/etc/resolv.conf`,
//! the GPU inventory when GPUs are asked for) into [`HostFacts`], a plain struct the pure spec
//! generator takes. Tests build `HostFacts` by hand or from fixtures. It never changes anything.

use std::path::Path;

use crate::config::Settings;
use crate::gpu::{self, GpuInventory};
use crate::mountinfo::{MountInfoError, MountTable};

/// What the outer container looks like, as far as the spec is concerned. `Debug` shows the
/// environment's names only: values include the agent token and the pull secret.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct HostFacts {
    /// The outer environment (UTF-8 entries), in order.
    pub environ: Vec<(String, String)>,
    /// The outer mount table.
    pub mounts: MountTable,
    /// The outer `/etc/resolv.conf`, if readable.
    pub resolv_conf: Option<String>,
    /// `x86_64`, `aarch64`, ...
    pub arch: String,
    /// This process's hard `RLIMIT_NOFILE`: inside its user namespace the container can lower
    /// limits but never raise them above what the outer container has.
    pub nofile_hard: u64,
    /// The workspace's `oom_score_adj` ([`crate::oom::workspace`]).
    pub oom_score_adj: i32,
    /// Present when GPUs are asked for.
    pub gpu: Option<GpuInventory>,
}

impl std::fmt::Debug for HostFacts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.environ.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("HostFacts")
            .field("environ (names)", &names)
            .field("mounts", &self.mounts)
            .field("resolv_conf", &self.resolv_conf)
            .field("arch", &self.arch)
            .field("nofile_hard", &self.nofile_hard)
            .field("oom_score_adj", &self.oom_score_adj)
            .field("gpu", &self.gpu)
            .finish()
    }
}

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("reading the mount table: {0}")]
    Mounts(#[from] MountInfoError),
    #[error("looking for GPUs: {0}")]
    Gpu(#[from] gpu::GpuError),
}

/// The current process environment, UTF-8 entries only.
pub fn environ() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

/// Used when the limit cannot be read (it always can on Linux).
pub const FALLBACK_NOFILE: u64 = 1024;

/// The hard open-files limit of this process.
pub fn nofile_hard() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(_, hard)| hard)
        .unwrap_or(FALLBACK_NOFILE)
}

/// Reads the facts the settings need.
pub fn gather(settings: &Settings) -> Result<HostFacts, HostError> {
    let environ = environ();
    let gpu = match (&settings.add_gpu, &settings.usr_lib_dir) {
        (true, Some(usr_lib_dir)) => Some(gpu::scan(Path::new("/dev"), usr_lib_dir, &environ)?),
        _ => None,
    };
    Ok(HostFacts {
        mounts: MountTable::read_self()?,
        resolv_conf: std::fs::read_to_string("/etc/resolv.conf").ok(),
        arch: std::env::consts::ARCH.to_owned(),
        nofile_hard: nofile_hard(),
        oom_score_adj: crate::oom::workspace(),
        environ,
        gpu,
    })
}
