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

pub mod agentlog;
pub mod bootstrap;
pub mod bundle;
pub mod cache;
pub mod cli;
pub mod cmd;
pub mod config;
pub mod digest;
/// Entry points of the fuzz targets (`fuzz/`); only in `cargo fuzz` builds.
#[cfg(fuzzing)]
pub mod fuzzing;
pub mod gpu;
pub mod host;
pub mod image;
pub mod launch;
pub mod lock;
pub mod logging;
pub mod memory;
pub mod mountinfo;
pub mod network;
pub mod oom;
pub mod overlay;
pub mod plan;
pub mod prepare;
pub mod progress;
pub mod prune;
pub mod registry;
pub mod room;
pub mod rootfs;
pub mod run_dir;
pub mod runtime;
pub mod setup;
pub mod source;
pub mod spec;
pub mod supervise;
pub mod tls;
pub mod unpack;
pub mod volume;

#[cfg(test)]
mod testing;
