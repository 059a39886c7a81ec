//! envbox: runs one unprivileged system container as the entrypoint of a privileged pod.
//!
//! The crate is organised by pipeline stage; data flows one way through plain structs:
//!
//! ```text
//! cli ─► config::Settings ─┐
//! rootfs::RootfsFacts ─────┼─► spec::build ─► spec::ContainerPlan { spec, setup actions }
//! host::HostFacts ─────────┘        (pure)        │                 │
//!   (mountinfo, gpu inventory, resolv.conf)       ▼                 ▼
//!                                        OCI runtime (runc /   setup::apply
//!                                        sysbox-runc)          (the only side effects)
//! ```
//!
//! Everything left of `spec::build` only reads; `spec::build` is pure; `setup::apply` is the one
//! place that changes the host (mknod, chown, write files, unmount).

#![warn(missing_docs)]

pub mod agentlog;
pub(crate) mod bootstrap;
pub(crate) mod bundle;
pub mod cache;
pub mod cli;
pub mod cmd;
pub mod config;
pub mod digest;
/// Entry points of the fuzz targets (`fuzz/`); only in `cargo fuzz` builds.
#[cfg(fuzzing)]
pub mod fuzzing;
pub(crate) mod gpu;
pub(crate) mod host;
pub mod image;
pub mod launch;
pub(crate) mod lock;
pub mod logging;
pub mod memory;
pub(crate) mod mountinfo;
pub mod network;
pub mod nodecache;
pub(crate) mod oom;
pub mod overlay;
pub mod plan;
pub mod prepare;
pub mod progress;
pub(crate) mod prune;
pub mod registry;
pub mod room;
pub(crate) mod rootfs;
pub(crate) mod run_dir;
pub mod runtime;
pub mod setup;
pub mod source;
pub mod spec;
pub mod supervise;
pub(crate) mod tls;
pub mod unpack;
pub(crate) mod volume;

#[cfg(test)]
mod testing;
